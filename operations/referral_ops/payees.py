"""Support sets who receives a referrer's cash (`payee`), per referral or by default."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
import asyncpg.pool

from referral_ops.support import (
    InvalidInput,
    PayoutAlreadyDecided,
    UnknownReferral,
    WrongAccount,
    audit,
    checked_account,
    checked_actor,
    lock_account,
)
from referral_program.payouts import can_reissue

_MAX_PAYEE_LENGTH = 200


@dataclass(frozen=True)
class PayeeSet:
    referrer_account_id: str
    payee: str
    referee_account_id: str | None  # None: the referrer's default payee
    previous: str | None
    #: For the default payee: undecided referrals that follow it, those with their own payee,
    #: and decided ones (which keep the payee they were decided with).
    following: int = 0
    own_payee: int = 0
    decided: int = 0
    #: Failed payouts a re-issue will pay to this payee (``referrals payout reissue``).
    failed_following: int = 0
    #: For one referral: its payout failed, and its re-issue goes to this payee.
    failed_payout: bool = False


def checked_payee(payee: str) -> str:
    """A payee as typed: trimmed, not empty, printable, at most 200 characters."""
    value = payee.strip()
    if not value:
        raise InvalidInput("the payee is empty; give who receives the cash")
    if len(value) > _MAX_PAYEE_LENGTH:
        raise InvalidInput(f"the payee is {len(value)} characters; at most {_MAX_PAYEE_LENGTH}")
    if not value.isprintable():
        raise InvalidInput("the payee contains control characters (tabs, newlines, ...)")
    return value


async def set_payee(
    conn: asyncpg.Connection,
    referrer_account_id: str,
    payee: str,
    *,
    referee_account_id: str | None = None,
    actor: str,
) -> PayeeSet:
    """Set who receives the cash: for one referral (``referee_account_id``) or by default for
    all of the referrer's referrals. A referral whose payout was decided can't change, unless
    that payout failed: its re-issue goes to the payee as it is then."""
    referrer = checked_account(referrer_account_id, "referrer account")
    referee = checked_account(referee_account_id, "referee account") if referee_account_id else None
    payee = checked_payee(payee)
    actor = checked_actor(actor)
    async with conn.transaction():
        # Row locks keep this and a payout decision apart: the scheduler locks the referral
        # row it decides (FOR UPDATE), and this locks the referrer's account row.
        account = await lock_account(conn, referrer)
        if referee is None:
            counts = await conn.fetchrow(
                """select count(*) filter (where p.referral_id is null and r.payee is null)
                              as following,
                          count(*) filter (where p.referral_id is null and r.payee is not null)
                              as own_payee,
                          count(p.referral_id) as decided,
                          count(*) filter (where p.status = 'failed' and r.payee is null)
                              as failed_following
                   from referrals r left join payouts p using (referral_id)
                   where r.referrer_account_id = $1""",
                referrer,
            )
            assert counts is not None
            await conn.execute(
                "update accounts set payee = $2 where account_id = $1", referrer, payee
            )
            result = PayeeSet(
                referrer,
                payee,
                None,
                account["payee"],
                following=counts["following"],
                own_payee=counts["own_payee"],
                decided=counts["decided"],
                failed_following=counts["failed_following"],
            )
            subject = referrer
        else:
            row = await conn.fetchrow(
                """select referral_id, referrer_account_id, payee from referrals
                   where referee_account_id = $1 for update""",
                referee,
            )
            if row is None:
                raise UnknownReferral(
                    f"account {referee} was not referred by anyone "
                    "(no subscription of it carried a known code)"
                )
            if row["referrer_account_id"] != referrer:
                raise WrongAccount(
                    f"account {referee} was referred by {row['referrer_account_id']}, "
                    f"not by {referrer}"
                )
            # A separate statement: after waiting for a deciding scheduler's lock, it sees
            # the payout that transaction committed.
            decided = await conn.fetchrow(
                "select as_of, outcome, status from payouts where referral_id = $1",
                row["referral_id"],
            )
            # A failed payout is the exception: its re-issue goes to the payee set now.
            if decided is not None and not can_reissue(decided["status"]):
                raise PayoutAlreadyDecided(
                    f"payout already decided on {decided['as_of']:%Y-%m-%d} "
                    f"({decided['outcome']}); payee can't change"
                )
            await conn.execute(
                "update referrals set payee = $2, updated_at = now() where referral_id = $1",
                row["referral_id"],
                payee,
            )
            result = PayeeSet(
                referrer, payee, referee, row["payee"], failed_payout=decided is not None
            )
            subject = referrer
        await audit(
            conn,
            actor,
            "payee.set",
            subject,
            {"referee": referee, "payee": payee, "previous": result.previous},
        )
    return result

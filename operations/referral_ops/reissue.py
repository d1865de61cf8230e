"""Support re-issues a failed payout: the same ``payout_id``, the next ``attempt``.

Finance could not pay (``payout.failed``: missing payee details, a bank's
refusal); support fixes the cause (``referrals payee set`` if the payee was
wrong) and re-issues. The new ``payout.due`` carries the next attempt, the
payee as it stands now and the same amount, and goes out through the outbox.
A payout that is still due (finance has not answered) or that was paid is
never re-issued: the refusal says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

from referral_events import payout_due_json
from referral_ops.support import InvalidInput, SupportError, audit, checked_actor
from referral_program import codes
from referral_program.payouts import MONEY_OUT, attempt_event_id, can_reissue
from referral_program.table import Outcome, PayoutStatus, format_money
from referral_runtime.db import Conn
from referral_runtime.outbox import OutboxMessage, enqueue


class UnknownPayout(SupportError):
    """No payout has this id."""


class PayoutNotReissuable(SupportError):
    """The payout is not failed: still with finance, paid, or never due."""


@dataclass(frozen=True)
class PayoutReissued:
    payout_id: UUID
    attempt: int
    payee: str
    previous_payee: str
    amount_cents: int
    currency: str
    failure_reason: str | None


# The payout row is locked against a status batch of the scheduler and another re-issue.
# The payee is the one the scheduler would choose now: the referral's own, else the
# referrer's default, else the referrer.
_PAYOUT = """
select p.*, r.referral_code,
       coalesce(r.payee, a.payee, p.referrer_account_id) as current_payee
from payouts p
join referrals r using (referral_id)
left join accounts a on a.account_id = p.referrer_account_id
where p.payout_id = $1
for update of p
"""

_NEXT_ATTEMPT = """
update payouts
set attempt = $2, payee = $3, status = 'due', failed_at = null, failure_reason = null,
    status_changed_at = now()
where payout_id = $1
"""

_RECORD = """
insert into payout_reissues (payout_id, attempt, payee, previous_payee, failure_reason, actor)
values ($1, $2, $3, $4, $5, $6)
"""


def parse_payout_id(text: str) -> UUID:
    """A payout id as typed (a UUID, as ``payout.due`` and ``referrals payouts`` show it)."""
    try:
        return UUID(text.strip())
    except ValueError:
        raise InvalidInput(
            f"{text!r} is not a payout id (a UUID like 0e6f1c2d-3b4a-5968-8776-a5b4c3d2e1f0; "
            "`referrals payouts --status failed` lists the failed ones)"
        ) from None


def refusal(row: asyncpg.Record) -> str | None:
    """Why this payout can't be re-issued, in words support can act on; None if it can."""
    payout = f"payout {row['payout_id']}"
    if row["outcome"] != Outcome.DUE:
        return f"{payout} was decided {row['outcome']} ({row['reason']}): nothing is owed"
    status = row["status"]
    if can_reissue(status):
        return None
    if status in MONEY_OUT:
        paid = row["paid_at"].date().isoformat()
        extra = {
            PayoutStatus.MISMATCHED: " with another amount or currency",
            PayoutStatus.PAID_TWICE: " more than once",
        }.get(status, "")
        return (
            f"{payout} was paid{extra} on {paid} (attempt {row['paid_attempt']}, reference "
            f"{row['paid_reference']}): a paid payout is never re-issued"
        )
    return (
        f"{payout} is due (attempt {row['attempt']}, pay by {row['pay_by']:%Y-%m-%d}): finance "
        "has not reported it failed, so it is still theirs to pay; only a failed payout is "
        "re-issued"
    )


async def reissue_payout(
    conn: Conn,
    payout_id: UUID,
    *,
    actor: str,
    topic: str,
    now: datetime,
) -> PayoutReissued:
    """Re-announce a failed payout on ``topic`` with the next attempt; audited as ``actor``.

    ``now`` is the re-issue's business time (the new ``payout.due``'s ``occurred_at``).
    """
    actor = checked_actor(actor)
    async with conn.transaction():
        row = await conn.fetchrow(_PAYOUT, payout_id)
        if row is None:
            raise UnknownPayout(f"no payout has the id {payout_id}")
        why_not = refusal(row)
        if why_not is not None:
            raise PayoutNotReissuable(why_not)
        attempt = row["attempt"] + 1
        payee = row["current_payee"]
        payload = payout_due_json(
            payout_id=payout_id,
            referral_id=row["referral_id"],
            occurred_at=now,
            referrer_account_id=row["referrer_account_id"],
            payee=payee,
            referee_account_id=row["referee_account_id"],
            referral_code=codes.display(row["referral_code"]),
            plan_family=row["plan_family"],
            amount_cents=row["amount_cents"],
            currency=row["currency"],
            first_payment_at=row["first_payment_at"],
            eligible_on=row["eligible_on"],
            pay_by=row["pay_by"],
            attempt=attempt,
            event_id=attempt_event_id(payout_id, attempt),
        )
        await conn.execute(_NEXT_ATTEMPT, payout_id, attempt, payee)
        await conn.execute(
            _RECORD, payout_id, attempt, payee, row["payee"], row["failure_reason"], actor
        )
        await enqueue(conn, [OutboxMessage(topic, row["referrer_account_id"].encode(), payload)])
        await audit(
            conn,
            actor,
            "payout.reissue",
            row["referrer_account_id"],
            {
                "payout_id": str(payout_id),
                "attempt": attempt,
                "payee": payee,
                "previous_payee": row["payee"],
                "failure_reason": row["failure_reason"],
                "amount": format_money(row["amount_cents"], row["currency"]),
            },
        )
    return PayoutReissued(
        payout_id,
        attempt,
        payee,
        row["payee"],
        row["amount_cents"],
        row["currency"],
        row["failure_reason"],
    )

"""Support marks partner accounts, which earn no cash (`partner_ineligible`)."""

from __future__ import annotations

from dataclasses import dataclass
from zoneinfo import ZoneInfo

import asyncpg
import asyncpg.pool

from referral_ops.support import (
    audit,
    checked_account,
    checked_actor,
    lock_account,
)
from referral_runtime.referral_state import (
    recompute_referrals,
)


@dataclass(frozen=True)
class PartnerSet:
    account_id: str
    is_partner: bool
    changed: bool  # False: it already was so; nothing was written
    referrals_changed: int = 0  # undecided referrals whose state the flip changed
    decided: int = 0  # decided referrals, which the flip does not touch


async def set_partner(
    conn: asyncpg.Connection, account_id: str, is_partner: bool, *, actor: str, tz: ZoneInfo
) -> PartnerSet:
    """Make an account a partner (its undecided referrals become ``partner_ineligible``) or
    not (they are recomputed back). Decided referrals are history and stay as they are."""
    account_id = checked_account(account_id)
    actor = checked_actor(actor)
    async with conn.transaction():
        # FOR UPDATE: every batch that recomputes a referee of this account holds it
        # FOR KEY SHARE, so they wait for this change and it for them (referral_state).
        account = await lock_account(conn, account_id)
        if account["is_partner"] == is_partner:
            return PartnerSet(account_id, is_partner, changed=False)
        await conn.execute(
            "update accounts set is_partner = $2 where account_id = $1", account_id, is_partner
        )
        changed = (await recompute_referrals(conn, [], [account_id], tz=tz)).total()
        # Through the referrals' referrer index: payouts has none on the referrer (an index
        # there would cost every decision of a pass a write, for this rare count).
        decided = await conn.fetchval(
            "select count(*) from referrals r join payouts p using (referral_id)"
            " where r.referrer_account_id = $1",
            account_id,
        )
        await audit(
            conn,
            actor,
            "partner.set" if is_partner else "partner.unset",
            account_id,
            {"referrals_changed": changed, "decided_unchanged": decided},
        )
    return PartnerSet(account_id, is_partner, True, changed, decided)

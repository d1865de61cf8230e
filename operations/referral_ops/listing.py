"""The read model of a referrer's referrals, for `referrals list` and the HTTP read API."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import asyncpg.pool

from referral_ops.support import (
    UnknownAccount,
    checked_account,
)
from referral_program import calendar, codes
from referral_program.table import REWARD_CENTS, Outcome, Status, best_family
from referral_runtime.settings import DatabaseSettings


@dataclass(frozen=True)
class ReferralLine:
    """One referral as support and the referrer see it; money in integer cents."""

    referee_account_id: str
    plan_family: str | None  # the family the reward is (or would be) based on
    plans: tuple[str, ...]  # every plan family the referee has subscribed to
    status: str  # due/forfeited/ineligible when decided, else pending/qualified/ineligible
    reason: str | None
    amount_cents: int  # decided: the payout; undecided: what it earns if it stays so
    currency: str
    referral_code: str  # display form
    referred_on: date
    first_payment_on: date | None
    eligible_on: date | None
    pay_by: date | None
    decided: bool
    #: Where a due payout stands with finance (due, paid, failed, mismatched, paid_twice);
    #: None for a referral that is not a due payout.
    payout_status: str | None = None
    paid_on: date | None = None  # the day finance paid it (program time zone)
    failure_reason: str | None = None  # finance's reason, while the payout is failed

    def to_json(self) -> dict[str, Any]:
        return {
            "referee_account_id": self.referee_account_id,
            "plan_family": self.plan_family,
            "plans": list(self.plans),
            "status": self.status,
            "reason": self.reason,
            "amount_cents": self.amount_cents,
            "currency": self.currency,
            "referral_code": self.referral_code,
            "referred_on": self.referred_on.isoformat(),
            "first_payment_on": _iso(self.first_payment_on),
            "eligible_on": _iso(self.eligible_on),
            "pay_by": _iso(self.pay_by),
            "decided": self.decided,
            "payout_status": self.payout_status,
            "paid_on": _iso(self.paid_on),
        }


@dataclass(frozen=True)
class ReferralsPage:
    """A referrer's code, link and referrals: ``referrals list`` and the read API."""

    account_id: str
    code: str | None  # active code, display form
    link: str | None
    referrals: list[ReferralLine]

    def to_json(self) -> dict[str, Any]:
        return {
            "account_id": self.account_id,
            "code": self.code,
            "link": self.link,
            "referrals": [line.to_json() for line in self.referrals],
        }


def _iso(day: date | None) -> str | None:
    return day.isoformat() if day else None


_ACCOUNT_CODE = """
select a.account_id, c.code
from accounts a
left join referral_codes c on c.account_id = a.account_id and c.status = 'active'
where a.account_id = $1
"""

_REFERRALS_OF = """
select r.referee_account_id, r.referral_code, r.status, r.reason, r.attributed_at,
       r.first_payment_at,
       p.outcome, p.reason as decided_reason, p.plan_family as decided_plan, p.amount_cents,
       p.currency as decided_currency, p.eligible_on, p.pay_by,
       p.status as payout_status, p.paid_at, p.failure_reason,
       f.plans, f.held
from referrals r
left join payouts p using (referral_id)
cross join lateral (
    select coalesce(array_agg(distinct s.plan_family), '{}') as plans,
           coalesce(array_agg(distinct s.plan_family) filter (
               where not exists (select 1 from cancellations c
                                 where c.subscription_id = s.subscription_id
                                   and c.effective_at <= $2)), '{}') as held
    from subscriptions s
    where s.account_id = r.referee_account_id
) f
where r.referrer_account_id = $1
order by r.attributed_at, r.referee_account_id
"""


async def referrals_page(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
    account_id: str,
    settings: DatabaseSettings,
    now: datetime,
) -> ReferralsPage:
    """The referrals of ``account_id`` as of ``now``; :class:`UnknownAccount` if never seen."""
    account_id = checked_account(account_id)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        account = await conn.fetchrow(_ACCOUNT_CODE, account_id)
        if account is None:
            raise UnknownAccount(account_id)
        rows = await conn.fetch(_REFERRALS_OF, account_id, now)
    code = account["code"]
    return ReferralsPage(
        account_id=account_id,
        code=codes.display(code) if code else None,
        link=codes.link(settings.referral_link_base, code) if code else None,
        referrals=[referral_line(row, settings.tz, settings.program_currency) for row in rows],
    )


def referral_line(
    row: asyncpg.Record | dict[str, Any], tz: ZoneInfo, currency: str
) -> ReferralLine:
    """One row of the referral query as a :class:`ReferralLine` (pure).

    An undecided line's amount is the program's reward, in the program ``currency``
    (not the referee's billing currency, which ``referrals.currency`` records).
    """
    first_payment_at: datetime | None = row["first_payment_at"]
    common = {
        "referee_account_id": row["referee_account_id"],
        "plans": tuple(sorted(row["plans"])),
        "referral_code": codes.display(row["referral_code"]),
        "referred_on": row["attributed_at"].astimezone(tz).date(),
        "first_payment_on": first_payment_at.astimezone(tz).date() if first_payment_at else None,
    }
    if row["outcome"] is not None:
        return ReferralLine(
            plan_family=row["decided_plan"],
            status=row["outcome"],
            reason=row["decided_reason"],
            amount_cents=row["amount_cents"],
            currency=row["decided_currency"],
            eligible_on=row["eligible_on"],
            pay_by=row["pay_by"] if row["outcome"] == Outcome.DUE else None,
            decided=True,
            payout_status=row.get("payout_status"),
            paid_on=paid_at.astimezone(tz).date() if (paid_at := row.get("paid_at")) else None,
            failure_reason=row.get("failure_reason"),
            **common,
        )
    family = best_family(row["held"])
    eligible = pay_by = None
    if row["status"] == Status.QUALIFIED and first_payment_at is not None:
        eligible = calendar.eligible_on(first_payment_at, tz)
        pay_by = calendar.pay_by(eligible)
    return ReferralLine(
        plan_family=family,
        status=row["status"],
        reason=row["reason"],
        amount_cents=REWARD_CENTS[family] if family and row["status"] != Status.INELIGIBLE else 0,
        currency=currency,
        eligible_on=eligible,
        pay_by=pay_by,
        decided=False,
        **common,
    )


# --- the legacy monthly-credit program (separate from the cash referrals above) ---------------


@dataclass(frozen=True)
class LegacyLine:
    """A legacy referral of a referrer and the credit it has earned so far (integer cents)."""

    referee_account_id: str
    monthly_credit_cents: int
    currency: str
    imported_on: date  # program time zone
    credits: int  # referral.credit.earned so far (one per paid referee invoice)
    credited_cents: int

    def to_json(self) -> dict[str, Any]:
        return {
            "referee_account_id": self.referee_account_id,
            "program": "legacy_credit",
            "monthly_credit_cents": self.monthly_credit_cents,
            "currency": self.currency,
            "imported_on": self.imported_on.isoformat(),
            "credits": self.credits,
            "credited_cents": self.credited_cents,
        }


_LEGACY_OF = """
select l.referee_account_id, l.monthly_credit_cents, l.currency, l.imported_at,
       count(c.invoice_id) as credits, coalesce(sum(c.amount_cents), 0)::bigint as credited_cents
from legacy_referrals l
left join legacy_credits c
       on c.referee_account_id = l.referee_account_id
      and c.referrer_account_id = l.referrer_account_id
where l.referrer_account_id = $1
group by l.referee_account_id
order by l.imported_at, l.referee_account_id
"""


async def legacy_lines(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy, account_id: str, tz: ZoneInfo
) -> list[LegacyLine]:
    """The legacy referrals of ``account_id`` with their credits (empty if it has none)."""
    rows = await conn.fetch(_LEGACY_OF, checked_account(account_id))
    return [
        LegacyLine(
            r["referee_account_id"],
            r["monthly_credit_cents"],
            r["currency"],
            r["imported_at"].astimezone(tz).date(),
            r["credits"],
            r["credited_cents"],
        )
        for r in rows
    ]

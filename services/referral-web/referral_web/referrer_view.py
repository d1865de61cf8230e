"""The referrer's page as plain data, from its read model (pure: no I/O, no clock).

Everything the template shows is decided here: which friend is which (masked),
the words of each status, the totals paid, due and pending, the legacy credits
apart, and the visits of the link. Nothing here carries an account id, an
email, a phone or a payment fingerprint, so the template cannot show one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date

from referral_program.table import REWARD_CENTS, Outcome, Status
from referral_web.wording import (
    FAILED,
    PAID,
    day_words,
    money_words,
    plan_words,
    referral_words,
)

#: Shown of a friend's account id: its last characters, fewer the shorter the id is
#: (id length at least -> characters shown), never enough to name the account.
_VISIBLE_TAIL = ((9, 3), (6, 2))


@dataclass(frozen=True)
class Referral:
    """One referral as the page needs it; ``paid_on`` once finance reported the payment."""

    referee_account_id: str
    plan_family: str | None
    status: str
    reason: str | None
    amount_cents: int
    currency: str
    referred_on: date
    eligible_on: date | None
    pay_by: date | None
    paid_on: date | None = None


@dataclass(frozen=True)
class LegacyCredit:
    """A legacy referral: monthly account credit, not cash."""

    referee_account_id: str
    monthly_credit_cents: int
    currency: str
    credits: int
    credited_cents: int


@dataclass(frozen=True)
class ReferralRow:
    friend: str
    plan: str
    words: str
    tone: str  # paid, due, pending, lost: how the row is coloured
    referred_on: str
    eligible_on: str
    pay_by: str
    amount: str


@dataclass(frozen=True)
class LegacyRow:
    friend: str
    monthly: str
    credits: int
    credited: str


@dataclass(frozen=True)
class Totals:
    paid: str
    due: str
    pending: str


@dataclass(frozen=True)
class ReferrerView:
    code: str | None
    link: str | None
    offer: str
    rewards: str
    rows: tuple[ReferralRow, ...]
    totals: Totals
    legacy: tuple[LegacyRow, ...]
    legacy_credited: str | None
    visits_recent: int
    visits_total: int
    visits_days: int


def mask_account(account_id: str) -> str:
    """A friend's account as the referrer sees it: ``•••`` and the last two or three characters
    of a long enough id (``acct-7f3a9c21`` -> ``•••c21``, ``A00123`` -> ``•••23``, ``vr`` ->
    ``•••``): enough to tell friends apart, never enough to name one."""
    for length, shown in _VISIBLE_TAIL:
        if len(account_id) >= length:
            return "•••" + account_id[-shown:]
    return "•••"


def offer_words(discount_cents: int, currency: str) -> str:
    """What a friend gets: ``$100 off their first month``."""
    return f"{money_words(discount_cents, currency)} off their first month"


def reward_words(currency: str) -> str:
    """What the referrer earns, from the program's table, largest first."""
    parts = [
        f"{money_words(cents, currency)} for a friend on {plan_words(family)}"
        for family, cents in sorted(REWARD_CENTS.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    return "; ".join(parts)


def _tone(status: str) -> str:
    if status == PAID:
        return "paid"
    if status in (Outcome.DUE, FAILED):
        return "due"
    if status in (Status.PENDING, Status.QUALIFIED):
        return "pending"
    return "lost"


def _row(referral: Referral) -> ReferralRow:
    tone = _tone(referral.status)
    return ReferralRow(
        friend=mask_account(referral.referee_account_id),
        plan=plan_words(referral.plan_family),
        words=referral_words(
            referral.status,
            referral.reason,
            referral.amount_cents,
            referral.currency,
            referral.eligible_on,
            referral.pay_by,
            referral.paid_on,
        ),
        tone=tone,
        referred_on=day_words(referral.referred_on),
        eligible_on=day_words(referral.eligible_on) if referral.eligible_on else "—",
        pay_by=day_words(referral.pay_by) if referral.pay_by else "—",
        amount=money_words(referral.amount_cents, referral.currency)
        if referral.amount_cents > 0 and tone != "lost"
        else "—",
    )


def totals(referrals: Iterable[Referral], currency: str) -> Totals:
    """Paid (finance reported it), due (decided, not yet paid) and pending (could still earn)."""
    paid = due = pending = 0
    for r in referrals:
        tone = _tone(r.status)
        if tone == "paid":
            paid += r.amount_cents
        elif tone == "due":
            due += r.amount_cents
        elif tone == "pending":
            pending += r.amount_cents
    return Totals(
        money_words(paid, currency), money_words(due, currency), money_words(pending, currency)
    )


def referrer_view(
    *,
    code: str | None,
    link: str | None,
    referrals: Sequence[Referral],
    legacy: Sequence[LegacyCredit],
    visits_recent: int,
    visits_total: int,
    visits_days: int,
    discount_cents: int,
    currency: str,
) -> ReferrerView:
    """Everything the referrer's page shows, newest referral first."""
    ordered = sorted(referrals, key=lambda r: (r.referred_on, r.referee_account_id), reverse=True)
    credited: str | None = None
    if legacy:
        credited = "; ".join(
            money_words(sum(x.credited_cents for x in legacy if x.currency == c), c)
            for c in sorted({x.currency for x in legacy})
        )
    return ReferrerView(
        code=code,
        link=link,
        offer=offer_words(discount_cents, currency),
        rewards=reward_words(currency),
        rows=tuple(_row(r) for r in ordered),
        totals=totals(referrals, currency),
        legacy=tuple(
            LegacyRow(
                friend=mask_account(x.referee_account_id),
                monthly=f"{money_words(x.monthly_credit_cents, x.currency)} a month",
                credits=x.credits,
                credited=money_words(x.credited_cents, x.currency),
            )
            for x in legacy
        ),
        legacy_credited=credited,
        visits_recent=visits_recent,
        visits_total=visits_total,
        visits_days=visits_days,
    )

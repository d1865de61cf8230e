"""Attribution and eligibility: the referral state of an account from its set of facts.

The state is a pure function of the facts, never of their arrival order, so a
batch can recompute it for every touched account and write the result.

Once the referee has a first payment, eligibility is judged only on facts with
business time before the start of ``eligible_on`` (docs/rules.md, money rules): later facts
cannot change a referral whose cash is due. Before that, all facts count.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from referral_program import calendar
from referral_program.compared_facts import COMPARED_FACTS, ComparedFact
from referral_program.table import QUALIFYING_FAMILIES, Ineligible, Status

REFERRAL_NAMESPACE = uuid.UUID("0b8f6f5e-8f0c-4d8e-a6a1-5f3d2c9e7b41")

#: A partner flag's period, ``[since, until)``; ``None`` is unbounded (set before records
#: began, or still set).
PartnerPeriod = tuple[datetime | None, datetime | None]


@dataclass(frozen=True)
class SubscriptionFact:
    subscription_id: str
    account_id: str
    created_at: datetime
    plan_family: str
    currency: str
    first_time_client: bool
    referral_code: str | None
    referrer_account_id: str | None  # code owner at use; None = unattributed
    email_domain: str | None
    organization_id: str | None
    payment_fingerprint_hash: str | None


@dataclass(frozen=True)
class InvoiceFact:
    invoice_id: str
    account_id: str
    subscription_id: str
    paid_at: datetime
    amount_paid_cents: int


@dataclass(frozen=True)
class Referral:
    referral_id: uuid.UUID
    referee_account_id: str
    referrer_account_id: str
    referral_code: str
    subscription_id: str
    attributed_at: datetime
    status: Status
    reason: Ineligible | None
    first_payment_at: datetime | None
    first_payment_invoice_id: str | None
    currency: str  # the referee's billing currency; rewards are in the program currency


def referral_id_for(referee_account_id: str) -> uuid.UUID:
    """One referral per referred account, with an id stable across recomputations."""
    return uuid.uuid5(REFERRAL_NAMESPACE, f"referral:{referee_account_id}")


def email_domain(email: str | None) -> str | None:
    """Lower-cased domain of an address, or ``None``; the address itself is never kept."""
    if not email or "@" not in email:
        return None
    domain = email.rsplit("@", 1)[1].strip().lower().rstrip(".")
    return domain or None


def fingerprint_hash(fingerprint: str | None) -> str | None:
    """A one-way digest of a payment fingerprint: equality survives, the value does not."""
    if not fingerprint:
        return None
    return hashlib.sha256(f"payment-fingerprint:{fingerprint}".encode()).hexdigest()


def attributing_subscription(subscriptions: list[SubscriptionFact]) -> SubscriptionFact | None:
    """First touch: the earliest subscription (business time, then id) that carried a known code."""
    candidates = [s for s in subscriptions if s.referrer_account_id is not None]
    if not candidates:
        return None
    return min(candidates, key=lambda s: (s.created_at, s.subscription_id))


def partner_at(periods: Sequence[PartnerPeriod], instant: datetime | None) -> bool:
    """Was the flag set just before ``instant`` (a flip at ``instant`` is too late)?
    ``None``: is it set now."""
    if instant is None:
        return any(until is None for _, until in periods)
    return any(
        (since is None or since < instant) and (until is None or until >= instant)
        for since, until in periods
    )


def cutoff(first_payment_at: datetime, tz: ZoneInfo) -> datetime:
    """The first instant of ``eligible_on``: facts from then on never change a referral."""
    return calendar.eligibility_instant_utc(calendar.eligible_on(first_payment_at, tz), tz)


def referral_state(
    referee_subscriptions: list[SubscriptionFact],
    referee_invoices: list[InvoiceFact],
    referrer_subscriptions: list[SubscriptionFact],
    referrer_partner_periods: Sequence[PartnerPeriod],
    tz: ZoneInfo,
) -> Referral | None:
    """The referral of one referee account, or ``None`` when it was not referred.

    ``referee_*`` are all known facts of the referee account; ``referrer_*``
    those of the account that owns the attributing code; ``tz`` the program
    time zone, in which ``eligible_on`` begins.
    """
    touch = attributing_subscription(referee_subscriptions)
    if touch is None or touch.referrer_account_id is None or touch.referral_code is None:
        return None
    referee = touch.account_id
    qualifying = {
        s.subscription_id for s in referee_subscriptions if s.plan_family in QUALIFYING_FAMILIES
    }
    paid = [i for i in referee_invoices if i.amount_paid_cents > 0]
    first_payment = min(
        (i for i in paid if i.subscription_id in qualifying and i.paid_at >= touch.created_at),
        key=lambda i: (i.paid_at, i.invoice_id),
        default=None,
    )
    until = cutoff(first_payment.paid_at, tz) if first_payment is not None else None
    if until is not None:
        referee_subscriptions = [s for s in referee_subscriptions if s.created_at < until]
        referrer_subscriptions = [s for s in referrer_subscriptions if s.created_at < until]
    reason = _ineligibility(
        touch,
        referee_subscriptions,
        paid,
        referrer_subscriptions,
        partner_at(referrer_partner_periods, until),
    )
    if reason is not None:
        status = Status.INELIGIBLE
    elif first_payment is not None:
        status = Status.QUALIFIED
    else:
        status = Status.PENDING
    return Referral(
        referral_id=referral_id_for(referee),
        referee_account_id=referee,
        referrer_account_id=touch.referrer_account_id,
        referral_code=touch.referral_code,
        subscription_id=touch.subscription_id,
        attributed_at=touch.created_at,
        status=status,
        reason=reason,
        first_payment_at=first_payment.paid_at if first_payment else None,
        first_payment_invoice_id=first_payment.invoice_id if first_payment else None,
        currency=touch.currency,
    )


def _ineligibility(
    touch: SubscriptionFact,
    referee_subscriptions: list[SubscriptionFact],
    referee_paid: list[InvoiceFact],
    referrer_subscriptions: list[SubscriptionFact],
    referrer_is_partner: bool,
) -> Ineligible | None:
    if touch.referrer_account_id == touch.account_id:
        return Ineligible.SELF_REFERRAL
    for fact in COMPARED_FACTS:
        if _shared(referee_subscriptions, referrer_subscriptions, fact):
            return fact.reason
    if not touch.first_time_client or any(i.paid_at < touch.created_at for i in referee_paid):
        return Ineligible.EXISTING_CLIENT
    if referrer_is_partner:
        return Ineligible.PARTNER
    return None


def _shared(
    ours: list[SubscriptionFact], theirs: list[SubscriptionFact], fact: ComparedFact
) -> bool:
    """Do both sides hold the same value of ``fact`` (one that proves something)?"""
    mine = {value for s in ours if (value := fact.comparable(getattr(s, fact.column))) is not None}
    return bool(mine) and any(getattr(s, fact.column) in mine for s in theirs)

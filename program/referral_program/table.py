"""The program table: plan families and their rewards, statuses, outcomes and reasons.

Every other module, service and report takes the program's vocabulary from
here; the values are the strings stored in Postgres and sent on the wire.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from types import MappingProxyType


class PlanFamily(StrEnum):
    """Billing's plan families; only those in :data:`REWARD_CENTS` earn cash."""

    VIRTUAL_RECEPTIONIST = "virtual_receptionist"
    VOICE_ASSISTANT = "voice_assistant"
    CHAT = "chat"
    OUTREACH_CAMPAIGN = "outreach_campaign"


#: Cash to the referrer per referee plan family (cents of the program currency);
#: any other family, known or not, earns nothing.
REWARD_CENTS: Mapping[str, int] = MappingProxyType(
    {PlanFamily.VIRTUAL_RECEPTIONIST: 100_000, PlanFamily.VOICE_ASSISTANT: 20_000}
)
#: Plan families that earn cash; a first payment must be on one of these.
QUALIFYING_FAMILIES = frozenset(REWARD_CENTS)
#: What a new client signing up with a code gets off its first month (cents).
REFEREE_DISCOUNT_CENTS = 10_000

#: The version of the program's rules: bump it in the change that alters what attribution
#: or eligibility decide (a reason, a compared fact, a public mail domain, a cut-off).
#: `referrals migrate` then recomputes every undecided referral under the new rules, once.
#: 1: partner flags count from the instant support set them; 2: public mail domains from
#: the maintained free-mail list, revoked codes attribute sign-ups made before the revoke.
RULES_VERSION = 2


class Status(StrEnum):
    """A referral's state as the consumer derives it from the facts."""

    PENDING = "pending"  # attributed, no qualifying payment yet
    QUALIFIED = "qualified"  # first payment recorded; the scheduler decides at eligible_on
    INELIGIBLE = "ineligible"


class Ineligible(StrEnum):
    """Why nobody earns for a referral, in the order they are checked."""

    SELF_REFERRAL = "self_referral"
    SAME_ORGANIZATION = "same_organization"
    SHARED_PAYMENT_METHOD = "shared_payment_method"
    SAME_EMAIL_DOMAIN = "same_email_domain"
    EXISTING_CLIENT = "existing_client"
    PARTNER = "partner_ineligible"


class Outcome(StrEnum):
    """The one payout decision of a referral."""

    DUE = "due"
    FORFEITED = "forfeited"
    INELIGIBLE = "ineligible"


class Forfeit(StrEnum):
    """Why a referral that qualified was not paid."""

    CANCELLED_BEFORE_ELIGIBILITY = "cancelled_before_eligibility"
    NO_QUALIFYING_PLAN = "no_qualifying_plan"


def best_family(families: Iterable[str]) -> str | None:
    """The family with the largest reward (ties broken by name), or ``None`` if none earns."""
    earning = [f for f in families if REWARD_CENTS.get(f, 0) > 0]
    return max(earning, key=lambda f: (REWARD_CENTS[f], f), default=None)


def format_money(cents: int, currency: str = "USD") -> str:
    """``123456`` -> ``$1,234.56`` (USD) or ``1,234.56 CAD``; integers only, never floats."""
    sign = "-" if cents < 0 else ""
    whole, part = divmod(abs(cents), 100)
    amount = f"{whole:,}.{part:02d}"
    return f"{sign}${amount}" if currency == "USD" else f"{sign}{amount} {currency}"


class PayoutStatus(StrEnum):
    """Where a due payout stands with finance (``payouts.status``), from finance's reports."""

    DUE = "due"  # announced; finance has not reported on the current attempt
    PAID = "paid"  # one payment, of the amount and currency announced
    FAILED = "failed"  # the current attempt failed; support fixes the cause and re-issues
    MISMATCHED = "mismatched"  # one payment, of another amount or currency: money out wrong
    PAID_TWICE = "paid_twice"  # more than one payment reported: money out twice


#: Not stored: a ``due`` payout whose ``pay_by`` day has ended (program time zone).
OVERDUE = "overdue"

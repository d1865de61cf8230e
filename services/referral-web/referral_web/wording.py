"""What a referrer reads about a referral: the status, the reason, the money and the dates in
plain words (pure: no I/O, no clock).

One function, :func:`referral_words`, says it for every status the program
knows (``pending``, ``qualified`` and ``ineligible`` while undecided; ``due``,
``forfeited``, ``ineligible`` once decided; ``paid`` and ``failed`` once finance
reports back), so the page, and anything else that shows a referral to its
referrer, says the same thing the same way.
"""

from __future__ import annotations

from datetime import date

from referral_program.table import Forfeit, Ineligible, Outcome, PlanFamily, Status

#: The statuses finance's report-back adds to a due payout.
PAID = "paid"
FAILED = "failed"

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

#: Why a referral earns nothing, as the referrer reads it after "not eligible: ".
INELIGIBLE_WORDS: dict[str, str] = {
    Ineligible.SELF_REFERRAL: "your own account",
    Ineligible.SAME_ORGANIZATION: "same organization",
    Ineligible.SHARED_PAYMENT_METHOD: "same payment method",
    Ineligible.SAME_EMAIL_DOMAIN: "same company email domain",
    Ineligible.EXISTING_CLIENT: "already a client",
    Ineligible.PARTNER: "partner accounts are rewarded separately",
}

#: Why a referral that qualified was not paid, after "forfeited: ".
FORFEIT_WORDS: dict[str, str] = {
    Forfeit.CANCELLED_BEFORE_ELIGIBILITY: "cancelled before the third month",
    Forfeit.NO_QUALIFYING_PLAN: "no plan that earns a reward",
}

#: Finance's reasons for a payment that failed, after "payment delayed: ".
FAILED_WORDS: dict[str, str] = {
    "payee_details_missing": "we need your payment details",
    "rejected_by_bank": "the bank returned the payment",
}

#: Every status :func:`referral_words` has words of its own for.
STATUSES = frozenset(
    {Status.PENDING, Status.QUALIFIED, Status.INELIGIBLE, Outcome.DUE, Outcome.FORFEITED}
    | {PAID, FAILED}
)

_PLAN_WORDS: dict[str, str] = {
    PlanFamily.VIRTUAL_RECEPTIONIST: "Virtual receptionist",
    PlanFamily.VOICE_ASSISTANT: "Voice assistant",
    PlanFamily.CHAT: "Chat",
    PlanFamily.OUTREACH_CAMPAIGN: "Outreach campaign",
}


def day_words(day: date) -> str:
    """``2027-04-21`` -> ``Apr 21, 2027`` (the same in every locale)."""
    return f"{_MONTHS[day.month - 1]} {day.day}, {day.year}"


def money_words(cents: int, currency: str = "USD") -> str:
    """``100000`` -> ``$1,000``; ``123456`` -> ``$1,234.56``; other currencies by code."""
    sign = "-" if cents < 0 else ""
    whole, part = divmod(abs(cents), 100)
    amount = f"{whole:,}" if part == 0 else f"{whole:,}.{part:02d}"
    return f"{sign}${amount}" if currency == "USD" else f"{sign}{amount} {currency}"


def plan_words(family: str | None) -> str:
    """A plan family as a person names it (``virtual_receptionist`` -> ``Virtual receptionist``)."""
    if not family:
        return "—"
    return _PLAN_WORDS.get(family, family.replace("_", " ").capitalize())


def referral_words(
    status: str,
    reason: str | None,
    amount_cents: int,
    currency: str,
    eligible_on: date | None,
    pay_by: date | None,
    paid_on: date | None = None,
) -> str:
    """A referral's status and reason in plain words, with its money and dates.

    ``"not eligible: same organization"``, ``"forfeited: cancelled before the
    third month"``, ``"due: $1,000 by Apr 21, 2027"``, ``"paid Apr 12, 2027"``.
    A status this module does not know is shown as it is, never hidden.
    """
    money = money_words(amount_cents, currency)
    if status == PAID:
        return f"paid {day_words(paid_on)}" if paid_on else f"paid: {money}"
    if status == FAILED:
        why = FAILED_WORDS.get(reason or "", "the payment did not go through")
        return f"payment delayed: {why}; we are on it"
    if status == Outcome.DUE:
        return f"due: {money} by {day_words(pay_by)}" if pay_by else f"due: {money}"
    if status == Outcome.FORFEITED:
        return "forfeited: " + FORFEIT_WORDS.get(reason or "", "not paid")
    if status == Status.INELIGIBLE:  # the same string as Outcome.INELIGIBLE
        if reason in INELIGIBLE_WORDS:
            return "not eligible: " + INELIGIBLE_WORDS[reason]
        return "not eligible"
    if status in (Status.PENDING, Status.QUALIFIED) and amount_cents <= 0:
        return "pending: their current plan earns no reward"
    if status == Status.QUALIFIED:
        if eligible_on:
            return f"on track: {money} if still a client on {day_words(eligible_on)}"
        return f"on track: {money}"
    if status == Status.PENDING:
        return "pending: waiting for their first payment"
    return status.replace("_", " ")

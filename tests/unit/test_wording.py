"""The words a referrer reads about a referral, for every status and reason of the program."""

from __future__ import annotations

from datetime import date

import pytest

from referral_program.table import Forfeit, Ineligible, Outcome, Status
from referral_web.wording import (
    FAILED,
    PAID,
    STATUSES,
    day_words,
    money_words,
    plan_words,
    referral_words,
)

APR_1 = date(2027, 4, 1)
APR_21 = date(2027, 4, 21)


@pytest.mark.parametrize(
    ("status", "reason", "amount", "eligible_on", "pay_by", "paid_on", "words"),
    [
        (Status.PENDING, None, 100_000, None, None, None,
         "pending: waiting for their first payment"),
        (Status.PENDING, None, 0, None, None, None,
         "pending: their current plan earns no reward"),
        (Status.QUALIFIED, None, 100_000, APR_1, APR_21, None,
         "on track: $1,000 if still a client on Apr 1, 2027"),
        (Status.QUALIFIED, None, 20_000, None, None, None, "on track: $200"),
        (Status.QUALIFIED, None, 0, APR_1, APR_21, None,
         "pending: their current plan earns no reward"),
        (Outcome.DUE, None, 100_000, APR_1, APR_21, None, "due: $1,000 by Apr 21, 2027"),
        (Outcome.DUE, None, 20_000, APR_1, None, None, "due: $200"),
        (PAID, None, 100_000, APR_1, APR_21, date(2027, 4, 12), "paid Apr 12, 2027"),
        (PAID, None, 100_000, APR_1, APR_21, None, "paid: $1,000"),
        (FAILED, "payee_details_missing", 100_000, APR_1, APR_21, None,
         "payment delayed: we need your payment details; we are on it"),
        (FAILED, "rejected_by_bank", 100_000, APR_1, APR_21, None,
         "payment delayed: the bank returned the payment; we are on it"),
        (FAILED, "something_new", 100_000, APR_1, APR_21, None,
         "payment delayed: the payment did not go through; we are on it"),
        (Outcome.FORFEITED, Forfeit.CANCELLED_BEFORE_ELIGIBILITY, 0, APR_1, None, None,
         "forfeited: cancelled before the third month"),
        (Outcome.FORFEITED, Forfeit.NO_QUALIFYING_PLAN, 0, APR_1, None, None,
         "forfeited: no plan that earns a reward"),
        (Status.INELIGIBLE, Ineligible.SELF_REFERRAL, 0, None, None, None,
         "not eligible: your own account"),
        (Status.INELIGIBLE, Ineligible.SAME_ORGANIZATION, 0, None, None, None,
         "not eligible: same organization"),
        (Status.INELIGIBLE, Ineligible.SHARED_PAYMENT_METHOD, 0, None, None, None,
         "not eligible: same payment method"),
        (Status.INELIGIBLE, Ineligible.SAME_EMAIL_DOMAIN, 0, None, None, None,
         "not eligible: same company email domain"),
        (Status.INELIGIBLE, Ineligible.EXISTING_CLIENT, 0, None, None, None,
         "not eligible: already a client"),
        (Status.INELIGIBLE, Ineligible.PARTNER, 0, None, None, None,
         "not eligible: partner accounts are rewarded separately"),
        (Outcome.INELIGIBLE, Ineligible.SAME_ORGANIZATION, 0, APR_1, None, None,
         "not eligible: same organization"),
        (Status.INELIGIBLE, None, 0, None, None, None, "not eligible"),
    ],
)  # fmt: skip
def test_every_status_and_reason_in_plain_words(
    status: str,
    reason: str | None,
    amount: int,
    eligible_on: date | None,
    pay_by: date | None,
    paid_on: date | None,
    words: str,
) -> None:
    assert referral_words(status, reason, amount, "USD", eligible_on, pay_by, paid_on) == words


def test_every_status_and_reason_of_the_program_has_words_of_its_own() -> None:
    """A status or reason added to the program's table fails here until it has words."""
    assert {*Status, *Outcome, PAID, FAILED} == STATUSES
    generic = {"not eligible", "forfeited: not paid"}
    for reason in Ineligible:
        assert referral_words(Status.INELIGIBLE, reason, 0, "USD", None, None) not in generic
    for reason in Forfeit:
        assert referral_words(Outcome.FORFEITED, reason, 0, "USD", APR_1, None) not in generic


def test_a_status_it_does_not_know_is_shown_not_hidden() -> None:
    assert referral_words("under_review", None, 0, "USD", None, None) == "under review"


@pytest.mark.parametrize(
    ("cents", "currency", "words"),
    [
        (100_000, "USD", "$1,000"),
        (123_456, "USD", "$1,234.56"),
        (5, "USD", "$0.05"),
        (0, "USD", "$0"),
        (-2_500, "USD", "-$25"),
        (100_000, "CAD", "1,000 CAD"),
    ],
)
def test_money_in_words(cents: int, currency: str, words: str) -> None:
    assert money_words(cents, currency) == words


def test_days_in_words_are_the_same_in_every_locale() -> None:
    assert day_words(date(2027, 4, 21)) == "Apr 21, 2027"
    assert [day_words(date(2027, m, 1))[:3] for m in (1, 5, 9, 12)] == ["Jan", "May", "Sep", "Dec"]


def test_plan_families_in_words() -> None:
    assert plan_words("virtual_receptionist") == "Virtual receptionist"
    assert plan_words("voice_assistant") == "Voice assistant"
    assert plan_words("enterprise_suite") == "Enterprise suite"
    assert plan_words(None) == "—"

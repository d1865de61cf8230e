"""A payout's life with finance (referral_program.payouts): a function of the set of reports."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from referral_program.payouts import (
    Announced,
    Outcome,
    Report,
    ReportKind,
    Standing,
    attempt_event_id,
    can_reissue,
    is_overdue,
    receive,
    shown_status,
    standing,
)
from referral_program.table import OVERDUE, PayoutStatus

PAYOUT = Announced(uuid.UUID("0e6f1c2d-3b4a-5968-8776-a5b4c3d2e1f0"), 1, 100_000, "USD")
T = datetime(2027, 4, 10, 17, tzinfo=UTC)


def paid(
    attempt: int = 1,
    *,
    amount: int = 100_000,
    currency: str = "USD",
    reference: str = "ACH-1",
    hours: int = 0,
    n: int = 0,
) -> Report:
    return Report(
        uuid.UUID(int=1000 + n),
        ReportKind.PAID,
        attempt,
        T + timedelta(hours=hours),
        amount_cents=amount,
        currency=currency,
        reference=reference,
    )


def failed(attempt: int = 1, *, reason: str = "rejected_by_bank", hours: int = 0, n: int = 0):  # type: ignore[no-untyped-def]
    return Report(
        uuid.UUID(int=2000 + n),
        ReportKind.FAILED,
        attempt,
        T + timedelta(hours=hours),
        reason=reason,
    )


def test_nothing_reported_is_due() -> None:
    assert standing(PAYOUT, []) == Standing(PayoutStatus.DUE)


def test_paid_with_the_amount_announced_is_paid() -> None:
    report = paid()
    assert standing(PAYOUT, [report]) == Standing(PayoutStatus.PAID, payment=report)


def test_failed_then_paid_of_the_same_attempt_is_paid_in_either_order() -> None:
    for reports in ([failed(), paid(hours=2)], [paid(hours=2), failed()]):
        assert standing(PAYOUT, reports).status == PayoutStatus.PAID


def test_a_failure_waits_for_support() -> None:
    failure = failed(reason="payee_details_missing")
    assert standing(PAYOUT, [failure]) == Standing(PayoutStatus.FAILED, failure=failure)


@pytest.mark.parametrize(
    ("amount", "currency"), [(90_000, "USD"), (100_001, "USD"), (100_000, "CAD"), (0, "USD")]
)
def test_another_amount_or_currency_is_a_mismatch_not_paid(amount: int, currency: str) -> None:
    assert standing(PAYOUT, [paid(amount=amount, currency=currency)]).status == (
        PayoutStatus.MISMATCHED
    )


def test_two_payments_are_money_out_twice() -> None:
    reissued = PAYOUT._replace(attempt=2)
    both = [paid(1, reference="ACH-1"), paid(2, reference="ACH-2", n=1)]
    assert standing(reissued, both).status == PayoutStatus.PAID_TWICE
    # Two transfers reported for one attempt are two transfers too.
    again = [paid(1, reference="ACH-1"), paid(1, reference="ACH-9", n=1)]
    assert standing(PAYOUT, again).status == PayoutStatus.PAID_TWICE


def test_one_payment_reported_twice_is_one_payment() -> None:
    """The same transfer under a second event id (finance re-sent it) changes nothing."""
    assert standing(PAYOUT, [paid(), paid(n=1, hours=1)]).status == PayoutStatus.PAID


def test_a_late_payment_of_an_attempt_re_issued_since_is_money_out() -> None:
    reissued = PAYOUT._replace(attempt=2)
    reports = [failed(1), paid(1, hours=5)]
    state, outcomes = receive(reissued, reports[:1], reports[1:])
    assert state.status == PayoutStatus.PAID and state.payment == reports[1]
    assert outcomes == [Outcome.PAID_SUPERSEDED_ATTEMPT]
    # ...and if the re-issued attempt is paid as well, that is money out twice.
    state, outcomes = receive(reissued, reports, [paid(2, reference="ACH-2", n=1)])
    assert state.status == PayoutStatus.PAID_TWICE and outcomes == [Outcome.PAID_TWICE]


def test_a_failure_of_an_earlier_attempt_changes_nothing() -> None:
    reissued = PAYOUT._replace(attempt=2)
    state, outcomes = receive(reissued, [failed(1)], [failed(1, reason="other", n=1)])
    assert state == Standing(PayoutStatus.DUE) and outcomes == [Outcome.SUPERSEDED]


def test_the_payment_shown_is_the_earliest() -> None:
    early, late = paid(hours=1, n=1), paid(hours=9, n=2)
    assert standing(PAYOUT, [late, early]).payment == early


@pytest.mark.parametrize(
    ("known", "new", "expected"),
    [
        ([], [paid()], [Outcome.PAID]),
        ([], [failed()], [Outcome.FAILED]),
        ([paid()], [paid(n=1)], [Outcome.REPEATED]),
        ([failed()], [failed(n=1)], [Outcome.REPEATED]),
        ([paid()], [failed()], [Outcome.FAILED_AFTER_PAID]),
        ([failed()], [paid()], [Outcome.PAID]),
        ([], [paid(amount=1)], [Outcome.MISMATCHED]),
        ([paid(amount=1)], [paid(amount=1, n=1)], [Outcome.REPEATED]),
        ([paid()], [paid(reference="ACH-2", n=1)], [Outcome.PAID_TWICE]),
        ([], [paid(2)], [Outcome.UNKNOWN_ATTEMPT]),
        ([], [failed(3)], [Outcome.UNKNOWN_ATTEMPT]),
        ([], [paid(), failed()], [Outcome.PAID, Outcome.FAILED_AFTER_PAID]),
    ],
)
def test_what_each_report_did(
    known: list[Report], new: list[Report], expected: list[Outcome]
) -> None:
    assert receive(PAYOUT, known, new)[1] == expected


_REPORTS = st.lists(
    st.builds(
        Report,
        event_id=st.uuids(),
        kind=st.sampled_from(ReportKind),
        attempt=st.integers(1, 3),
        at=st.integers(0, 500).map(lambda h: T + timedelta(hours=h)),
        amount_cents=st.sampled_from([100_000, 99_999]),
        currency=st.sampled_from(["USD", "CAD"]),
        reference=st.sampled_from(["ACH-1", "ACH-2"]),
        reason=st.just("rejected_by_bank"),
    ),
    max_size=8,
)


@given(_REPORTS, st.integers(1, 3), st.randoms(use_true_random=False))
def test_the_standing_is_a_function_of_the_set_of_reports(
    reports: list[Report], attempt: int, rng: object
) -> None:
    payout = PAYOUT._replace(attempt=attempt)
    shuffled = list(reports)
    rng.shuffle(shuffled)  # type: ignore[attr-defined]
    redelivered = shuffled + shuffled[: len(shuffled) // 2]
    assert standing(payout, shuffled) == standing(payout, reports)
    assert standing(payout, redelivered) == standing(payout, reports)
    # Received one at a time, in any order, the end is the same.
    assert receive(payout, [], shuffled)[0] == standing(payout, reports)


def test_overdue_once_the_pay_by_day_has_ended() -> None:
    pay_by = date(2027, 4, 21)
    assert not is_overdue(PayoutStatus.DUE, pay_by, date(2027, 4, 21))
    assert is_overdue(PayoutStatus.DUE, pay_by, date(2027, 4, 22))
    assert not is_overdue(PayoutStatus.PAID, pay_by, date(2027, 5, 1))
    assert shown_status(PayoutStatus.DUE, pay_by, date(2027, 4, 22)) == OVERDUE
    assert shown_status(PayoutStatus.FAILED, pay_by, date(2027, 4, 22)) == PayoutStatus.FAILED


def test_only_a_failed_payout_is_re_issued() -> None:
    assert [s for s in PayoutStatus if can_reissue(s)] == [PayoutStatus.FAILED]


def test_attempt_event_ids() -> None:
    assert attempt_event_id(PAYOUT.payout_id, 1) == PAYOUT.payout_id
    assert attempt_event_id(PAYOUT.payout_id, 2) != PAYOUT.payout_id

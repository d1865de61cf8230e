"""A due payout's life with finance: announced, paid, failed, re-issued, from reports alone.

Finance answers each ``payout.due`` (a ``payout_id`` and an ``attempt``) with
``payout.paid`` or ``payout.failed``. Where a payout stands is a function of
the *set* of reports received for it and of its current attempt, never of
their arrival order or of how often one was delivered:

- every payment reported counts, whatever its attempt (money that went out is
  a fact, even for an attempt that was re-issued since or never announced);
- more than one payment (distinct ``attempt`` + ``reference``) is
  ``paid_twice``; exactly one is ``paid``, or ``mismatched`` if a payment
  report's amount or currency differs from what was announced;
- without a payment, a failure of the current attempt makes it ``failed``
  (a ``paid`` of the same attempt, arriving before or after, wins);
  a failure of an earlier attempt changes nothing;
- otherwise it is ``due``, and ``overdue`` once its ``pay_by`` day has ended.

Only a ``failed`` payout is re-issued: the same ``payout_id`` with the next
``attempt``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from enum import StrEnum
from typing import NamedTuple
from uuid import UUID

from referral_program.table import OVERDUE, PayoutStatus

#: Statuses in which money has gone out: a payout in one of them is never re-issued.
MONEY_OUT = frozenset({PayoutStatus.PAID, PayoutStatus.MISMATCHED, PayoutStatus.PAID_TWICE})


class ReportKind(StrEnum):
    PAID = "paid"
    FAILED = "failed"


class Report(NamedTuple):
    """One ``payout.paid`` or ``payout.failed`` as recorded (business times tz-aware)."""

    event_id: UUID
    kind: ReportKind
    attempt: int
    at: datetime  # paid_at or failed_at
    amount_cents: int | None = None  # paid only
    currency: str | None = None  # paid only
    reference: str | None = None  # paid only: finance's id of the transfer
    reason: str | None = None  # failed only


class Announced(NamedTuple):
    """What this project announced for a payout: its current attempt, amount and currency."""

    payout_id: UUID
    attempt: int
    amount_cents: int
    currency: str


class Standing(NamedTuple):
    """Where a payout stands: its status, the payment shown, the current attempt's failure."""

    status: PayoutStatus
    payment: Report | None = None  # the earliest payment reported (paid_at, then event id)
    failure: Report | None = None  # when failed: the earliest failure of the current attempt


class Outcome(StrEnum):
    """What one newly received report did to its payout (``referrals_payout_status_events``)."""

    PAID = "paid"
    FAILED = "failed"
    #: The payout was already paid, or already failed on this attempt: nothing changed.
    REPEATED = "repeated"
    #: A failure reported after a payment: ignored, the payment stands.
    FAILED_AFTER_PAID = "failed_after_paid"
    #: A failure of an attempt that was re-issued since: nothing changed.
    SUPERSEDED = "superseded"
    #: Paid on an attempt that was re-issued since: the payout is paid, and the
    #: re-issued attempt must not be paid as well.
    PAID_SUPERSEDED_ATTEMPT = "paid_superseded_attempt"
    #: An attempt this project never announced.
    UNKNOWN_ATTEMPT = "unknown_attempt"
    #: A payout_id this project never announced as due.
    UNKNOWN_PAYOUT = "unknown_payout"
    #: The payment's amount or currency is not what was announced: money out wrong.
    MISMATCHED = "mismatched"
    #: A second, different payment: money out twice.
    PAID_TWICE = "paid_twice"


#: Outcomes that mean money went out wrong; each one alerts.
MONEY_OUT_WRONG = frozenset({Outcome.MISMATCHED, Outcome.PAID_TWICE})


def _first(reports: Iterable[Report]) -> Report | None:
    return min(reports, key=lambda r: (r.at, r.event_id.int), default=None)


def standing(payout: Announced, reports: Iterable[Report]) -> Standing:
    """Where ``payout`` stands given every report received for it, in any order."""
    reports = list(reports)
    payments = [r for r in reports if r.kind == ReportKind.PAID]
    if payments:
        transfers = {(r.attempt, r.reference) for r in payments}
        if len(transfers) > 1:
            status = PayoutStatus.PAID_TWICE
        elif any(
            (r.amount_cents, r.currency) != (payout.amount_cents, payout.currency) for r in payments
        ):
            status = PayoutStatus.MISMATCHED
        else:
            status = PayoutStatus.PAID
        return Standing(status, payment=_first(payments))
    failure = _first(
        r for r in reports if r.kind == ReportKind.FAILED and r.attempt == payout.attempt
    )
    if failure is not None:
        return Standing(PayoutStatus.FAILED, failure=failure)
    return Standing(PayoutStatus.DUE)


def outcome(payout: Announced, before: Standing, after: Standing, report: Report) -> Outcome:
    """What ``report`` did, given the standing ``before`` and ``after`` it was added."""
    if after.status == PayoutStatus.PAID_TWICE and before.status != PayoutStatus.PAID_TWICE:
        return Outcome.PAID_TWICE
    if after.status == PayoutStatus.MISMATCHED and before.status != PayoutStatus.MISMATCHED:
        return Outcome.MISMATCHED
    if report.attempt > payout.attempt:
        return Outcome.UNKNOWN_ATTEMPT
    if report.kind == ReportKind.PAID:
        if before.status in MONEY_OUT:
            return Outcome.REPEATED
        if report.attempt < payout.attempt:
            return Outcome.PAID_SUPERSEDED_ATTEMPT
        return Outcome.PAID
    if before.status in MONEY_OUT:
        return Outcome.FAILED_AFTER_PAID
    if report.attempt < payout.attempt:
        return Outcome.SUPERSEDED
    if before.status == PayoutStatus.FAILED:
        return Outcome.REPEATED
    return Outcome.FAILED


def receive(
    payout: Announced, known: Sequence[Report], new: Sequence[Report]
) -> tuple[Standing, list[Outcome]]:
    """Add ``new`` reports (in arrival order) to the ``known`` ones.

    Returns the payout's standing with all of them, and what each new report
    did. The standing depends only on the set of reports; the outcomes, which
    are counted, on the order in which they arrived.
    """
    reports = list(known)
    current = standing(payout, reports)
    outcomes = []
    for report in new:
        reports.append(report)
        after = standing(payout, reports)
        outcomes.append(outcome(payout, current, after, report))
        current = after
    return current, outcomes


def is_overdue(status: str, pay_by: date, today: date) -> bool:
    """A due payout is overdue once its ``pay_by`` day has ended (``today`` in program time)."""
    return status == PayoutStatus.DUE and today > pay_by


def shown_status(status: str, pay_by: date, today: date) -> str:
    """The status finance and support see: ``overdue`` for a due payout past its ``pay_by``."""
    return OVERDUE if is_overdue(status, pay_by, today) else status


def can_reissue(status: str) -> bool:
    """Only a failed payout is re-issued; a due one is still with finance, a paid one is done."""
    return status == PayoutStatus.FAILED


def attempt_event_id(payout_id: UUID, attempt: int) -> UUID:
    """The ``event_id`` of the ``payout.due`` of ``attempt``: the ``payout_id`` for the first,
    a UUIDv5 of it for each re-issue, so a reader deduplicating on ``event_id`` sees each
    attempt once and every redelivery of one attempt as the same event."""
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    return payout_id if attempt == 1 else uuid.uuid5(payout_id, f"attempt:{attempt}")

"""The edge of finance's status topic: raw Kafka records -> payout reports or dead letters.

Pure (no I/O). Every record ends as exactly one :class:`StatusReport` or one
:class:`~referral_runtime.dead_letters.DeadLetter`, so the status events
consumed add up to applied + duplicate + dead-lettered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, TypeAlias

from pydantic import Field, TypeAdapter, ValidationError

from referral_events import (
    PAYOUT_STATUS_EVENT_TYPES,
    DeadLetterReason,
    PayoutFailed,
    PayoutPaid,
)
from referral_program.payouts import Report, ReportKind
from referral_runtime.dead_letters import DeadLetter, rejection
from referral_runtime.records import Record

StatusEvent: TypeAlias = PayoutPaid | PayoutFailed

_STATUS_EVENT: TypeAdapter[StatusEvent] = TypeAdapter(
    Annotated[PayoutPaid | PayoutFailed, Field(discriminator="event_type")]
)
_EXPECTED = tuple(PAYOUT_STATUS_EVENT_TYPES)


@dataclass(frozen=True)
class StatusReport:
    """A valid ``payout.paid`` / ``payout.failed`` and the record it came in."""

    record: Record
    event: StatusEvent

    def report(self) -> Report:
        """The report as the payout's life (:mod:`referral_program.payouts`) reads it."""
        event = self.event
        if isinstance(event, PayoutPaid):
            paid = event.data
            return Report(
                event.event_id,
                ReportKind.PAID,
                paid.attempt,
                paid.paid_at,
                amount_cents=paid.amount_cents,
                currency=paid.currency,
                reference=paid.reference,
            )
        failed = event.data
        return Report(
            event.event_id,
            ReportKind.FAILED,
            failed.attempt,
            failed.failed_at,
            reason=failed.reason,
        )


def parse_status_record(record: Record, max_bytes: int) -> StatusReport | DeadLetter:
    """Validate one record of the status topic against the event type it names."""
    value = record.value or b""
    if len(value) > max_bytes:
        return DeadLetter(
            record, DeadLetterReason.OVERSIZED, f"{len(value)} bytes > limit of {max_bytes}"
        )
    if b"\\u0000" in value:
        return DeadLetter(
            record, DeadLetterReason.INVALID, "contains a NUL character (\\u0000), not storable"
        )
    try:
        event = _STATUS_EVENT.validate_json(value)
    except ValidationError as exc:
        reason, detail = rejection(exc, value, _EXPECTED)
        # The discriminated union puts the event type first in each field path; drop it.
        for event_type in _EXPECTED:
            detail = detail.replace(f"{event_type}.", "")
        return DeadLetter(record, reason, detail)
    return StatusReport(record, event)


def parse_status_records(
    records: Sequence[Record], max_bytes: int
) -> tuple[list[StatusReport], list[DeadLetter]]:
    """Every record of a fetched batch, validated: the reports and the dead letters."""
    reports: list[StatusReport] = []
    dead: list[DeadLetter] = []
    for record in records:
        outcome = parse_status_record(record, max_bytes)
        if isinstance(outcome, StatusReport):
            reports.append(outcome)
        else:
            dead.append(outcome)
    return reports, dead

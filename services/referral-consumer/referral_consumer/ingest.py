"""The edge: raw Kafka records -> validated billing events or dead letters.

Pure (no I/O). Every record ends as exactly one :class:`Parsed` or one
:class:`DeadLetter`, which is what makes the conservation invariant hold.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import ValidationError

from referral_consumer.free_text import Amendment, BillingEvent, amend
from referral_events import (
    INBOUND_EVENT_TYPES,
    DeadLetterReason,
)
from referral_runtime.dead_letters import DeadLetter, rejection
from referral_runtime.records import Record

__all__ = ["BillingEvent", "DeadLetter", "Parsed", "Record", "parse_record"]


@dataclass(frozen=True)
class Parsed:
    record: Record
    event: BillingEvent
    #: The currency of a billing event (``subscription.created``, ``invoice.paid``) that is
    #: not the program's; the event is applied as usual and only counted.
    foreign_currency: str | None = None
    #: What was cut or cleaned in the event's free text (``free_text.amend``); counted.
    amended: tuple[Amendment, ...] = ()


def parse_record(
    record: Record,
    topic_types: Mapping[str, str],
    max_bytes: int,
    program_currency: str | None = None,
) -> Parsed | DeadLetter:
    """Validate one record against the model its topic carries.

    Only what makes the message as a whole untrustworthy, or a field the rules
    read that is wrong, dead-letters it. An advisory field that is wrong (a
    malformed ``referral_code``) does not; free text that cannot be stored as it
    is (a NUL, over its limit) is cut or cleaned and noted on the result, and so
    is a currency other than ``program_currency``.
    """
    value = record.value or b""
    if len(value) > max_bytes:
        return DeadLetter(
            record, DeadLetterReason.OVERSIZED, f"{len(value)} bytes > limit of {max_bytes}"
        )
    expected = topic_types[record.topic]
    model = INBOUND_EVENT_TYPES[expected]
    try:
        event = model.model_validate_json(value)
    except ValidationError as exc:
        return DeadLetter(record, *rejection(exc, value, (expected,)))
    event, amended = amend(event)
    currency = getattr(event.data, "currency", None)
    foreign = currency if program_currency and currency and currency != program_currency else None
    return Parsed(record, event, foreign, amended)

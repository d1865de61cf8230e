"""The edge: raw Kafka records -> validated billing events or dead letters.

Pure (no I/O). Every record ends as exactly one :class:`Parsed` or one
:class:`DeadLetter`, which is what makes the conservation invariant hold.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeAlias

from pydantic import ValidationError

from referral_events import (
    INBOUND_EVENT_TYPES,
    DeadLetterReason,
    InvoicePaid,
    SubscriptionCancelled,
    SubscriptionCreated,
)
from referral_runtime.dead_letters import DeadLetter, rejection
from referral_runtime.records import Record

__all__ = ["BillingEvent", "DeadLetter", "Parsed", "Record", "parse_record"]

BillingEvent: TypeAlias = SubscriptionCreated | InvoicePaid | SubscriptionCancelled


@dataclass(frozen=True)
class Parsed:
    record: Record
    event: BillingEvent
    #: The currency of a billing event (``subscription.created``, ``invoice.paid``) that is
    #: not the program's; the event is applied as usual and only counted.
    foreign_currency: str | None = None


def parse_record(
    record: Record,
    topic_types: Mapping[str, str],
    max_bytes: int,
    program_currency: str | None = None,
) -> Parsed | DeadLetter:
    """Validate one record against the model its topic carries.

    Only what makes the message as a whole untrustworthy dead-letters it; an
    advisory field that is wrong (a malformed ``referral_code``) does not, and a
    currency other than ``program_currency`` is only noted on the result.
    """
    value = record.value or b""
    if len(value) > max_bytes:
        return DeadLetter(
            record, DeadLetterReason.OVERSIZED, f"{len(value)} bytes > limit of {max_bytes}"
        )
    if b"\\u0000" in value:
        return DeadLetter(
            record, DeadLetterReason.INVALID, "contains a NUL character (\\u0000), not storable"
        )
    expected = topic_types[record.topic]
    model = INBOUND_EVENT_TYPES[expected]
    try:
        event = model.model_validate_json(value)
    except ValidationError as exc:
        return DeadLetter(record, *rejection(exc, value, (expected,)))
    currency = getattr(event.data, "currency", None)
    foreign = currency if program_currency and currency and currency != program_currency else None
    return Parsed(record, event, foreign)

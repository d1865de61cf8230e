"""The edge: raw Kafka records -> validated billing events or dead letters.

Pure (no I/O). Every record ends as exactly one :class:`Parsed` or one
:class:`DeadLetter`, which is what makes the conservation invariant hold.

Records are validated by the inbound models compiled to msgspec decoders
(``referral_events.compiled``): no pydantic model is built per event. What the
compiled decoder refuses is handed to the models themselves
(:func:`parse_with_models`), which decide and, when they refuse too, say why.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from pydantic import ValidationError

from referral_consumer.free_text import Amendment, BillingEvent, amend
from referral_events import INBOUND_EVENT_TYPES, DeadLetterReason
from referral_events.compiled import Refused
from referral_events.inbound import INBOUND_DECODERS
from referral_runtime.dead_letters import DeadLetter, rejection
from referral_runtime.records import Record

__all__ = ["BillingEvent", "DeadLetter", "Parsed", "Record", "parse_record", "parse_with_models"]


class Parsed(NamedTuple):
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
    try:
        event = INBOUND_DECODERS[expected].decode(value)
    except Refused:
        return parse_with_models(record, expected, value, program_currency)
    return _accepted(record, event, program_currency)


def parse_with_models(
    record: Record, expected: str, value: bytes, program_currency: str | None
) -> Parsed | DeadLetter:
    """:func:`parse_record` by the pydantic model itself: the verdict on what the compiled
    decoder refused, and the reason and detail of a dead letter."""
    model = INBOUND_EVENT_TYPES[expected]
    try:
        instance = model.model_validate_json(value)
    except ValidationError as exc:
        return DeadLetter(record, *rejection(exc, value, (expected,)))
    return _accepted(record, INBOUND_DECODERS[expected].from_model(instance), program_currency)


def _accepted(record: Record, event: BillingEvent, program_currency: str | None) -> Parsed:
    amended = amend(event)
    currency = getattr(event.data, "currency", None)
    foreign = currency if program_currency and currency and currency != program_currency else None
    return Parsed(record, event, foreign, amended)

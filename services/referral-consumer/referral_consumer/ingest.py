"""The edge: raw Kafka records -> validated billing events or dead letters.

Pure (no I/O). Every record ends as exactly one :class:`Parsed` or one
:class:`DeadLetter`, which is what makes the conservation invariant hold.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeAlias

from pydantic import ValidationError

from referral_events import (
    INBOUND_EVENT_TYPES,
    SUPPORTED_SCHEMA_VERSION,
    DeadLetterReason,
    InvoicePaid,
    SubscriptionCancelled,
    SubscriptionCreated,
)
from referral_runtime.dead_letters import DeadLetter
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
        return DeadLetter(record, *_classify(exc, value, expected))
    currency = getattr(event.data, "currency", None)
    foreign = currency if program_currency and currency and currency != program_currency else None
    return Parsed(record, event, foreign)


def _classify(exc: ValidationError, value: bytes, expected: str) -> tuple[DeadLetterReason, str]:
    errors = exc.errors(include_url=False, include_input=False)
    if any(e["type"] in {"json_invalid", "json_type"} for e in errors):
        return DeadLetterReason.UNPARSEABLE, f"not a JSON object: {errors[0]['msg']}"
    try:
        document = json.loads(value)
    except ValueError:  # pragma: no cover - pydantic already parsed it
        document = {}
    if not isinstance(document, dict):
        return DeadLetterReason.UNPARSEABLE, "the message is JSON but not an object"
    version = document.get("schema_version")
    if isinstance(version, int) and version > SUPPORTED_SCHEMA_VERSION:
        return (
            DeadLetterReason.UNSUPPORTED_SCHEMA_VERSION,
            f"schema_version {version} > supported {SUPPORTED_SCHEMA_VERSION}",
        )
    actual = document.get("event_type")
    if isinstance(actual, str) and actual != expected:
        return (
            DeadLetterReason.EVENT_TYPE_MISMATCH,
            f"event_type {actual[:60]!r} on a topic that carries {expected!r}",
        )
    # Field paths and messages only: the offending values may be personal data.
    detail = "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in errors[:5]
    )
    return DeadLetterReason.INVALID, detail[:1000]

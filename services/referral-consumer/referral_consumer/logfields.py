"""Where a record or a batch sits in Kafka, for log lines an SRE can follow to the message."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from referral_consumer.ingest import Record


def event_id_of(record: Record) -> str | None:
    """The record's ``event_id`` if its body is a JSON object carrying one (else ``None``).

    Only the id is read: nothing else of a rejected body reaches the log.
    """
    try:
        body = json.loads(record.value or b"")
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    value = body.get("event_id") if isinstance(body, dict) else None
    return value[:100] if isinstance(value, str) else None


def record_fields(record: Record, event_id: str | None = None) -> dict[str, Any]:
    """``event_id``, ``topic``, ``partition`` and ``offset`` of one record."""
    return {
        "event_id": event_id if event_id is not None else event_id_of(record),
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
    }


def batch_fields(records: Sequence[Record]) -> dict[str, Any]:
    """A batch's size and, per partition, its first and last offsets."""
    spans: dict[tuple[str, int], list[int]] = {}
    for r in records:
        span = spans.setdefault((r.topic, r.partition), [r.offset, r.offset])
        span[0] = min(span[0], r.offset)
        span[1] = max(span[1], r.offset)
    return {
        "records": len(records),
        "offsets": [
            {"topic": topic, "partition": partition, "first": first, "last": last}
            for (topic, partition), (first, last) in sorted(spans.items())
        ],
    }

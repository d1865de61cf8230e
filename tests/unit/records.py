"""Hand-made Kafka records of billing events, for the consumer's unit tests."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from referral_consumer.ingest import Parsed, parse_record

#: Topic -> the event type it carries (short topic names).
TOPICS = {
    "created": "subscription.created",
    "paid": "invoice.paid",
    "cancelled": "subscription.cancelled",
}
T = datetime(2027, 1, 17, 15, 4, 5, tzinfo=UTC)


@dataclass(frozen=True)
class Rec:
    topic: str
    value: bytes | None
    partition: int = 0
    offset: int = 0
    key: bytes | None = b"acct"


def parsed(*events: tuple[str, dict[str, Any]]) -> list[Parsed]:
    """(topic, event) pairs as validated events, at offsets 0, 1, 2, ..."""
    out = []
    for offset, (topic, event) in enumerate(events):
        p = parse_record(Rec(topic, json.dumps(event).encode(), offset=offset), TOPICS, 65536)
        assert isinstance(p, Parsed), p
        out.append(p)
    return out

"""Dead letters: a consumed message that cannot be applied, kept with its original bytes.

Each is recorded once per source coordinate in ``dead_letters`` and queued,
in the same transaction as the rest of its batch, for the dead-letter topic
through the outbox, with headers that name the error and where it came from.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from pydantic import ValidationError

from referral_events import SUPPORTED_SCHEMA_VERSION, DeadLetterReason
from referral_runtime.db import Conn
from referral_runtime.outbox import OutboxMessage
from referral_runtime.records import Record


@dataclass(frozen=True)
class DeadLetter:
    record: Record
    reason: DeadLetterReason
    detail: str


_RECORD = """
insert into dead_letters (topic, "partition", "offset", reason, detail)
select * from unnest($1::text[], $2::int[], $3::bigint[], $4::text[], $5::text[])
on conflict do nothing
returning topic, "partition", "offset"
"""


async def record_dead_letters(
    conn: Conn,
    dead: Sequence[DeadLetter],
    *,
    dlq_topic: str,
    consumer_group: str,
    failed_at: datetime,
) -> list[OutboxMessage]:
    """Record ``dead`` in the caller's transaction; returns the DLQ messages to enqueue.

    A coordinate already recorded (a redelivered bad message) gets no second message.
    """
    if not dead:
        return []
    rows = await conn.fetch(
        _RECORD,
        [d.record.topic for d in dead],
        [d.record.partition for d in dead],
        [d.record.offset for d in dead],
        [d.reason.value for d in dead],
        [d.detail for d in dead],
    )
    new = {(r["topic"], r["partition"], r["offset"]) for r in rows}
    messages = []
    for d in dead:
        if (d.record.topic, d.record.partition, d.record.offset) not in new:
            continue
        headers = {
            "dlq.reason": d.reason.value,
            "dlq.detail": d.detail,
            "dlq.source.topic": d.record.topic,
            "dlq.source.partition": str(d.record.partition),
            "dlq.source.offset": str(d.record.offset),
            "dlq.consumer_group": consumer_group,
            "dlq.failed_at": failed_at.isoformat(),
        }
        messages.append(OutboxMessage(dlq_topic, d.record.key, d.record.value or b"", headers))
    return messages


def rejection(
    exc: ValidationError, value: bytes, expected: Sequence[str]
) -> tuple[DeadLetterReason, str]:
    """Why a message that failed validation is dead-lettered, and a detail a person can act on.

    ``expected`` is the event types its topic carries. The detail names fields
    and messages only, never values: the offending values may be personal data.
    """
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
    if isinstance(actual, str) and actual not in expected:
        carried = " or ".join(repr(t) for t in expected)
        return (
            DeadLetterReason.EVENT_TYPE_MISMATCH,
            f"event_type {actual[:60]!r} on a topic that carries {carried}",
        )
    detail = "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in errors[:5]
    )
    return DeadLetterReason.INVALID, detail[:1000]

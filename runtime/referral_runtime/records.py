"""Kafka records as both services read them: their shape, their offsets, their log coordinates.

Pure (no I/O). A consumer commits, per partition, the offset after the last
record it made durable (:func:`next_offsets`) and, when a batch fails, seeks
back to the first offset of every partition the batch touched
(:func:`first_offsets`), so no later commit moves past a record not applied.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Protocol

from aiokafka import TopicPartition


class Record(Protocol):
    """What we read of a Kafka record (aiokafka's ConsumerRecord satisfies it)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


def next_offsets(records: Sequence[Record]) -> dict[TopicPartition, int]:
    """The offsets to commit after ``records``: last offset + 1 per partition."""
    offsets: dict[TopicPartition, int] = {}
    for r in records:
        tp = TopicPartition(r.topic, r.partition)
        offsets[tp] = max(offsets.get(tp, 0), r.offset + 1)
    return offsets


def first_offsets(records: Sequence[Record]) -> dict[TopicPartition, int]:
    """Where to seek back to so that every one of ``records`` is fetched again."""
    offsets: dict[TopicPartition, int] = {}
    for r in records:
        tp = TopicPartition(r.topic, r.partition)
        offsets[tp] = min(offsets.get(tp, r.offset), r.offset)
    return offsets


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


async def tolerant_batch_parser(records: Any, original: Any) -> Any:
    """A FastStream batch parser that survives a header that is not UTF-8.

    FastStream's own parser decodes headers as UTF-8 and would drop the whole
    batch on one bad header; headers are not part of the contract, so an
    undecodable one is replaced and the records are parsed again.
    """
    try:
        return await original(records)
    except UnicodeDecodeError:
        for record in records:
            record.headers = [
                (k, v.decode(errors="replace").encode()) for k, v in (record.headers or [])
            ]
        return await original(records)


async def skip_decoding(message: Any) -> None:
    """A FastStream decoder that decodes nothing: handlers read the raw records."""
    return None

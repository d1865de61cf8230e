"""The ceilings the consumer is measured against, each a small process of its own:

- ``read``: raw aiokafka ``getmany`` of the same topic data, no processing;
- ``write``: the same records validated with the pydantic models and inserted into an
  inbox-like table with one set-based statement per batch, then the offsets committed;
- ``naive``: a FastStream handler called once per event, one transaction per event
  (``AckPolicy.ACK``: an offset commit per event too).

``python -m bench.ceilings MODE 'JSON config'``; ``read`` and ``write`` exit when they
reach the end offsets and print one JSON line; ``naive`` runs until SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from pydantic import ValidationError

from referral_events import INBOUND_EVENT_TYPES

MAX_RECORDS = 5000  # the consumer's default CONSUMER_MAX_BATCH
MAX_BYTES = 64 * 1024  # the consumer's default MAX_MESSAGE_BYTES
FETCH_BYTES = 4 * 1024 * 1024  # the consumer's max_partition_fetch_bytes

TABLE = """
create table if not exists raw_events (
    event_id     uuid primary key,
    event_type   text not null,
    topic        text not null,
    "partition"  int not null,
    "offset"     bigint not null
)"""
INSERT = """
insert into raw_events (event_id, event_type, topic, "partition", "offset")
select * from unnest($1::uuid[], $2::text[], $3::text[], $4::int[], $5::bigint[])
on conflict do nothing"""


def tp_key(tp: TopicPartition) -> str:
    return f"{tp.topic}:{tp.partition}"


def tp_of(key: str) -> TopicPartition:
    topic, part = key.rsplit(":", 1)
    return TopicPartition(topic, int(part))


def encode_offsets(offsets: dict[TopicPartition, int]) -> dict[str, int]:
    return {tp_key(tp): n for tp, n in offsets.items()}


def _offsets(cfg: dict[str, Any], name: str) -> dict[TopicPartition, int]:
    return {tp_of(k): v for k, v in cfg[name].items()}


async def raw_read(cfg: dict[str, Any]) -> dict[str, Any]:
    start, end = _offsets(cfg, "start"), _offsets(cfg, "end")
    consumer = AIOKafkaConsumer(
        bootstrap_servers=cfg["bootstrap"],
        group_id=None,
        enable_auto_commit=False,
        max_partition_fetch_bytes=FETCH_BYTES,
    )
    await consumer.start()
    try:
        consumer.assign(list(end))
        for tp in end:
            consumer.seek(tp, start.get(tp, 0))
        target = sum(end.values()) - sum(start.get(tp, 0) for tp in end)
        n = 0
        first_at = last_at = 0.0
        first_n = 0
        while n < target:
            batch = await consumer.getmany(timeout_ms=100, max_records=MAX_RECORDS)
            got = sum(len(records) for records in batch.values())
            if got:
                n += got
                last_at = time.monotonic()
                if not first_n:
                    first_at, first_n = last_at, got
    finally:
        await consumer.stop()
    return _result(n, first_n, first_at, last_at)


class _SeekOnAssign(ConsumerRebalanceListener):  # type: ignore[misc]
    """Start a fresh group at the given offsets (the stream, not the referrers before it)."""

    def __init__(self, consumer: AIOKafkaConsumer, start: dict[TopicPartition, int]) -> None:
        self.consumer = consumer
        self.start = start
        self.done: set[TopicPartition] = set()

    async def on_partitions_revoked(self, revoked: Any) -> None:
        return None

    async def on_partitions_assigned(self, assigned: Any) -> None:
        for tp in assigned:
            if tp not in self.done:
                self.consumer.seek(tp, self.start.get(tp, 0))
                self.done.add(tp)


async def raw_write(cfg: dict[str, Any]) -> dict[str, Any]:
    start, end = _offsets(cfg, "start"), _offsets(cfg, "end")
    topic_types: dict[str, str] = cfg["topic_types"]
    models = {t: INBOUND_EVENT_TYPES[et] for t, et in topic_types.items()}
    conn = await asyncpg.connect(cfg["database_url"])
    await conn.execute(TABLE)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=cfg["bootstrap"],
        group_id=cfg["group"],
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=FETCH_BYTES,
    )
    consumer.subscribe(list(topic_types), listener=_SeekOnAssign(consumer, start))
    await consumer.start()
    n = bad = 0
    first_at = last_at = 0.0
    first_n = 0
    position = dict(start)
    try:
        while any(position.get(tp, 0) < e for tp, e in end.items()):
            batch = await consumer.getmany(timeout_ms=100, max_records=MAX_RECORDS)
            if not batch:
                continue
            rows: dict[Any, tuple[Any, ...]] = {}
            offsets: dict[TopicPartition, int] = {}
            for tp, records in batch.items():
                model = models[tp.topic]
                for r in records:
                    value = r.value or b""
                    if len(value) > MAX_BYTES or b"\\u0000" in value:
                        bad += 1
                        continue
                    try:
                        event = model.model_validate_json(value)
                    except ValidationError:
                        bad += 1
                        continue
                    rows.setdefault(
                        event.event_id, (event.event_type, r.topic, r.partition, r.offset)
                    )
                offsets[tp] = records[-1].offset + 1
                n += len(records)
            ids = list(rows)
            await conn.execute(INSERT, ids, *([row[i] for row in rows.values()] for i in range(4)))
            await consumer.commit(offsets)
            position.update(offsets)
            last_at = time.monotonic()
            if not first_n:
                first_at, first_n = last_at, n
    finally:
        await consumer.stop()
        await conn.close()
    return {**_result(n, first_n, first_at, last_at), "bad": bad}


def _result(n: int, first_n: int, first_at: float, last_at: float) -> dict[str, Any]:
    seconds = last_at - first_at
    return {
        "events": n,
        "first_batch": first_n,
        "seconds": seconds,
        "events_per_s": (n - first_n) / seconds if seconds > 0 else 0.0,
    }


async def naive(cfg: dict[str, Any]) -> None:
    from faststream import AckPolicy
    from faststream.kafka import KafkaBroker, KafkaMessage

    topic_types: dict[str, str] = cfg["topic_types"]
    models = {t: INBOUND_EVENT_TYPES[et] for t, et in topic_types.items()}
    pool = await asyncpg.create_pool(cfg["database_url"], min_size=1, max_size=2)
    async with pool.acquire() as conn:
        await conn.execute(TABLE)
    broker = KafkaBroker(cfg["bootstrap"], logger=None)

    @broker.subscriber(  # type: ignore[untyped-decorator]
        *topic_types,
        group_id=cfg["group"],
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.ACK,
    )
    async def handle(msg: KafkaMessage) -> None:
        record: Any = msg.raw_message
        if len(msg.body) > MAX_BYTES or b"\\u0000" in msg.body:
            return  # the consumer's edge checks, so both store the same events
        try:
            event = models[record.topic].model_validate_json(msg.body)
        except ValidationError:
            return  # a bad message: skipped (and, with ACK, committed)
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(
                """insert into raw_events (event_id, event_type, topic, "partition", "offset")
                   values ($1, $2, $3, $4, $5) on conflict do nothing""",
                event.event_id,
                event.event_type,
                record.topic,
                record.partition,
                record.offset,
            )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await broker.start()
    await stop.wait()
    await broker.stop()
    await pool.close()


def main() -> None:
    mode, raw = sys.argv[1], sys.argv[2]
    cfg = json.loads(raw)
    if mode == "read":
        print(json.dumps(asyncio.run(raw_read(cfg))))
    elif mode == "write":
        print(json.dumps(asyncio.run(raw_write(cfg))))
    elif mode == "naive":
        asyncio.run(naive(cfg))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()

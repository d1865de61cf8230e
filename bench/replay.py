"""The consumer's batch path without a broker: the bench stream replayed in-process.

``python -m bench.replay [--events N] [--batch N] [--overlap] [--gc-young N]``

Generates the throughput part's stream, turns each message into a record with
the topic, partition and offset the broker would give it, and feeds batches to
``BatchParser`` then ``BatchWriter`` (validate + plan, then the batch transaction) on a fresh
embedded PostgreSQL. Prints events/s, the process's CPU per event, the time
the cyclic collector took, and checks the inbox against the generator. It
isolates the consumer's own cost from Kafka's, and lets one setting be
compared in alternating runs; it is not a ceiling and not part of ``make bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import time
from collections import Counter
from typing import NamedTuple
from zoneinfo import ZoneInfo

import structlog
from prometheus_client import CollectorRegistry

from bench.stack import embedded_stack, partition_of
from bench.stream import generate, referrer_events
from referral_consumer.main import young_generation_size
from referral_consumer.metrics import ConsumerMetrics
from referral_consumer.parser import BatchParser, ParsedBatch
from referral_consumer.writer import BatchWriter
from referral_devtools import devstack
from referral_program.codes import display
from referral_runtime.db import create_pool
from referral_runtime.referral_state import Outbound

TOPICS = ("billing.subscription.created", "billing.invoice.paid", "billing.subscription.cancelled")
TOPIC_TYPES = dict(
    zip(TOPICS, ("subscription.created", "invoice.paid", "subscription.cancelled"), strict=True)
)


class Rec(NamedTuple):
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class _Records:
    """Messages -> records, offsets contiguous per partition as on a fresh topic."""

    def __init__(self) -> None:
        self.offsets: Counter[tuple[str, int]] = Counter()

    def __call__(self, messages: list[tuple[int, bytes, bytes]]) -> list[Rec]:
        records = []
        for kind, key, value in messages:
            topic, partition = TOPICS[kind], partition_of(key)
            records.append(Rec(topic, partition, self.offsets[(topic, partition)], key, value))
            self.offsets[(topic, partition)] += 1
        return records


class _CollectorClock:
    """Seconds the cyclic collector ran, and how often, by generation."""

    def __init__(self) -> None:
        self.seconds: Counter[int] = Counter()
        self.runs: Counter[int] = Counter()
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds[info["generation"]] += time.perf_counter() - self._started
            self.runs[info["generation"]] += 1


async def replay(events: int, batch: int, overlap: bool, gc_young: int) -> None:
    with embedded_stack() as stack:  # the broker idles: records are fed in-process
        url = await devstack.create_database(stack.server_uri, "replay")
        pool = await create_pool(url)
        parser = BatchParser(TOPIC_TYPES, max_message_bytes=64 * 1024)
        writer = BatchWriter(
            pool,
            TOPIC_TYPES,
            Outbound("code", "credit", "dlq", "https://example.test/r", "replay"),
            ConsumerMetrics(CollectorRegistry()),
            asyncio.Event(),
            tz=ZoneInfo("America/Los_Angeles"),
        )
        to_records = _Records()
        referrers = [
            (0, e["data"]["account_id"].encode(), json.dumps(e).encode())
            for e in referrer_events(1000)
        ]
        await writer.apply(await parser.parse_interleaved(to_records(referrers)))
        async with pool.acquire() as conn:
            codes = {
                r["account_id"]: display(r["code"])
                for r in await conn.fetch("select account_id, code from referral_codes")
            }
        stream = generate(events, codes, seed=11)
        records = to_records(stream.messages)

        gc.set_threshold(gc_young, 20, 100)
        clock = _CollectorClock()
        gc.callbacks.append(clock)
        cpu, wall = time.process_time(), time.perf_counter()
        in_flight: asyncio.Task[object] | None = None
        for start in range(0, len(records), batch):
            parsed: ParsedBatch = await parser.parse_interleaved(records[start : start + batch])
            if in_flight is not None:
                await in_flight
            in_flight = asyncio.create_task(writer.apply(parsed))
            if not overlap:
                await in_flight
                in_flight = None
        if in_flight is not None:
            await in_flight
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        gc.callbacks.remove(clock)

        async with pool.acquire() as conn:
            inbox = await conn.fetchval("select count(*) from inbox")
        await pool.close()
        expected = stream.expected.distinct_events + len(referrers)
        print(
            f"{events:,} events, batches of {batch:,}, overlap {'on' if overlap else 'off'}, "
            f"gc young {gc_young:,}: {events / wall:,.0f} events/s; "
            f"CPU {cpu / events * 1e6:.1f} us/event; collector "
            f"{sum(clock.seconds.values()):.2f} s in {dict(sorted(clock.runs.items()))} runs; "
            f"inbox {inbox:,} (expected {expected:,})"
        )
        if inbox != expected:
            raise SystemExit(f"inbox holds {inbox} events, expected {expected}")


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.replay", description=__doc__)
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--batch", type=int, default=5_000)
    p.add_argument("--overlap", action="store_true", help="validate N+1 while N is written")
    p.add_argument("--gc-young", type=int, help="generation-0 threshold (default: the service's)")
    args = p.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    young = args.gc_young or young_generation_size(args.batch)
    asyncio.run(replay(args.events, args.batch, args.overlap, young))


if __name__ == "__main__":
    main()

"""Commit ordering and rewind on failure, with a fake consumer and a fake parser/writer."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry

from referral_consumer.metrics import ConsumerMetrics
from referral_consumer.parser import PARSE_SLICE, BatchParser, ParsedBatch
from referral_consumer.pipeline import BatchPipeline, first_offsets, next_offsets
from tests.unit.records import Rec


@dataclass
class FakeConsumer:
    commits: list[dict[TopicPartition, int]] = field(default_factory=list)
    seeks: list[tuple[TopicPartition, int]] = field(default_factory=list)

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition("t", 0), TopicPartition("t", 1)}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(offsets)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))

    def highwater(self, tp: TopicPartition) -> None:
        return None


class FakeProcessor:
    """Parser and writer in one: applies batches in order; fails those whose first offset is listed."""

    def __init__(self, fail_first_offsets: set[int]) -> None:
        self.fail = fail_first_offsets
        self.applied: list[int] = []
        self.running = 0

    async def parse_interleaved(self, records: Any) -> ParsedBatch:
        return ParsedBatch(records, 0.0)

    async def apply(self, batch: ParsedBatch) -> None:
        self.running += 1
        assert self.running == 1, "two transactions at once"
        await asyncio.sleep(0.01)
        self.running -= 1
        first = batch.records[0].offset
        if first in self.fail:
            self.fail.discard(first)
            raise RuntimeError("boom")
        self.applied.append(first)


def batch(*coords: tuple[int, int]) -> tuple[Rec, ...]:
    return tuple(Rec("t", None, partition=p, offset=o) for p, o in coords)


def test_offsets() -> None:
    records = batch((0, 5), (0, 7), (1, 3))
    assert next_offsets(records) == {TopicPartition("t", 0): 8, TopicPartition("t", 1): 4}
    assert first_offsets(records) == {TopicPartition("t", 0): 5, TopicPartition("t", 1): 3}


async def test_commits_follow_each_transaction_in_order() -> None:
    consumer, processor = FakeConsumer(), FakeProcessor(set())
    pipeline = BatchPipeline(
        processor, processor, ConsumerMetrics(CollectorRegistry()), overlap=True
    )
    await pipeline.submit(batch((0, 0), (0, 1)), consumer)
    await pipeline.submit(batch((0, 2), (1, 0)), consumer)
    await pipeline.drain()
    assert processor.applied == [0, 2]
    assert consumer.commits == [
        {TopicPartition("t", 0): 2},
        {TopicPartition("t", 0): 3, TopicPartition("t", 1): 1},
    ]
    assert consumer.seeks == []


async def test_a_failed_batch_is_never_committed_past() -> None:
    consumer, processor = FakeConsumer(), FakeProcessor({10})
    pipeline = BatchPipeline(
        processor, processor, ConsumerMetrics(CollectorRegistry()), overlap=True
    )
    await pipeline.submit(batch((0, 10), (1, 4)), consumer)  # fails in flight
    await pipeline.submit(batch((0, 12), (1, 6)), consumer)  # must not be applied
    await pipeline.drain()
    assert processor.applied == []
    assert consumer.commits == []
    # both batches rewound: the failed one's first offsets win on shared partitions
    assert set(consumer.seeks) >= {(TopicPartition("t", 0), 10), (TopicPartition("t", 1), 4)}
    # redelivered from the rewind point, they apply and commit
    await pipeline.submit(batch((0, 10), (1, 4)), consumer)
    await pipeline.drain()
    assert processor.applied == [10]
    assert consumer.commits == [{TopicPartition("t", 0): 11, TopicPartition("t", 1): 5}]


async def test_without_overlap_submit_returns_after_commit() -> None:
    consumer, processor = FakeConsumer(), FakeProcessor(set())
    pipeline = BatchPipeline(
        processor, processor, ConsumerMetrics(CollectorRegistry()), overlap=False
    )
    await pipeline.submit(batch((1, 0)), consumer)
    assert consumer.commits == [{TopicPartition("t", 1): 1}]


async def test_parsing_yields_to_the_batch_in_flight() -> None:
    """A 1,000-record parse lets another task run between its slices, not only after it."""
    topics = {"billing.invoice.paid": "invoice.paid"}
    parser = BatchParser(topics, max_message_bytes=65536)
    records = [Rec("billing.invoice.paid", b'{"not": "an event"}', offset=n) for n in range(1000)]
    ticks = 0

    async def other_work() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    ticker = asyncio.create_task(other_work())
    await asyncio.sleep(0)
    parsed = await parser.parse_interleaved(records)
    ticker.cancel()

    assert len(parsed.plan.dead) == 1000 and not parsed.plan.events
    assert ticks >= 1000 // PARSE_SLICE

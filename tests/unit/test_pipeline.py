"""Commit ordering and rewind on failure, with a fake consumer and a fake parser/writer."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from referral_consumer.metrics import ConsumerMetrics
from referral_consumer.parser import PARSE_SLICE, BatchParser, ParsedBatch
from referral_consumer.pipeline import BatchPipeline, first_offsets, next_offsets
from tests.unit.records import Rec

T0, T1 = TopicPartition("t", 0), TopicPartition("t", 1)


@dataclass
class FakeConsumer:
    commits: list[dict[TopicPartition, int]] = field(default_factory=list)
    seeks: list[tuple[TopicPartition, int]] = field(default_factory=list)

    def assignment(self) -> set[TopicPartition]:
        return {T0, T1}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(offsets)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))

    def highwater(self, tp: TopicPartition) -> None:
        return None


class FakeProcessor:
    """Parser and writer in one: applies batches, each taking ``seconds[first offset]``
    (default 10 ms); fails those whose first offset is listed, once each."""

    def __init__(self, fail_first_offsets: set[int], seconds: dict[int, float] | None = None):
        self.fail = fail_first_offsets
        self.seconds = seconds or {}
        self.applied: list[int] = []
        self.running = 0
        self.most_at_once = 0

    async def parse_interleaved(self, records: Any) -> ParsedBatch:
        return ParsedBatch(records, 0.0)

    async def apply(self, batch: ParsedBatch) -> None:
        first = batch.records[0].offset
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            await asyncio.sleep(self.seconds.get(first, 0.01))
        finally:
            self.running -= 1
        if first in self.fail:
            self.fail.discard(first)
            raise RuntimeError("boom")
        self.applied.append(first)


def batch(*coords: tuple[int, int]) -> tuple[Rec, ...]:
    return tuple(Rec("t", None, partition=p, offset=o) for p, o in coords)


def pipeline(
    processor: FakeProcessor, *, in_flight: int = 2, overlap: bool = True
) -> BatchPipeline:
    return BatchPipeline(
        processor,
        processor,
        ConsumerMetrics(CollectorRegistry()),
        overlap=overlap,
        in_flight=in_flight,
    )


def test_offsets() -> None:
    records = batch((0, 5), (0, 7), (1, 3))
    assert next_offsets(records) == {T0: 8, T1: 4}
    assert first_offsets(records) == {T0: 5, T1: 3}


async def test_commits_follow_each_transaction_in_order() -> None:
    consumer, processor = FakeConsumer(), FakeProcessor(set(), {0: 0.05, 2: 0.001})
    p = pipeline(processor)
    await p.submit(batch((0, 0), (0, 1)), consumer)
    await p.submit(batch((0, 2), (1, 0)), consumer)
    await p.drain()
    assert processor.most_at_once == 2, "the second transaction runs beside the first"
    assert processor.applied == [2, 0], "the second finished first"
    assert consumer.commits == [{T0: 2}, {T0: 3, T1: 1}], "yet offsets commit in batch order"
    assert consumer.seeks == []


async def test_one_in_flight_runs_one_transaction_at_a_time() -> None:
    consumer, processor = FakeConsumer(), FakeProcessor(set())
    p = pipeline(processor, in_flight=1)
    for n in range(4):
        await p.submit(batch((0, n)), consumer)
    await p.drain()
    assert processor.most_at_once == 1
    assert consumer.commits == [{T0: n + 1} for n in range(4)]


async def test_a_failed_first_batch_never_lets_the_second_commit_its_offsets() -> None:
    """The second transaction commits (its effects are durable: redelivered, they are
    duplicates) but its offsets would pass the first batch's records: they are not committed,
    and both batches are fetched again from the first one's offsets."""
    consumer, processor = FakeConsumer(), FakeProcessor({10}, {10: 0.05, 12: 0.001})
    p = pipeline(processor)
    await p.submit(batch((0, 10), (1, 4)), consumer)  # fails, after the second committed
    await p.submit(batch((0, 12), (1, 6), (1, 7)), consumer)  # applied, offsets held back
    await p.submit(batch((0, 14)), consumer)  # handed over after them: fetched again too
    await p.drain()
    assert processor.applied == [12]
    assert consumer.commits == []
    assert _positions(consumer) == {T0: 10, T1: 4}, "the lowest first offset of each partition"
    # redelivered from the rewind point, they apply and commit
    await p.submit(batch((0, 10), (1, 4)), consumer)
    await p.drain()
    assert consumer.commits == [{T0: 11, T1: 5}]


async def test_a_failed_second_batch_commits_the_first_and_nothing_past_it() -> None:
    consumer, processor = FakeConsumer(), FakeProcessor({12}, {10: 0.05, 12: 0.001})
    p = pipeline(processor)
    await p.submit(batch((0, 10), (1, 4)), consumer)
    await p.submit(batch((0, 12), (1, 6)), consumer)  # fails first, while the first runs
    await p.submit(batch((0, 14), (1, 8)), consumer)
    await p.drain()
    assert processor.applied == [10]
    assert consumer.commits == [{T0: 11, T1: 5}]
    assert _positions(consumer) == {T0: 12, T1: 6}


async def test_without_overlap_submit_returns_after_commit() -> None:
    consumer, processor = FakeConsumer(), FakeProcessor(set())
    p = pipeline(processor, overlap=False)
    await p.submit(batch((1, 0)), consumer)
    assert consumer.commits == [{T1: 1}]


def _positions(consumer: FakeConsumer) -> dict[TopicPartition, int]:
    positions: dict[TopicPartition, int] = {}
    for tp, offset in consumer.seeks:
        positions[tp] = offset
    return positions


class LogConsumer:
    """A consumer of a fixed log per partition: fetches from its positions, seeks, commits."""

    def __init__(self, lengths: Sequence[int]) -> None:
        self.lengths = {TopicPartition("t", p): n for p, n in enumerate(lengths)}
        self.position = dict.fromkeys(self.lengths, 0)
        self.committed = dict.fromkeys(self.lengths, 0)
        self.durable: set[tuple[TopicPartition, int]] = set()

    def assignment(self) -> set[TopicPartition]:
        return set(self.lengths)

    def fetch(self, per_partition: int) -> tuple[Rec, ...]:
        records = []
        for tp, end in self.lengths.items():
            upto = min(end, self.position[tp] + per_partition)
            records += [
                Rec("t", None, partition=tp.partition, offset=o)
                for o in range(self.position[tp], upto)
            ]
            self.position[tp] = upto
        return tuple(records)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.position[tp] = offset

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        for tp, offset in offsets.items():
            missing = [o for o in range(offset) if (tp, o) not in self.durable]
            assert not missing, f"commit of {tp} at {offset} passes unapplied offsets {missing}"
            self.committed[tp] = offset

    def done(self) -> bool:
        return self.committed == self.lengths


class FlakyWriter:
    """Applies a batch atomically after a drawn delay, or fails it (nothing applied).

    The delay is a number of turns of the event loop, not time: the interleaving then depends
    on the draws alone, as Hypothesis needs to replay and shrink an example."""

    def __init__(self, consumer: LogConsumer, draws: st.DataObject, depth: int) -> None:
        self.consumer, self.draws, self.depth = consumer, draws, depth
        self.running = self.most_at_once = 0
        self.failures = 0

    async def parse_interleaved(self, records: Any) -> ParsedBatch:
        return ParsedBatch(records, 0.0)

    async def apply(self, batch: ParsedBatch) -> None:
        turns = self.draws.draw(st.sampled_from([0, 0, 1, 3]), label="delay")
        fails = self.failures < 6 and self.draws.draw(st.integers(0, 4), label="fail") == 0
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            for _ in range(turns):
                await asyncio.sleep(0)
        finally:
            self.running -= 1
        if fails:
            self.failures += 1
            raise RuntimeError("transaction failed")
        for r in batch.records:
            self.consumer.durable.add((TopicPartition(r.topic, r.partition), r.offset))


@settings(max_examples=150, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 12), min_size=1, max_size=3),
    depth=st.integers(1, 3),
    data=st.data(),
)
async def test_committed_offsets_never_pass_a_record_not_yet_durable(
    lengths: list[int], depth: int, data: st.DataObject
) -> None:
    """Any batch sizes, any transaction failing, any finishing order: every commit covers
    durable records only (``LogConsumer.commit`` checks), and everything ends committed."""
    consumer = LogConsumer(lengths)
    writer = FlakyWriter(consumer, data, depth)
    p = BatchPipeline(writer, writer, ConsumerMetrics(CollectorRegistry()), in_flight=depth)
    for _ in range(500):
        records = consumer.fetch(data.draw(st.integers(1, 4), label="batch"))
        if not records:
            await p.drain()
            p.resume()
            if consumer.done():
                break
            continue
        await p.submit(records, consumer)
    assert consumer.done(), (consumer.committed, consumer.lengths)
    assert writer.most_at_once <= depth


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

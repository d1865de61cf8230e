"""The per-partition stall clock and lag: pure bookkeeping, the refresh against a fake
consumer, and what the pipeline reports as not yet applied."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry

from referral_consumer.metrics import ConsumerMetrics
from referral_consumer.parser import ParsedBatch
from referral_consumer.pipeline import BatchPipeline
from referral_consumer.progress import PartitionProgress, Progress, forget, refresh
from tests.unit.records import Rec

P0, P1 = TopicPartition("t", 0), TopicPartition("t", 1)


def test_a_partition_that_keeps_applying_stays_near_zero_however_large_its_lag() -> None:
    progress = PartitionProgress()
    progress.assign([P0], now=0.0)
    applied = 0
    assert progress.observe(P0, highwater=10_000, applied=0, now=0.0) == Progress(10_000, 0.0)
    for second in range(1, 30):
        applied += 100  # a batch commits every second, 10,000 messages behind
        assert progress.observe(P0, highwater=applied + 10_000, applied=applied, now=second) == (
            Progress(10_000, 0.0)
        )


def test_a_stuck_partition_grows_by_the_second_at_any_lag() -> None:
    progress = PartitionProgress()
    progress.assign([P0], now=100.0)
    assert progress.observe(P0, highwater=5, applied=5, now=101.0) == Progress(0, 0.0)
    # One message arrives and is never applied: the clock runs from the last instant
    # the partition had nothing waiting, not from the last commit long ago.
    assert progress.observe(P0, highwater=6, applied=5, now=102.0) == Progress(1, 1.0)
    assert progress.observe(P0, highwater=6, applied=5, now=160.0) == Progress(1, 59.0)
    # Moving on restarts it, even with messages still waiting.
    assert progress.observe(P0, highwater=9, applied=6, now=161.0) == Progress(3, 0.0)
    assert progress.observe(P0, highwater=9, applied=6, now=171.0) == Progress(3, 10.0)


def test_the_clock_starts_at_assignment_and_a_rewind_does_not_restart_it() -> None:
    progress = PartitionProgress()
    progress.assign([P0, P1], now=10.0)
    # First seen with a backlog: waiting since this member got the partition.
    assert progress.observe(P0, highwater=50, applied=20, now=15.0) == Progress(30, 5.0)
    # A failed batch is sought back: going backwards is no progress.
    assert progress.observe(P0, highwater=50, applied=18, now=16.0) == Progress(32, 6.0)
    assert progress.observe(P0, highwater=50, applied=20, now=17.0) == Progress(30, 7.0)
    # Assigned again (after a rebalance): a new owner counts from its assignment.
    progress.assign([P0], now=30.0)
    assert progress.observe(P0, highwater=50, applied=20, now=31.0) == Progress(30, 1.0)


@dataclass
class FakeConsumer:
    """What refresh reads of an aiokafka consumer."""

    highwaters: dict[TopicPartition, int | None]
    positions: dict[TopicPartition, int]
    revoke_while_positioned: set[TopicPartition] = field(default_factory=set)

    def assignment(self) -> set[TopicPartition]:
        return set(self.highwaters)

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.highwaters[tp]

    async def position(self, tp: TopicPartition) -> int:
        await asyncio.sleep(0)
        if tp in self.revoke_while_positioned:
            del self.highwaters[tp]  # a rebalance took it meanwhile
        return self.positions[tp]


def _gauges(metrics: ConsumerMetrics) -> dict[tuple[str, str, str], float]:
    return {
        (sample.name, sample.labels["topic"], sample.labels["partition"]): sample.value
        for gauge in (metrics.lag, metrics.partition_stalled)
        for family in gauge.collect()
        for sample in family.samples
    }


async def test_refresh_reads_the_batch_in_flight_before_the_position() -> None:
    metrics, progress = ConsumerMetrics(CollectorRegistry()), PartitionProgress()
    consumer = FakeConsumer({P0: 10, P1: 7}, {P0: 10, P1: 7})
    clock = iter([0.0, 0.0, 4.0, 4.0]).__next__
    # P0's batch from offset 6 is being written: its records count as not applied,
    # although the consumer's position is already past them.
    await refresh(consumer, progress, {P0: 6}, metrics, clock)
    await refresh(consumer, progress, {P0: 6}, metrics, clock)
    assert _gauges(metrics) == {
        ("referrals_consumer_lag", "t", "0"): 4,
        ("referrals_consumer_lag", "t", "1"): 0,
        ("referrals_consumer_partition_stalled_seconds", "t", "0"): 4.0,
        ("referrals_consumer_partition_stalled_seconds", "t", "1"): 0.0,
    }


async def test_refresh_skips_unfetched_and_revoked_partitions_and_forget_drops_labels() -> None:
    metrics, progress = ConsumerMetrics(CollectorRegistry()), PartitionProgress()
    consumer = FakeConsumer({P0: None, P1: 3}, {P0: 0, P1: 1}, revoke_while_positioned={P1})
    await refresh(consumer, progress, {}, metrics, lambda: 0.0)
    assert _gauges(metrics) == {}, "no high watermark yet, and revoked before it was set"

    consumer = FakeConsumer({P0: 5, P1: 3}, {P0: 5, P1: 1})
    await refresh(consumer, progress, {}, metrics, lambda: 0.0)
    assert len(_gauges(metrics)) == 4
    forget([P1], progress, metrics)
    assert set(_gauges(metrics)) == {
        ("referrals_consumer_lag", "t", "0"),
        ("referrals_consumer_partition_stalled_seconds", "t", "0"),
    }


class GatedWriter:
    """Parser and writer: each write waits for the gate; fails if asked to."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.fail = False

    async def parse_interleaved(self, records: Any) -> ParsedBatch:
        return ParsedBatch(records, 0.0)

    async def apply(self, batch: ParsedBatch) -> None:
        await self.gate.wait()
        if self.fail:
            raise RuntimeError("boom")


class NullConsumer:
    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        return None

    def assignment(self) -> set[TopicPartition]:
        return {P0, P1}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        return None


@pytest.mark.parametrize("fails", [False, True])
async def test_the_pipeline_reports_what_it_holds_until_it_is_committed(fails: bool) -> None:
    writer = GatedWriter()
    writer.fail = fails
    pipeline = BatchPipeline(writer, writer, ConsumerMetrics(CollectorRegistry()), overlap=True)
    records = (Rec("t", None, partition=0, offset=7), Rec("t", None, partition=1, offset=3))
    await pipeline.submit(records, NullConsumer())
    assert pipeline.unapplied_from() == {P0: 7, P1: 3}
    writer.gate.set()
    for _ in range(10):
        await asyncio.sleep(0)
    # Nobody settles the batch until the next one arrives (an idle topic): a committed
    # one no longer counts, a failed one counts until it is rewound and redone.
    assert pipeline.unapplied_from() == ({P0: 7, P1: 3} if fails else {})
    await pipeline.drain()
    assert pipeline.unapplied_from() == {}


async def test_refresh_drops_the_partitions_the_consumer_no_longer_owns() -> None:
    metrics, progress = ConsumerMetrics(CollectorRegistry()), PartitionProgress()
    await refresh(FakeConsumer({P0: 5, P1: 3}, {P0: 5, P1: 1}), progress, {}, metrics, lambda: 0.0)
    # A rebalance can show the old assignment again after the revocation callback: the
    # next refresh with the new one forgets what this member lost.
    await refresh(FakeConsumer({P0: 6}, {P0: 5}), progress, {}, metrics, lambda: 1.0)
    assert _gauges(metrics) == {
        ("referrals_consumer_lag", "t", "0"): 1,
        ("referrals_consumer_partition_stalled_seconds", "t", "0"): 1.0,
    }
    assert progress.known() == {P0}

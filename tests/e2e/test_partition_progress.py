"""Lag you can see per partition, on the real broker and the real Postgres: a partition
whose batch cannot be applied shows unapplied messages and a stall time that grows
while nothing else happens, and a member exports only the partitions it owns."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import asyncpg

from referral_consumer.app import ConsumerService
from referral_devtools import synthetic as bill
from referral_runtime.settings import Settings
from tests.conftest import wait_for
from tests.e2e.harness import inbox_reaches, producer, running_consumer

T0 = datetime(2027, 1, 4, 17, 0, tzinfo=UTC)


def _gauge(service: ConsumerService, name: str, topic: str, partition: int) -> float | None:
    return service.registry.get_sample_value(name, {"topic": topic, "partition": str(partition)})


def _stalled(service: ConsumerService, topic: str, partition: int) -> float | None:
    return _gauge(service, "referrals_consumer_partition_stalled_seconds", topic, partition)


def _lag(service: ConsumerService, topic: str, partition: int) -> float | None:
    return _gauge(service, "referrals_consumer_lag", topic, partition)


async def test_a_partition_that_stops_being_applied_shows_a_growing_stall(
    settings: Settings, db: asyncpg.Connection
) -> None:
    paid_topic = settings.topics.invoice_paid
    async with running_consumer(settings) as service, producer(settings) as p:
        await bill.publish(
            p, settings.topics, [bill.subscription_created("stuck", "s-1", "chat", T0)]
        )
        await inbox_reaches(db, 1)

        # Hold the account's row: the next batch that writes a fact of it waits on the lock.
        blocker = await asyncpg.connect(settings.database_url)
        try:
            holding = blocker.transaction()
            await holding.start()
            await blocker.execute("select 1 from accounts where account_id = 'stuck' for update")
            invoice = bill.invoice_paid("stuck", "s-1", "i-1", 29900, T0)
            sent = await (await p.send(paid_topic, json.dumps(invoice).encode(), key=b"stuck"))
            stuck = sent.partition
            idle = next(n for n in range(4) if n != stuck)

            first = await wait_for(
                lambda: (v := _stalled(service, paid_topic, stuck)) is not None and v >= 2 and v,
                timeout=30,
            )
            # Nothing is applied and no batch arrives, yet the value keeps growing.
            await wait_for(
                lambda: (_stalled(service, paid_topic, stuck) or 0) >= first + 2, timeout=30
            )
            assert _lag(service, paid_topic, stuck) == 1, "the message in flight is not applied"
            assert _stalled(service, paid_topic, idle) == 0 and _lag(service, paid_topic, idle) == 0
            assert await db.fetchval("select count(*) from inbox") == 1
        finally:
            await blocker.close()  # rolls back: the batch commits

        await inbox_reaches(db, 2)
        await wait_for(
            lambda: (
                _stalled(service, paid_topic, stuck) == 0 and _lag(service, paid_topic, stuck) == 0
            ),
            timeout=30,
        )


def _exported(service: ConsumerService) -> set[tuple[str, int]]:
    return {
        (sample.labels["topic"], int(sample.labels["partition"]))
        for family in service.metrics.partition_stalled.collect()
        for sample in family.samples
    }


def _owned(service: ConsumerService) -> set[tuple[str, int]]:
    consumer = service.subscriber.consumer
    assert consumer is not None
    return {(tp.topic, tp.partition) for tp in consumer.assignment()}


async def test_a_member_exports_only_the_partitions_it_owns(settings: Settings) -> None:
    everything = {(topic, n) for topic in settings.topics.billing for n in range(4)}
    async with running_consumer(settings) as first, producer(settings) as p:
        await bill.publish(
            p, settings.topics, [bill.subscription_created("a-1", "s-1", "chat", T0)]
        )
        await wait_for(lambda: _exported(first) == everything, timeout=30)
        async with running_consumer(settings) as second:
            # The group rebalances: each member keeps the label sets of its own partitions.
            await wait_for(
                lambda: (
                    _exported(first) == _owned(first)
                    and _exported(second) == _owned(second)
                    and _owned(first) | _owned(second) == everything
                    and not _owned(first) & _owned(second)
                    and bool(_owned(first))
                    and bool(_owned(second))
                ),
                timeout=60,
            )

"""The outbox is never blocked by one message: a row refused for good is set aside.

Real broker and Postgres. The poison is what the consumer really writes: the
dead-letter copy of a 2 MiB billing message (larger than the producer's request
limit), followed in the shared outbox by the ``payout.due`` messages of a real tick.
"""

from __future__ import annotations

import asyncio
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry

from referral_devtools import devstack
from referral_devtools import synthetic as bill
from referral_runtime.db import create_pool
from referral_runtime.outbox import OutboxMessage, OutboxMetrics, OutboxRelay, enqueue
from referral_runtime.settings import Settings
from tests.conftest import TEST_STACK, wait_for
from tests.e2e.harness import (
    active_code,
    broker_behind_proxy,
    inbox_reaches,
    read_topic,
    run_referrals,
    running_consumer,
    spawn,
)

VR = "virtual_receptionist"
TWO_MIB = 2 * 1024 * 1024


def _oversized_event() -> bytes:
    """A subscription.created padded past 2 MiB: the consumer dead-letters it (oversized)."""
    event = bill.subscription_created("big", "big-s", VR, datetime(2027, 1, 8, tzinfo=UTC))
    event["data"]["padding"] = "x" * TWO_MIB
    return json.dumps(event).encode()


async def test_a_dead_letter_too_large_to_publish_is_set_aside_and_payouts_go_out(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    big = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers, acks="all", max_request_size=4 * TWO_MIB
    )
    await big.start()
    try:
        async with running_consumer(settings) as consumer:
            await big.send_and_wait(
                settings.topics.subscription_created, _oversized_event(), key=b"big"
            )
            referrer = bill.subscription_created(
                "ref-a", "ref-a-s", VR, datetime(2027, 1, 5, 17, tzinfo=UTC)
            )
            await bill.publish(big, settings.topics, [referrer])
            await inbox_reaches(db, 1)
            code = await active_code(db, "ref-a")
            referees = []
            for account in ("vr-1", "vr-2"):
                referees += [
                    bill.subscription_created(
                        account, f"{account}-s", VR, datetime(2027, 1, 8, tzinfo=UTC), code=code
                    ),
                    bill.invoice_paid(
                        account,
                        f"{account}-s",
                        f"{account}-i1",
                        19900,
                        datetime(2027, 1, 9, 18, tzinfo=UTC),
                    ),
                ]
            await bill.publish(big, settings.topics, referees)
            await inbox_reaches(db, 1 + len(referees))
            poison = await db.fetchrow(
                "select id, octet_length(payload) as size from outbox where topic = $1",
                settings.topics.dlq,
            )
            assert poison is not None and poison["size"] > TWO_MIB
            assert await db.fetchval("select reason from dead_letters") == "oversized"

            log = tmp_path / "tick.log"
            tick = spawn(
                ["payout-scheduler", "tick", "--as-of", "2027-04-02", "--allow-future"],
                settings,
                log,
            )
            assert await asyncio.to_thread(tick.wait, 90) == 0, log.read_text()
            received = await read_topic(settings, settings.topics.payout_due, expect=2)
            assert sorted(m.json()["data"]["referee_account_id"] for m in received) == [
                "vr-1",
                "vr-2",
            ]

            # The consumer's relay (the same table) reports the row set aside.
            def reported() -> bool:
                gauge = consumer.registry.get_sample_value(
                    "referrals_outbox_set_aside_rows", {"topic": settings.topics.dlq}
                )
                return gauge == 1

            await wait_for(reported, timeout=15)

            # Support sees it, with where the original is, and dismisses it.
            listed = await asyncio.to_thread(run_referrals, settings, "outbox", "set-aside")
            assert listed.returncode == 0, listed.stderr
            assert f"  {poison['id']}: {settings.topics.dlq}, {poison['size']:,} bytes" in (
                listed.stdout
            ), listed.stdout
            assert f"dead letter of {settings.topics.subscription_created} partition" in (
                listed.stdout
            )
            dismissed = await asyncio.to_thread(
                run_referrals,
                settings,
                "outbox",
                "dismiss",
                str(poison["id"]),
                "--note",
                "oversized sign-up, raised with billing",
                "--actor",
                "sre-carol",
            )
            assert dismissed.returncode == 0, dismissed.stderr

            def cleared() -> bool:
                gauge = consumer.registry.get_sample_value(
                    "referrals_outbox_set_aside_rows", {"topic": settings.topics.dlq}
                )
                return gauge is None

            await wait_for(cleared, timeout=15)
    finally:
        await big.stop()

    row = await db.fetchrow("select * from outbox where id = $1", poison["id"])
    assert row["published_at"] is None and row["set_aside_at"] is not None
    assert row["dismissed_at"] is not None
    assert (
        await db.fetchval(
            "select actor from audit_log where action = 'outbox.dismiss' and subject = $1",
            str(poison["id"]),
        )
        == "sre-carol"
    )
    assert row["set_aside_reason"].startswith("too_large: "), row
    assert "MessageSizeTooLargeError" in row["set_aside_reason"], row
    assert len(row["payload"]) == poison["size"]  # kept whole, never deleted
    # Everything else went out: codes announced, payouts published.
    assert (
        await db.fetchval(
            "select count(*) from outbox where published_at is null and set_aside_at is null"
        )
        == 0
    )
    assert await db.fetchval("select count(*) from outbox where set_aside_at is not null") == 1


def _payload(n: int) -> bytes:
    return json.dumps({"event_type": "payout.due", "n": n}).encode()


async def test_the_relay_sets_aside_only_what_is_refused_for_good(
    settings: Settings, db: asyncpg.Connection
) -> None:
    topic = settings.topics.payout_due
    await enqueue(
        db,
        [
            OutboxMessage(topic, b"k", _payload(0)),
            OutboxMessage(settings.topics.dlq, b"k", b"y" * TWO_MIB, {"dlq.reason": "oversized"}),
            *(OutboxMessage(topic, b"k", _payload(n)) for n in range(1, 6)),
        ],
    )
    metrics = OutboxMetrics(CollectorRegistry())
    pool = await create_pool(settings.database_url, size=2)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
    await producer.start()
    try:
        # Batches of 2: the poison shares a batch with a good row, which still goes out.
        relay = OutboxRelay(pool, producer, metrics, batch=2)
        assert await relay.drain() == 6
    finally:
        await producer.stop()
        await pool.close()
    received = await read_topic(settings, topic, expect=6)
    assert sorted(json.loads(m.value)["n"] for m in received) == list(range(6))
    assert await read_topic(settings, settings.topics.dlq, expect=0, timeout=2) == []

    def sample(name: str, **labels: str) -> float | None:
        return _value(metrics, name, labels)

    assert (
        sample("referrals_outbox_set_aside_total", topic=settings.topics.dlq, reason="too_large")
        == 1
    )
    assert sample("referrals_outbox_set_aside_rows", topic=settings.topics.dlq) == 1
    assert sample("referrals_outbox_published_total", topic=topic) == 6
    assert sample("referrals_outbox_backlog") == 0
    assert sample("referrals_outbox_publish_failures_total", topic=settings.topics.dlq) is None
    poison = await db.fetchrow(
        "select id, set_aside_reason from outbox where set_aside_at is not null"
    )
    assert poison["set_aside_reason"].startswith(
        "too_large: [Error 10] MessageSizeTooLargeError: The message is"
    )

    # Its cause fixed (here: a producer that takes larger requests), support puts it back.
    assert (
        await asyncio.to_thread(
            run_referrals, settings, "outbox", "retry", "999999", "--actor", "sre-carol"
        )
    ).returncode == 2
    retried = await asyncio.to_thread(
        run_referrals, settings, "outbox", "retry", str(poison["id"]), "--actor", "sre-carol"
    )
    assert retried.returncode == 0, retried.stderr
    pool = await create_pool(settings.database_url, size=2)
    larger = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers, acks="all", max_request_size=2 * TWO_MIB
    )
    await larger.start()
    try:
        assert await OutboxRelay(pool, larger, OutboxMetrics(CollectorRegistry())).drain() == 1
    finally:
        await larger.stop()
        await pool.close()
    copy = await read_topic(settings, settings.topics.dlq, expect=1)
    assert [len(m.value) for m in copy] == [TWO_MIB]
    assert await db.fetchval("select count(*) from outbox where published_at is null") == 0


def _value(metrics: OutboxMetrics, name: str, labels: dict[str, str]) -> float | None:
    for collector in (
        metrics.set_aside,
        metrics.set_aside_rows,
        metrics.published,
        metrics.backlog,
        metrics.failures,
    ):
        for family in collector.collect():
            for s in family.samples:
                if s.name == name and s.labels == labels:
                    return float(s.value)
    return None


async def test_a_broker_outage_sets_nothing_aside_and_the_rows_go_out_when_it_returns(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    if TEST_STACK != "embedded":
        pytest.skip("the fault proxy needs a broker that advertises the proxy's port")
    async with broker_behind_proxy(tmp_path) as (proxy, bootstrap):
        topic = f"t{os.urandom(3).hex()}.referrals.payout.due"
        await devstack.create_topics(bootstrap, [topic], partitions=2)
        await enqueue(db, [OutboxMessage(topic, b"k", _payload(n)) for n in range(5)])
        metrics = OutboxMetrics(CollectorRegistry())
        pool = await create_pool(settings.database_url, size=2)
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", request_timeout_ms=2000
        )
        await producer.start()
        try:
            relay = OutboxRelay(pool, producer, metrics, batch=10)
            proxy.cut()
            failed = 0
            for _ in range(2):
                try:
                    await relay.publish_pending()
                except KafkaError:
                    failed += 1
            assert failed == 2
            assert (
                await db.fetchval("select count(*) from outbox where set_aside_at is not null") == 0
            )
            assert (
                await db.fetchval("select count(*) from outbox where published_at is not null") == 0
            )
            assert (
                _value(metrics, "referrals_outbox_publish_failures_total", {"topic": topic}) or 0
            ) > 0
            proxy.heal()

            async def drained() -> bool:
                try:
                    return (
                        await relay.drain() >= 0
                        and await db.fetchval(
                            "select count(*) from outbox where published_at is null"
                        )
                        == 0
                    )
                except KafkaError:
                    return False

            await wait_for(drained, timeout=60, interval=0.5)
        finally:
            await producer.stop()
            await pool.close()
        received = await read_topic(
            settings.model_copy(update={"kafka_bootstrap_servers": bootstrap}), topic, expect=5
        )
    assert sorted(json.loads(m.value)["n"] for m in received) == list(range(5))
    assert (
        _value(metrics, "referrals_outbox_set_aside_total", {"topic": topic, "reason": "too_large"})
        is None
    )

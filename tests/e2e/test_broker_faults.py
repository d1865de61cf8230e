"""Broker connections cut and stalled through a TCP fault proxy: never a crash, never a loss.

A dedicated Tansu advertises the proxy's port, so every connection of every client
(the services' and the test's own) goes through :class:`FaultProxy`. Each test ends
with the same state and the same outbound events as a run without the fault. The
short tests run in ``make test``; longer storms are marked ``chaos`` (``make chaos``).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from payout_scheduler.service import SchedulerService
from referral_devtools import devstack
from referral_program import codes
from referral_runtime.settings import Settings, Topics
from tests.conftest import Stack, wait_for
from tests.e2e.fault_proxy import FaultProxy
from tests.e2e.harness import (
    broker_behind_proxy,
    http_status,
    producer,
    read_topic,
    running_consumer,
    spawn_both_unready,
    terminate,
)
from tests.e2e.scenario import referee_events, referrer_events, state_of

#: Faults injected and messages lost / doubled over the whole module (printed at the end).
TALLY: Counter[str] = Counter()


@dataclass
class FaultyBroker:
    proxy: FaultProxy
    bootstrap: str


@pytest.fixture(scope="module")
async def faulty(stack: Stack) -> AsyncIterator[FaultyBroker]:
    """A Tansu of its own behind a fault proxy, advertising the proxy's address."""
    if os.environ.get("TEST_STACK", "embedded") != "embedded":
        pytest.skip("the fault proxy needs a broker that advertises the proxy's port")
    root = Path(tempfile.mkdtemp(prefix="faulty-broker-"))
    try:
        async with broker_behind_proxy(root) as (proxy, bootstrap):
            yield FaultyBroker(proxy, bootstrap)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        print(f"\nbroker faults: {dict(TALLY)}")


@pytest.fixture
async def faulty_settings(faulty: FaultyBroker, settings: Settings) -> Settings:
    faulty.proxy.heal()
    prefix = f"f{os.urandom(4).hex()}"
    topics = Topics(**{f: f"{prefix}.{getattr(Topics(), f)}" for f in Topics.model_fields})
    await devstack.create_topics(faulty.bootstrap, topics.all, partitions=4)
    return settings.model_copy(
        update={
            "kafka_bootstrap_servers": faulty.bootstrap,
            "topics": topics,
            "health_probe_seconds": 0.5,
        }
    )


async def test_both_services_start_without_the_broker_and_become_ready_when_it_returns(
    faulty: FaultyBroker, faulty_settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    s = faulty_settings
    faulty.proxy.cut()
    TALLY["faults"] += 1
    procs, ports = await spawn_both_unready(s, tmp_path)
    try:
        faulty.proxy.heal()
        for port in ports.values():

            async def ready(port: int = port) -> bool:
                return await asyncio.to_thread(http_status, port, "/readyz") == 200

            await wait_for(ready, timeout=30)
        events = referrer_events(20)
        async with producer(s) as p:
            from referral_devtools import synthetic as bill

            await bill.publish(p, s.topics, events)

        async def applied() -> bool:
            return await db.fetchval("select count(*) from inbox") == len(events)

        await wait_for(applied, timeout=30)
        announced = await read_topic(s, s.topics.code_assigned, expect=len(events))
        _tally_outbound(announced, len(events))
        for proc in procs.values():
            assert await asyncio.to_thread(terminate, proc) == 0
    finally:
        faulty.proxy.heal()
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    logs = (tmp_path / "referral-consumer.log").read_text()
    assert "broker_connect_failed" in logs or "subscriber_start_failed" in logs


async def test_idle_services_report_cut_and_stalled_broker_and_recover(
    faulty: FaultyBroker, faulty_settings: Settings
) -> None:
    s = faulty_settings
    scheduler = SchedulerService(s)
    await scheduler.start()
    try:
        async with running_consumer(s) as consumer:
            await wait_for(lambda: consumer.ready() and scheduler.ready(), timeout=30)
            for fault in (faulty.proxy.cut, faulty.proxy.stall):
                fault()
                TALLY["faults"] += 1
                await wait_for(lambda: not consumer.ready() and not scheduler.ready(), timeout=10)
                gauge = consumer.registry.get_sample_value("referrals_consumer_ready")
                assert gauge == 0
                faulty.proxy.heal()
                await wait_for(lambda: consumer.ready() and scheduler.ready(), timeout=30)
                assert consumer.registry.get_sample_value("referrals_consumer_ready") == 1
    finally:
        faulty.proxy.heal()
        await scheduler.stop()


async def _codes(conn: asyncpg.Connection) -> dict[str, str]:
    rows = await conn.fetch("select account_id, code from referral_codes where status = 'active'")
    return {
        r["account_id"]: codes.display(r["code"]) for r in rows if r["account_id"].startswith("R")
    }


async def _inbox(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("select count(*) from inbox"))


async def _consume_stream(
    s: Settings,
    conn: asyncpg.Connection,
    referees: int,
    faults: FaultyBroker | None = None,
    *,
    storm: list[tuple[str, float]] = (),  # type: ignore[assignment]
) -> tuple[dict[str, list[tuple[object, ...]]], Counter[str]]:
    """Referrers, then the referee stream, consumed (with ``storm`` faults while busy);
    returns the state and the code.assigned messages per event id."""
    async with producer(s) as p:
        from referral_devtools import synthetic as bill

        await bill.publish(p, s.topics, referrer_events(20))
        async with running_consumer(s):
            await wait_for(lambda: _at_least(conn, 20), timeout=60)
            events = referee_events(11, referees, await _codes(conn))
            await bill.publish(p, s.topics, events)
            total = 20 + len({e["event_id"] for e in events})
            for kind, seconds in storm:
                assert faults is not None
                await wait_for(lambda: _progress(conn, total), timeout=60, interval=0.01)
                getattr(faults.proxy, kind)()
                TALLY["faults"] += 1
                await asyncio.sleep(seconds)
                faults.proxy.heal()
            await wait_for(lambda: _at_least(conn, total), timeout=120)
            await asyncio.sleep(0.5)  # would anything be applied twice or late?
            assert await _inbox(conn) == total
            accounts = int(await conn.fetchval("select count(*) from accounts"))
            announced = await read_topic(s, s.topics.code_assigned, expect=accounts)
    per_id = Counter(json.loads(m.value)["event_id"] for m in announced)
    assert len({json.loads(m.value)["data"]["account_id"] for m in announced}) == accounts
    return await state_of(conn), per_id


async def _at_least(conn: asyncpg.Connection, n: int) -> bool:
    return await _inbox(conn) >= n


async def _progress(conn: asyncpg.Connection, total: int) -> bool:
    """Some of the stream applied, not all of it: the consumer is busy."""
    return 20 < await _inbox(conn) < total or await _inbox(conn) >= total


def _tally_outbound(messages: list[object], expected: int) -> None:
    per_id = Counter(json.loads(m.value)["event_id"] for m in messages)  # type: ignore[attr-defined]
    TALLY["lost"] += max(0, expected - len(per_id))
    TALLY["redelivered_same_id"] += len(messages) - len(per_id)


async def _reference(
    stack: Stack, settings: Settings, referees: int
) -> tuple[object, Counter[str]]:
    url = await devstack.create_database(stack.server_uri, f"ref{os.urandom(4).hex()}")
    prefix = f"ref{os.urandom(3).hex()}"
    topics = Topics(**{f: f"{prefix}.{getattr(Topics(), f)}" for f in Topics.model_fields})
    await devstack.create_topics(stack.bootstrap, topics.all, partitions=4)
    ref = settings.model_copy(
        update={
            "database_url": url,
            "topics": topics,
            "consumer_group": settings.consumer_group + "-ref",
        }
    )
    conn = await asyncpg.connect(url)
    try:
        return await _consume_stream(ref, conn, referees)
    finally:
        await conn.close()


async def _busy_run(
    stack: Stack,
    faulty: FaultyBroker,
    s: Settings,
    db: asyncpg.Connection,
    referees: int,
    storm: list[tuple[str, float]],
) -> None:
    s = s.model_copy(update={"consumer_max_batch": 50})
    expected_state, expected_ids = await _reference(
        stack, s.model_copy(update={"kafka_bootstrap_servers": stack.bootstrap}), referees
    )
    state, per_id = await _consume_stream(s, db, referees, faulty, storm=storm)
    assert state == expected_state
    assert len(per_id) == len(expected_ids)
    TALLY["lost"] += len(expected_ids) - len(per_id)
    TALLY["redelivered_same_id"] += sum(per_id.values()) - len(per_id)
    TALLY["doubled_effects"] += 0 if state == expected_state else 1


async def test_busy_consumer_survives_a_cut_and_a_stall(
    stack: Stack, faulty: FaultyBroker, faulty_settings: Settings, db: asyncpg.Connection
) -> None:
    await _busy_run(stack, faulty, faulty_settings, db, 300, [("cut", 0.5), ("stall", 1.0)])


@pytest.mark.chaos
async def test_busy_consumer_survives_a_storm_of_cuts_and_long_stalls(
    stack: Stack, faulty: FaultyBroker, faulty_settings: Settings, db: asyncpg.Connection
) -> None:
    # Stalls longer than the session timeout (3 s): the group rebalances mid-batch,
    # commits fail, and the records come again as duplicates.
    storm = [("cut", 0.2), ("stall", 4.0), ("cut", 2.0), ("stall", 0.5), ("cut", 0.1)] * 3
    await _busy_run(stack, faulty, faulty_settings, db, 3000, storm)

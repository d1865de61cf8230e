"""SIGKILL in the middle of a stream loses nothing and doubles nothing."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from collections import Counter
from pathlib import Path

import asyncpg

from referral_devtools import devstack
from referral_devtools import synthetic as bill
from referral_program import codes
from referral_runtime.db import connect
from referral_runtime.settings import Settings
from tests.conftest import Stack, wait_for
from tests.e2e.harness import producer, read_topic, running_consumer, spawn, terminate
from tests.e2e.scenario import referee_events, referrer_events, state_of

REFERRERS = 50
REFEREES = 4000  # ~ 20k events


async def _codes(conn: asyncpg.Connection) -> dict[str, str]:
    rows = await conn.fetch("select account_id, code from referral_codes where status = 'active'")
    return {
        r["account_id"]: codes.display(r["code"]) for r in rows if r["account_id"].startswith("R")
    }


async def _inbox(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("select count(*) from inbox"))


async def _published_stream(settings: Settings, conn: asyncpg.Connection) -> int:
    """Referrers first (to learn their codes), then the referee stream; returns the event count."""
    async with producer(settings) as p:
        await bill.publish(p, settings.topics, referrer_events(REFERRERS))
        async with running_consumer(settings):
            await wait_for(_at_least(conn, REFERRERS), timeout=60)
        events = referee_events(7, REFEREES, await _codes(conn))
        await bill.publish(p, settings.topics, events)
    return REFERRERS + len({e["event_id"] for e in events})


def _at_least(conn: asyncpg.Connection, n: int):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        return await _inbox(conn) >= n

    return check


async def test_sigkill_mid_stream_matches_a_clean_run(
    stack: Stack, settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    # Reference: the same logical events, consumed without interruption, in its own database
    # and topics.
    ref_url = await devstack.create_database(stack.server_uri, f"ref{uuid.uuid4().hex[:8]}")
    ref_topics = settings.topics.model_copy(
        update={f: f"ref-{getattr(settings.topics, f)}" for f in type(settings.topics).model_fields}
    )
    await devstack.create_topics(stack.bootstrap, ref_topics.all, partitions=4)
    ref_settings = settings.model_copy(
        update={
            "database_url": ref_url,
            "topics": ref_topics,
            "consumer_group": settings.consumer_group + "-ref",
        }
    )
    ref_conn = await connect(ref_url)
    total = await _published_stream(ref_settings, ref_conn)
    async with running_consumer(ref_settings):
        await wait_for(_at_least(ref_conn, total), timeout=120)
    expected = await state_of(ref_conn)
    await ref_conn.close()

    # Crash run: referrers applied, then the stream is consumed by a real process that we kill.
    log = tmp_path / "consumer.log"
    total_crash = await _published_stream(settings, db)
    assert total_crash == total
    env = {"CONSUMER_MAX_BATCH": "300"}
    first = spawn(["referral-consumer"], settings, log, **env)
    await wait_for(_at_least(db, REFERRERS + total // 4), timeout=60, interval=0.01)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    applied_at_kill = await _inbox(db)
    assert applied_at_kill < total, "the kill must land mid-stream"

    second = spawn(["referral-consumer"], settings, log, **env)
    try:
        await wait_for(_at_least(db, total), timeout=120)
        await asyncio.sleep(1.0)  # would any event be applied twice or late?
        assert await _inbox(db) == total
        assert terminate(second) == 0
    finally:
        if second.poll() is None:
            second.kill()

    assert await state_of(db) == expected

    # Every account was announced; the relay is at least once, so a kill can repeat a
    # message, but always with the same event id.
    accounts = await db.fetchval("select count(*) from accounts")
    announced = await read_topic(settings, settings.topics.code_assigned, expect=accounts)
    per_id = Counter(json.loads(m.value)["event_id"] for m in announced)
    per_account = {json.loads(m.value)["data"]["account_id"] for m in announced}
    assert len(per_account) == accounts
    assert len(per_id) == accounts


async def test_sigterm_mid_stream_commits_the_batch_in_hand(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    """SIGTERM: the batch in hand is applied and its offsets committed, exit 0 within 10 s;
    the next process therefore sees no duplicate and loses nothing."""
    log = tmp_path / "consumer.log"
    total = await _published_stream(settings, db)
    env = {"CONSUMER_MAX_BATCH": "200"}
    first = spawn(["referral-consumer"], settings, log, **env)
    await wait_for(_at_least(db, REFERRERS + total // 4), timeout=60, interval=0.01)
    started = asyncio.get_running_loop().time()
    first.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(first.wait, 15)
    assert code == 0
    assert asyncio.get_running_loop().time() - started < 10
    assert await _inbox(db) < total, "the stop must land mid-stream"

    port = devstack.free_port()
    second = spawn(["referral-consumer"], settings, log, HTTP_PORT=str(port), **env)
    try:
        await wait_for(_at_least(db, total), timeout=120)
        metrics = await asyncio.to_thread(_metrics, port)
    finally:
        terminate(second)
    duplicates = [
        line for line in metrics.splitlines()
        if line.startswith("referrals_consumer_events_total") and 'outcome="duplicate"' in line
    ]  # fmt: skip
    assert all(line.endswith(" 0.0") for line in duplicates), duplicates
    assert 'outcome="applied"' in metrics, "the second process applied the rest"
    assert await _inbox(db) == total


def _metrics(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())

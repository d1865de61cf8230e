"""SIGKILL in the middle of a stream loses nothing and doubles nothing."""

from __future__ import annotations

import asyncio
import json
import signal
from collections import Counter
from pathlib import Path

import asyncpg

from referral_devtools import devstack
from referral_runtime.settings import Settings
from tests.conftest import Stack, wait_for
from tests.e2e.harness import read_topic, spawn, terminate
from tests.e2e.scenario import (
    REFERRERS,
    at_least,
    inbox_count,
    published_stream,
    reference_state,
    state_of,
)


async def test_sigkill_mid_stream_matches_a_clean_run(
    stack: Stack, settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    expected = await reference_state(stack, settings)

    # Crash run: referrers applied, then the stream is consumed by a real process that we kill.
    log = tmp_path / "consumer.log"
    total = await published_stream(settings, db)
    env = {"CONSUMER_MAX_BATCH": "300"}
    first = spawn(["referral-consumer"], settings, log, **env)
    await wait_for(at_least(db, REFERRERS + total // 4), timeout=60, interval=0.01)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    applied_at_kill = await inbox_count(db)
    assert applied_at_kill < total, "the kill must land mid-stream"

    second = spawn(["referral-consumer"], settings, log, **env)
    try:
        await wait_for(at_least(db, total), timeout=120)
        await asyncio.sleep(1.0)  # would any event be applied twice or late?
        assert await inbox_count(db) == total
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
    total = await published_stream(settings, db)
    env = {"CONSUMER_MAX_BATCH": "200"}
    first = spawn(["referral-consumer"], settings, log, **env)
    await wait_for(at_least(db, REFERRERS + total // 4), timeout=60, interval=0.01)
    started = asyncio.get_running_loop().time()
    first.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(first.wait, 15)
    assert code == 0
    assert asyncio.get_running_loop().time() - started < 10
    assert await inbox_count(db) < total, "the stop must land mid-stream"

    port = devstack.free_port()
    second = spawn(["referral-consumer"], settings, log, HTTP_PORT=str(port), **env)
    try:
        await wait_for(at_least(db, total), timeout=120)
        metrics = await asyncio.to_thread(_metrics, port)
    finally:
        terminate(second)
    duplicates = [
        line for line in metrics.splitlines()
        if line.startswith("referrals_consumer_events_total") and 'outcome="duplicate"' in line
    ]  # fmt: skip
    assert all(line.endswith(" 0.0") for line in duplicates), duplicates
    assert 'outcome="applied"' in metrics, "the second process applied the rest"
    assert await inbox_count(db) == total


def _metrics(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())

"""Three consumer replicas in one group, killed and replaced mid-stream, end as one replica does.

Partitions move between members at every join and every death; batches of
different members write at the same time (there is no global lock), so this
also checks that concurrent batches on related accounts never lose an update.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from collections import Counter
from pathlib import Path

import asyncpg

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

ENV = {"CONSUMER_MAX_BATCH": "250", "CONSUMER_SESSION_TIMEOUT_MS": "3000"}


async def test_three_replicas_with_kills_and_rebalances_match_one_replica(
    stack: Stack, settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    expected = await reference_state(stack, settings)
    total = await published_stream(settings, db)
    stream = total - REFERRERS

    def member(name: str) -> subprocess.Popen[bytes]:
        return spawn(["referral-consumer"], settings, tmp_path / f"{name}.log", **ENV)

    members = {name: member(name) for name in ("a", "b", "c")}
    kills = 0
    try:
        # A death and a join while the stream is consumed, then another death.
        await wait_for(at_least(db, REFERRERS + stream // 4), timeout=90, interval=0.01)
        members["b"].send_signal(signal.SIGKILL)
        kills += 1
        members["d"] = member("d")
        await wait_for(at_least(db, REFERRERS + stream // 2), timeout=90, interval=0.01)
        members["a"].send_signal(signal.SIGKILL)
        kills += 1
        assert await inbox_count(db) < total, "the kills must land mid-stream"

        await wait_for(at_least(db, total), timeout=180)
        await asyncio.sleep(1.0)  # would any event be applied twice or late?
        assert await inbox_count(db) == total
    finally:
        for proc in members.values():
            if proc.poll() is None:
                terminate(proc)
    assert kills == 2

    assert await state_of(db) == expected
    # Every account announced under one event id each, however often it was relayed.
    accounts = await db.fetchval("select count(*) from accounts")
    announced = await read_topic(settings, settings.topics.code_assigned, expect=accounts)
    per_id = Counter(json.loads(m.value)["event_id"] for m in announced)
    assert {json.loads(m.value)["data"]["account_id"] for m in announced} == set(
        r["account_id"] for r in await db.fetch("select account_id from accounts")
    )
    assert len(per_id) == accounts

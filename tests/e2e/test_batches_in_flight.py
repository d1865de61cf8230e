"""Two batch transactions in flight: offsets still committed in batch order, on the real stack.

The writer's port is wrapped so the first batch is held (a slow transaction) while the second
fails or succeeds at once; meanwhile the consumer group's committed offsets, as the broker
reports them, must not move at all: every record after the held batch's first ones waits for it.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from typing import Any

import asyncpg
import pytest

from referral_devtools import synthetic as bill
from referral_runtime.settings import Settings
from tests.conftest import wait_for
from tests.e2e.harness import committed_offsets, producer, read_topic, running_consumer
from tests.e2e.scenario import referrer_events

#: How long the first batch is held after the second one ended: the window in which a commit
#: out of order would show.
HELD_FOR = 1.5


@pytest.mark.parametrize("second", ["fails", "succeeds"])
async def test_no_offset_is_committed_past_a_batch_still_in_flight(
    settings: Settings, db: asyncpg.Connection, second: str
) -> None:
    s = settings.model_copy(update={"consumer_max_batch": 5, "consumer_transactions_in_flight": 2})
    topic = s.topics.subscription_created
    events = referrer_events(40)
    second_done = asyncio.Event()
    release_first = asyncio.Event()
    calls = itertools.count(1)

    async with running_consumer(s) as service:
        assert service.writer is not None
        real_apply = service.writer.apply

        async def apply(batch: Any) -> object:
            call = next(calls)
            if call == 1:
                await release_first.wait()  # a slow first transaction
            elif call == 2:
                try:
                    if second == "fails":
                        raise ConnectionResetError("the second batch's transaction failed")
                    return await real_apply(batch)
                finally:
                    second_done.set()
            return await real_apply(batch)

        service.writer.apply = apply
        async with producer(s) as p:
            await bill.publish(p, s.topics, events)

        await asyncio.wait_for(second_done.wait(), timeout=30)
        loop = asyncio.get_running_loop()
        window_ends = loop.time() + HELD_FOR
        while loop.time() < window_ends:
            committed = await committed_offsets(s, s.consumer_group, topic)
            assert committed == {}, f"offsets committed while the first batch is held: {committed}"
        release_first.set()

        async def all_applied() -> bool:
            return bool(await db.fetchval("select count(*) from inbox") == len(events))

        await wait_for(all_applied, timeout=60)

        async def all_committed() -> bool:
            # The topic is this test's: its partitions hold exactly these events from offset 0.
            return sum((await committed_offsets(s, s.consumer_group, topic)).values()) == len(
                events
            )

        await wait_for(all_committed, timeout=30)
        assert next(calls) > 3, "the scenario did not put two batches in flight"

    # As a fault-free run: every event applied once, one code announced per account.
    assert await db.fetchval("select count(distinct event_id) from inbox") == len(events)
    announced = await read_topic(s, s.topics.code_assigned, expect=len(events))
    per_account = Counter(m.json()["data"]["account_id"] for m in announced)
    assert per_account == Counter(e["data"]["account_id"] for e in events)

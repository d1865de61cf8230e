"""Bad input on the real broker: dead-lettered with reason and coordinates; neighbours applied."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import asyncpg
import pytest

from referral_devtools import synthetic as bill
from referral_runtime.settings import Settings
from tests.conftest import wait_for
from tests.e2e.harness import producer, read_topic, running_consumer

T = datetime(2027, 2, 1, 9, tzinfo=UTC)
GOOD = bill.invoice_paid("acct-1", "sub-1", "inv-template", 100, T)

BAD_INPUTS = {
    "unparseable": b"{not json",
    "invalid": json.dumps({**GOOD, "data": {**GOOD["data"], "amount_paid_cents": -1}}).encode(),
    "unsupported_schema_version": json.dumps({**GOOD, "schema_version": 9}).encode(),
    "event_type_mismatch": json.dumps({**GOOD, "event_type": "subscription.cancelled"}).encode(),
    "oversized": json.dumps({**GOOD, "padding": "x" * 70_000}).encode(),
}


@pytest.mark.parametrize("reason", sorted(BAD_INPUTS))
async def test_bad_message_goes_to_dlq_and_neighbours_apply(
    reason: str, settings: Settings, db: asyncpg.Connection
) -> None:
    topic = settings.topics.invoice_paid
    before = bill.invoice_paid("acct-1", "sub-1", "inv-before", 100, T)
    after = bill.invoice_paid("acct-1", "sub-1", "inv-after", 200, T)
    bad = BAD_INPUTS[reason]
    async with running_consumer(settings) as service, producer(settings) as p:
        # same key -> same partition: the bad message sits between the two good ones
        for value in (json.dumps(before).encode(), bad, json.dumps(after).encode()):
            await (await p.send(topic, value, key=b"acct-1", headers=[("trace", b"\xff\xfe")]))

        async def both_applied() -> bool:
            return await db.fetchval("select count(*) from invoices") == 2

        await wait_for(both_applied)
        dlq = await read_topic(settings, settings.topics.dlq, expect=1)
        metrics = service.metrics

    assert len(dlq) == 1
    message = dlq[0]
    assert message.value == bad, "the original bytes are kept"
    assert message.key == b"acct-1"
    assert message.headers["dlq.reason"] == reason
    assert message.headers["dlq.source.topic"] == topic
    assert message.headers["dlq.consumer_group"] == settings.consumer_group
    partition, offset = (
        int(message.headers["dlq.source.partition"]),
        int(message.headers["dlq.source.offset"]),
    )
    row = await db.fetchrow(
        'select reason from dead_letters where "partition" = $1 and "offset" = $2',
        partition,
        offset,
    )
    assert row["reason"] == reason
    # conservation: applied + duplicate + dead_lettered = consumed
    events = metrics.events
    applied = events.labels(topic, "invoice.paid", "applied")._value.get()
    dead = events.labels(topic, "invoice.paid", "dead_lettered")._value.get()
    assert (applied, dead) == (2, 1)


async def test_event_the_database_refuses_is_isolated(
    settings: Settings, db: asyncpg.Connection
) -> None:
    """A value the database rejects is bisected out of its batch and dead-lettered; the rest applies."""
    await db.execute(
        "alter table invoices add constraint test_poison check (invoice_id <> 'poison')"
    )
    topic = settings.topics.invoice_paid
    events = [bill.invoice_paid(f"a{i}", "s", f"inv-{i}", 100, T) for i in range(20)]
    events.insert(7, bill.invoice_paid("a7", "s", "poison", 100, T))
    async with running_consumer(settings), producer(settings) as p:
        await bill.publish(p, settings.topics, events)

        async def inbox_full() -> bool:
            return await db.fetchval("select count(*) from inbox") == 20

        await wait_for(inbox_full)
        dlq = await read_topic(settings, settings.topics.dlq, expect=1)
    assert await db.fetchval("select count(*) from invoices") == 20
    assert [m.headers["dlq.reason"] for m in dlq] == ["invalid"]
    assert "rejected by the database" in dlq[0].headers["dlq.detail"]
    assert json.loads(dlq[0].value)["data"]["invoice_id"] == "poison"
    assert dlq[0].headers["dlq.source.topic"] == topic

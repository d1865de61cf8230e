"""A subscription is created once: a second subscription.created is a duplicate or a conflict.

Same subscription id under another event id: with the same facts it is a duplicate
(counted); with other facts it is a conflict, recorded in ``subscription_conflicts``
with the fields that differ, counted and logged, and the first subscription stays.
Through the real broker and consumer, and within one batch on the real Postgres.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from structlog.testing import capture_logs

from referral_devtools import synthetic as bill
from referral_runtime.settings import Settings
from tests.conftest import wait_for
from tests.e2e.harness import (
    active_code,
    apply_plan,
    batch_plan,
    fresh_logger,
    inbox_reaches,
    producer,
    referral_status,
    running_consumer,
)

T0 = datetime(2027, 1, 5, 17, tzinfo=UTC)
VR = "virtual_receptionist"


async def test_a_second_creation_is_a_counted_duplicate_or_a_recorded_conflict(
    settings: Settings, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = settings.topics.subscription_created
    with capture_logs() as logs:
        fresh_logger(monkeypatch)
        async with running_consumer(settings) as service, producer(settings) as p:
            await bill.publish(
                p, settings.topics, [bill.subscription_created("ref", "ref-s", VR, T0)]
            )
            await inbox_reaches(db, 1)
            code = await active_code(db, "ref")
            first = bill.subscription_created("a", "a-s", VR, T0, code=code, email="x@a.example")
            await bill.publish(p, settings.topics, [first])
            await inbox_reaches(db, 2)

            resent = {**first, "event_id": "00000000-0000-4000-8000-00000000000a"}
            # Billing says the same subscription is a chat plan, a day later, without the code.
            conflicting = bill.subscription_created(
                "a", "a-s", "chat", T0 + timedelta(days=1), email="y@a.example",
                event_id="00000000-0000-4000-8000-00000000000b",
            )  # fmt: skip
            await bill.publish(p, settings.topics, [resent, conflicting])
            await inbox_reaches(db, 4)
            # Redelivered, the conflict is neither recorded nor counted twice.
            await (await p.send(topic, json.dumps(conflicting).encode(), key=b"a"))
            registry = service.registry

            async def consumed(n: int) -> bool:
                total = sum(
                    registry.get_sample_value(
                        "referrals_consumer_events_total",
                        {"topic": topic, "event_type": "subscription.created", "outcome": o},
                    )
                    or 0
                    for o in ("applied", "duplicate", "dead_lettered")
                )
                return total >= n

            await wait_for(lambda: consumed(5))

    kept = await db.fetchrow("select * from subscriptions where subscription_id = 'a-s'")
    assert (kept["event_id"], kept["plan_family"], kept["created_at"]) == (
        uuid.UUID(first["event_id"]),
        VR,
        T0,
    )
    assert await referral_status(db, "a") == ("pending", None)
    [conflict] = await db.fetch("select * from subscription_conflicts")
    assert str(conflict["event_id"]) == conflicting["event_id"]
    assert (conflict["subscription_id"], conflict["plan_family"]) == ("a-s", "chat")
    assert sorted(conflict["differs"]) == ["occurred_at", "plan_family", "plan_id", "referral_code"]
    assert (conflict["topic"], conflict["code_state"]) == (topic, "none")

    def sample(name: str, labels: dict[str, str] | None = None) -> float | None:
        return registry.get_sample_value(name, labels or {})

    assert sample("referrals_consumer_subscription_conflicts_total") == 1
    assert sample("referrals_consumer_subscriptions_resent_total") == 1
    outcome = {"topic": topic, "event_type": "subscription.created"}
    assert sample("referrals_consumer_events_total", {**outcome, "outcome": "applied"}) == 2
    assert sample("referrals_consumer_events_total", {**outcome, "outcome": "duplicate"}) == 3
    [line] = [e for e in logs if e["event"] == "subscription_conflict"]
    assert line["event_id"] == conflicting["event_id"] and line["subscription_id"] == "a-s"
    assert sorted(line["differs"]) == ["occurred_at", "plan_family", "plan_id", "referral_code"]
    assert "y@a.example" not in repr(line)


async def test_within_one_batch_the_first_stays(settings: Settings, db: asyncpg.Connection) -> None:
    first = bill.subscription_created("b", "b-s", VR, T0, organization_id="org-1")
    same = {**first, "event_id": "00000000-0000-4000-8000-0000000000c1"}
    other = bill.subscription_created(
        "b", "b-s", VR, T0, organization_id="org-2", event_id="00000000-0000-4000-8000-0000000000c2"
    )
    await apply_plan(db, settings, batch_plan(settings, first, same, other))

    kept = await db.fetchrow("select event_id, organization_id from subscriptions")
    assert (str(kept["event_id"]), kept["organization_id"]) == (first["event_id"], "org-1")
    conflicts = await db.fetch("select event_id, differs from subscription_conflicts")
    assert [(str(c["event_id"]), c["differs"]) for c in conflicts] == [
        (other["event_id"], ["customer.organization_id"])
    ]
    assert await db.fetchval("select count(*) from inbox") == 3

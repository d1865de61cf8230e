"""Free text never costs a referee its money facts: real broker, consumer and decision pass.

A cancellation with a 600-character reason, a sign-up whose email is over 320
characters, NULs in a reason and in a plan id: each event is applied, what was cut
or cleaned is counted and logged (field and action, never the text), and the
cancelled referees are forfeited by the decision pass instead of being paid.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

import asyncpg
import pytest
from structlog.testing import capture_logs

from payout_scheduler.metrics import SchedulerMetrics
from payout_scheduler.passes import run_pass
from referral_devtools import synthetic as bill
from referral_runtime.db import create_pool
from referral_runtime.settings import Settings
from tests.e2e.harness import (
    active_code,
    consumed_reaches,
    fresh_logger,
    inbox_reaches,
    producer,
    running_consumer,
)

T0 = datetime(2027, 1, 5, 17, tzinfo=UTC)
SIGNED_UP = datetime(2027, 1, 8, 17, tzinfo=UTC)
PAID = datetime(2027, 1, 9, 18, tzinfo=UTC)  # eligible_on 2027-04-01, decidable 04-02
CANCELLED = datetime(2027, 2, 15, 17, tzinfo=UTC)  # before eligible_on: forfeits
VR = "virtual_receptionist"
LONG_REASON = "the receptionist kept mispronouncing our name " * 14  # 644 characters
LONG_EMAIL = "front.desk." * 40 + "@harbor-dental.example"  # 462 characters


async def test_free_text_is_cut_or_cleaned_and_the_cancelled_referees_are_forfeited(
    settings: Settings, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert len(LONG_REASON) > 600 and len(LONG_EMAIL) > 320

    def referee(account: str, reason: str, **signup: str) -> list[bill.Event]:
        return [
            bill.subscription_created(account, f"{account}-s", VR, SIGNED_UP, code=code, **signup),
            bill.invoice_paid(account, f"{account}-s", f"{account}-i1", 19900, PAID),
            bill.subscription_cancelled(account, f"{account}-s", CANCELLED, reason=reason),
        ]

    pool = await create_pool(settings.database_url, size=2)
    try:
        with capture_logs() as logs:
            fresh_logger(monkeypatch)
            async with running_consumer(settings) as service, producer(settings) as p:
                await bill.publish(
                    p, settings.topics, [bill.subscription_created("ref", "ref-s", VR, T0)]
                )
                await inbox_reaches(db, 1)
                code = await active_code(db, "ref")
                events = [
                    *referee("long-reason", LONG_REASON),
                    *referee("nul-reason", "moving\u0000out"),
                    *referee("long-email", "closing", email=LONG_EMAIL),
                    *referee("nul-plan", "closing", plan_id="vr-\u0000monthly"),
                ]
                await bill.publish(p, settings.topics, events)
                await consumed_reaches(db, 1 + len(events))
                registry = service.registry

                result = await run_pass(pool, settings, date(2027, 4, 2), SchedulerMetrics())
    finally:
        await pool.close()

    assert await db.fetchval("select count(*) from dead_letters") == 0
    reasons = dict(await db.fetch("select account_id, reason from cancellations"))
    assert reasons == {
        "long-reason": LONG_REASON[:500],
        "nul-reason": "movingout",
        "long-email": "closing",
        "nul-plan": "closing",
    }
    assert await db.fetchval("select plan_id from subscriptions where account_id = 'nul-plan'") == (
        "vr-monthly"
    )
    assert await db.fetchval(
        "select email_domain from subscriptions where account_id = 'long-email'"
    ) == ("harbor-dental.example")

    # Every referee was cancelled before eligible_on: forfeited, nobody paid.
    assert result.total == 4
    decided = dict(await db.fetch("select referee_account_id, outcome from payouts"))
    assert decided == dict.fromkeys(
        ["long-reason", "nul-reason", "long-email", "nul-plan"], "forfeited"
    )
    assert set(await db.fetchval("select array_agg(distinct reason) from payouts")) == {
        "cancelled_before_eligibility"
    }
    assert await db.fetchval(
        "select count(*) from outbox where topic = $1", settings.topics.payout_due
    ) == (0)

    def counted(event_type: str, field: str, action: str) -> float | None:
        return registry.get_sample_value(
            "referrals_consumer_free_text_amended_total",
            {"event_type": event_type, "field": field, "action": action},
        )

    assert counted("subscription.cancelled", "data.reason", "cut") == 1
    assert counted("subscription.cancelled", "data.reason", "nul_removed") == 1
    assert counted("subscription.created", "data.customer.email", "cut") == 1
    assert counted("subscription.created", "data.plan_id", "nul_removed") == 1
    applied = registry.get_sample_value(
        "referrals_consumer_events_total",
        {
            "topic": settings.topics.subscription_cancelled,
            "event_type": "subscription.cancelled",
            "outcome": "applied",
        },
    )
    assert applied == 4

    amended = [e for e in logs if e["event"] == "free_text_amended"]
    assert sorted((e["field"], e["action"]) for e in amended) == [
        ("data.customer.email", "cut"),
        ("data.plan_id", "nul_removed"),
        ("data.reason", "cut"),
        ("data.reason", "nul_removed"),
    ]
    for line in amended:
        assert {"event_id", "topic", "partition", "offset"} <= set(line)
        text = repr(line)
        assert "mispronouncing" not in text and "front.desk" not in text and "moving" not in text

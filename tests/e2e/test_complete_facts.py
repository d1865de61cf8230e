"""Decisions only on complete facts: a pass decides nothing the consumer group has not applied.

Real broker and Postgres: billing events through the real consumer, decisions by a
real ``payout-scheduler tick`` process and by the scheduler service's own loop.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
from prometheus_client import CollectorRegistry

from payout_scheduler.metrics import SchedulerMetrics
from payout_scheduler.service import SchedulerService
from referral_devtools import synthetic as bill
from referral_runtime.settings import Settings
from tests.conftest import wait_for
from tests.e2e.harness import active_code, inbox_reaches, producer, running_consumer, spawn

VR = "virtual_receptionist"


def _referees(code: str, signed_up: datetime, paid: datetime) -> list[bill.Event]:
    """Three referees who sign up with ``code`` and pay once."""
    events = []
    for account in ("stays", "leaves-1", "leaves-2"):
        events += [
            bill.subscription_created(account, f"{account}-s", VR, signed_up, code=code),
            bill.invoice_paid(account, f"{account}-s", f"{account}-i1", 19900, paid),
        ]
    return events


def _cancellations(cancelled: datetime, effective: datetime) -> list[bill.Event]:
    return [
        bill.subscription_cancelled(a, f"{a}-s", cancelled, effective_at=effective)
        for a in ("leaves-1", "leaves-2")
    ]


async def _decided(db: asyncpg.Connection) -> dict[str, tuple[str, str | None]]:
    rows = await db.fetch("select referee_account_id, outcome, reason from payouts")
    return {r["referee_account_id"]: (r["outcome"], r["reason"]) for r in rows}


def _tick(settings: Settings, as_of: str, log: Path, **env: str) -> int:
    proc = spawn(
        ["payout-scheduler", "tick", "--as-of", as_of, "--allow-future"], settings, log, **env
    )
    return proc.wait(120)


async def test_tick_decides_nothing_while_the_consumer_is_behind_then_forfeits(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    """First payments in January 2027: eligible_on 2027-04-01, decidable on 2027-04-02."""
    async with producer(settings) as p:
        async with running_consumer(settings):
            referrer = bill.subscription_created(
                "ref-a", "ref-a-s", VR, datetime(2027, 1, 5, 17, tzinfo=UTC)
            )
            await bill.publish(p, settings.topics, [referrer])
            await inbox_reaches(db, 1)
            referees = _referees(
                await active_code(db, "ref-a"),
                datetime(2027, 1, 8, 17, tzinfo=UTC),
                datetime(2027, 1, 9, 18, tzinfo=UTC),
            )
            await bill.publish(p, settings.topics, referees)
            await inbox_reaches(db, 1 + len(referees))
        # The consumer is down; two referees cancel, well before eligible_on.
        cancellations = _cancellations(
            datetime(2027, 2, 10, tzinfo=UTC), datetime(2027, 2, 28, tzinfo=UTC)
        )
        await bill.publish(p, settings.topics, cancellations)

    held = tmp_path / "held.log"
    code = await asyncio.to_thread(
        _tick, settings, "2027-04-02", held, SCHEDULER_FACTS_WAIT_SECONDS="2"
    )
    output = held.read_text()
    assert code == 3, output
    assert "held back, nothing decided" in output and "2 billing message(s)" in output, output
    assert "error: decisions held back" in output, output
    # Nothing decided: neither the referees whose cancellations wait on the topic, nor the
    # one without (the whole pass waits), and nothing announced.
    assert await _decided(db) == {}
    assert (
        await db.fetchval(
            "select count(*) from outbox where topic = $1", settings.topics.payout_due
        )
        == 0
    )
    assert await db.fetchval("select unapplied from scheduler_held_back") == 2
    assert await db.fetchval("select count(*) from scheduler_passes") == 0

    async with running_consumer(settings):
        await inbox_reaches(db, 1 + len(referees) + len(cancellations))
        done = tmp_path / "done.log"
        code = await asyncio.to_thread(_tick, settings, "2027-04-02", done)
        assert code == 0, done.read_text()
    assert "decided 3 referrals" in done.read_text(), done.read_text()
    assert await _decided(db) == {
        "stays": ("due", None),
        "leaves-1": ("forfeited", "cancelled_before_eligibility"),
        "leaves-2": ("forfeited", "cancelled_before_eligibility"),
    }
    assert await db.fetchval("select count(*) from scheduler_held_back") == 0


def _sample(metrics: SchedulerMetrics, name: str) -> float:
    return metrics.registry.get_sample_value(name) or 0.0


async def test_the_loop_holds_back_says_so_across_restarts_and_decides_once_caught_up(
    settings: Settings, db: asyncpg.Connection
) -> None:
    """Business time in the past (first payments in July 2026: decidable since 2026-10-02),
    so the service's own pass as of today decides them."""
    quick = settings.model_copy(
        update={"scheduler_facts_wait_seconds": 0.3, "scheduler_held_back_retry_seconds": 0.3}
    )
    async with producer(settings) as p:
        async with running_consumer(settings):
            referrer = bill.subscription_created(
                "ref-a", "ref-a-s", VR, datetime(2026, 6, 1, 17, tzinfo=UTC)
            )
            await bill.publish(p, settings.topics, [referrer])
            await inbox_reaches(db, 1)
            referees = _referees(
                await active_code(db, "ref-a"),
                datetime(2026, 7, 8, 17, tzinfo=UTC),
                datetime(2026, 7, 9, 18, tzinfo=UTC),
            )
            await bill.publish(p, settings.topics, referees)
            await inbox_reaches(db, 1 + len(referees))
        cancellations = _cancellations(
            datetime(2026, 8, 10, tzinfo=UTC), datetime(2026, 8, 31, tzinfo=UTC)
        )
        await bill.publish(p, settings.topics, cancellations)

    first = SchedulerService(quick, SchedulerMetrics(CollectorRegistry()))
    await first.start()
    try:
        # Held back, and tried again soon (not an hour later): several passes.
        await wait_for(
            lambda: _sample(first.metrics, "referrals_scheduler_passes_held_back_total") >= 3,
            timeout=30,
        )
        assert _sample(first.metrics, "referrals_scheduler_held_back") == 1
        since = _sample(first.metrics, "referrals_scheduler_held_back_since_timestamp_seconds")
        assert 0 < since <= datetime.now(UTC).timestamp()
        assert _sample(first.metrics, "referrals_scheduler_unapplied_billing_events") == 2
        assert _sample(first.metrics, "referrals_scheduler_facts_wait_seconds_count") >= 3
        assert _sample(first.metrics, "referrals_scheduler_last_success_timestamp_seconds") == 0
    finally:
        await first.stop()
    assert await _decided(db) == {}

    # A restarted scheduler says at once since when decisions are held back, before its
    # own first check ends (it waits up to 30 s for the consumer here).
    patient = settings.model_copy(update={"scheduler_facts_wait_seconds": 30})
    second = SchedulerService(patient, SchedulerMetrics(CollectorRegistry()))
    await second.start()
    try:

        def restored() -> bool:
            value = "referrals_scheduler_held_back_since_timestamp_seconds"
            return _sample(second.metrics, value) == since

        await wait_for(restored, timeout=15)
        assert _sample(second.metrics, "referrals_scheduler_held_back") == 1
        assert await _decided(db) == {}

        async with running_consumer(settings):
            await wait_for(
                lambda: (
                    _sample(second.metrics, "referrals_scheduler_held_back") == 0
                    and _sample(
                        second.metrics, "referrals_scheduler_last_success_timestamp_seconds"
                    )
                    > 0
                ),
                timeout=40,
            )
    finally:
        await second.stop()
    assert _sample(second.metrics, "referrals_scheduler_held_back_since_timestamp_seconds") == 0
    assert await _decided(db) == {
        "stays": ("due", None),
        "leaves-1": ("forfeited", "cancelled_before_eligibility"),
        "leaves-2": ("forfeited", "cancelled_before_eligibility"),
    }
    assert await db.fetchval("select count(*) from scheduler_held_back") == 0

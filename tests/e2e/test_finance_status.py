"""Finance reports back through the real broker and Postgres: the scheduler applies each
payout.paid / payout.failed once, whatever the order and however often it is delivered.

Due payouts are seeded in the referral state (``referral_devtools.seed``) for the month
before this one, and decided and announced by the running scheduler service, so every
one of them is past its ``pay_by`` (overdue) until finance reports on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import asyncpg
from prometheus_client.parser import text_string_to_metric_families

from payout_scheduler.service import SchedulerService
from referral_devtools import finance
from referral_devtools.devstack import free_port
from referral_devtools.seed import seed
from referral_program.payouts import attempt_event_id
from referral_runtime.settings import Settings
from tests.conftest import settings_env, wait_for
from tests.e2e.harness import committed_offsets, producer, read_topic, spawn, terminate

PAID_AT = datetime(2026, 11, 20, 18, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Due:
    """A due payout as finance reads it off ``payout.due``."""

    payout_id: str
    referrer: str
    amount_cents: int
    currency: str
    payee: str


def last_month_as_of(settings: Settings) -> date:
    """A pass date in the previous month: every payout it decides is past its pay_by today."""
    first = datetime.now(settings.tz).date().replace(day=1)
    previous = (first - timedelta(days=1)).replace(day=1)
    return previous + timedelta(days=settings.payout_settle_days)


@contextlib.asynccontextmanager
async def running_scheduler(settings: Settings) -> AsyncIterator[SchedulerService]:
    """The scheduler service in this event loop: decisions, relay and the status subscriber."""
    service = SchedulerService(settings)
    await service.start()
    try:
        await wait_for(service.ready, timeout=60)
        yield service
    finally:
        await service.stop()


async def seed_due(db: asyncpg.Connection, settings: Settings, n: int) -> None:
    """``n`` referrals that a pass today decides due (their pay_by was last month)."""
    await seed(
        db, n, n, last_month_as_of(settings), tz=settings.tz,
        settle_days=settings.payout_settle_days, referrers=n,
    )  # fmt: skip


async def announced(settings: Settings, n: int) -> list[Due]:
    """The ``n`` payout.due the running scheduler decided and published, read off the topic."""
    messages = await read_topic(settings, settings.topics.payout_due, expect=n, timeout=60)
    dues = {}
    for m in messages:
        data = m.json()["data"]
        assert data["attempt"] == 1
        dues[data["payout_id"]] = Due(
            data["payout_id"],
            data["referrer_account_id"],
            data["amount_cents"],
            data["currency"],
            data["payee"],
        )
    assert len(dues) == n
    return sorted(dues.values(), key=lambda d: d.payout_id)


def paid(due: Due, attempt: int = 1, **overrides: Any) -> tuple[str, dict[str, Any]]:
    kwargs: dict[str, Any] = {
        "reference": f"ACH-{due.payout_id[:8]}-{attempt}",
        "currency": due.currency,
    } | overrides
    amount = kwargs.pop("amount_cents", due.amount_cents)
    return due.referrer, finance.payout_paid(due.payout_id, attempt, PAID_AT, amount, **kwargs)


def failed(due: Due, attempt: int = 1, reason: str = "payee_details_missing") -> tuple[str, Any]:
    return due.referrer, finance.payout_failed(due.payout_id, attempt, PAID_AT, reason)


async def publish(settings: Settings, reports: list[tuple[str, Any]]) -> None:
    async with producer(settings) as p:
        await finance.publish_reports(p, settings.topics.payout_status, reports)


async def reports_applied(db: asyncpg.Connection, n: int, timeout: float = 30) -> None:
    async def applied() -> bool:
        return bool(await db.fetchval("select count(*) from payout_reports") >= n)

    await wait_for(applied, timeout=timeout)


async def payout(db: asyncpg.Connection, payout_id: str) -> asyncpg.Record:
    row = await db.fetchrow("select * from payouts where payout_id = $1", UUID(payout_id))
    assert row is not None
    return row


def counted(service: SchedulerService, event_type: str, outcome: str) -> float:
    value = service.metrics.registry.get_sample_value(
        "referrals_payout_status_events_total", {"event_type": event_type, "outcome": outcome}
    )
    return value or 0.0


async def counted_reaches(
    service: SchedulerService, event_type: str, outcome: str, value: float
) -> None:
    """Wait until the counter shows ``value``: it is counted just after the batch commits."""
    await wait_for(lambda: counted(service, event_type, outcome) == value, timeout=10)


def gauge(service: SchedulerService, name: str, **labels: str) -> float | None:
    return service.metrics.registry.get_sample_value(name, labels)


def referrals_cli(settings: Settings, *argv: str) -> subprocess.CompletedProcess[str]:
    """The installed `referrals` console script, as support runs it."""
    env = {**os.environ, **settings_env(settings), "REFERRALS_ACTOR": "support-jo"}
    return subprocess.run(
        [str(Path(sys.executable).parent / "referrals"), *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_paid_mismatched_unknown_and_the_promise_watched(
    settings: Settings, db: asyncpg.Connection
) -> None:
    await seed_due(db, settings, 4)
    async with running_scheduler(settings) as service:
        dues = await announced(settings, 4)
        ok, wrong, unpaid, _ = dues

        async def overdue(n: int) -> bool:
            return gauge(service, "referrals_payouts_overdue") == n

        await wait_for(lambda: overdue(4), timeout=40)
        stranger = Due(str(uuid4()), "nobody", 100_000, "USD", "nobody")
        await publish(
            settings,
            [
                paid(ok),
                paid(wrong, amount_cents=wrong.amount_cents - 100),  # money out wrong
                paid(stranger),  # a payout this project never announced
                paid(dues[3], currency="EUR"),
            ],
        )
        await reports_applied(db, 4)

        row = await payout(db, ok.payout_id)
        assert (row["status"], row["paid_attempt"], row["paid_reference"]) == (
            "paid", 1, f"ACH-{ok.payout_id[:8]}-1"
        )  # fmt: skip
        assert row["paid_at"] == PAID_AT and row["paid_amount_cents"] == ok.amount_cents
        for mismatch in (wrong, dues[3]):
            row = await payout(db, mismatch.payout_id)
            assert row["status"] == "mismatched", "money out wrong is never simply paid"
            assert row["paid_at"] == PAID_AT
        assert (await payout(db, wrong.payout_id))["paid_amount_cents"] == wrong.amount_cents - 100
        assert (await payout(db, unpaid.payout_id))["status"] == "due"
        unknown = await db.fetchrow(
            "select outcome from payout_reports where payout_id = $1", UUID(stranger.payout_id)
        )
        assert unknown is not None and unknown["outcome"] == "unknown_payout"
        assert await db.fetchval("select count(*) from payouts where outcome = 'due'") == 4

        await counted_reaches(service, "payout.paid", "paid", 1)
        await counted_reaches(service, "payout.paid", "mismatched", 2)
        await counted_reaches(service, "payout.paid", "unknown_payout", 1)
        await wait_for(lambda: overdue(1), timeout=10)
        assert gauge(service, "referrals_payouts", status="mismatched") == 2
        assert gauge(service, "referrals_payouts", status="paid") == 1
        assert gauge(service, "referrals_payouts_cents", status="paid") == ok.amount_cents

    # Finance's view: the CLI shows the same, overdue included, as CSV a spreadsheet opens.
    shown = referrals_cli(settings, "payouts", "--format", "csv")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.removeprefix("\ufeff").splitlines()
    assert lines[0].startswith("payout_id,referrer_account_id,payee")
    statuses = {line.split(",")[0]: line.split(",")[11] for line in lines[1:]}
    assert statuses == {
        ok.payout_id: "paid",
        wrong.payout_id: "mismatched",
        unpaid.payout_id: "overdue",
        dues[3].payout_id: "mismatched",
    }
    overdue_only = referrals_cli(settings, "payouts", "--status", "overdue", "--format", "json")
    assert overdue_only.returncode == 0, overdue_only.stderr
    document = json.loads(overdue_only.stdout)
    assert [p["payout_id"] for p in document["payouts"]] == [unpaid.payout_id]
    assert document["totals"][-1] == {
        "month": "all", "status": "overdue", "payouts": 1,
        "amount_cents": unpaid.amount_cents, "currency": "USD",
    }  # fmt: skip
    bad = referrals_cli(settings, "payouts", "--status", "late")
    assert bad.returncode == 2 and "choose among due, overdue" in bad.stderr


async def test_failed_then_reissued_through_the_cli_then_paid(
    settings: Settings, db: asyncpg.Connection
) -> None:
    await seed_due(db, settings, 2)
    async with running_scheduler(settings) as service:
        first, second = await announced(settings, 2)
        await publish(settings, [failed(first), paid(second)])
        await reports_applied(db, 2)
        row = await payout(db, first.payout_id)
        assert (row["status"], row["failure_reason"], row["attempt"]) == (
            "failed", "payee_details_missing", 1
        )  # fmt: skip
        await wait_for(
            lambda: gauge(service, "referrals_payouts", status="failed") == 1, timeout=10
        )

        # Refused, with the reason, for a paid payout and for one still due.
        refused = referrals_cli(settings, "payout", "reissue", second.payout_id)
        assert refused.returncode == 2
        assert "was paid on" in refused.stderr and "never re-issued" in refused.stderr
        # Support fixes the payee, then re-issues: the next attempt, to the payee as it is now.
        referee = row["referee_account_id"]
        fixed = referrals_cli(
            settings, "payee", "set", "--referrer", first.referrer, "--payee", "payee-fixed",
            "--referee", referee,
        )  # fmt: skip
        assert fixed.returncode == 0, fixed.stderr
        assert "payout reissue" in fixed.stdout
        reissued = referrals_cli(settings, "payout", "reissue", first.payout_id)
        assert reissued.returncode == 0, reissued.stderr
        assert "attempt 2" in reissued.stdout and "payee-fixed" in reissued.stdout
        again = referrals_cli(settings, "payout", "reissue", first.payout_id)
        assert again.returncode == 2 and "is due (attempt 2" in again.stderr
        assert "only a failed payout is re-issued" in again.stderr

        messages = await read_topic(settings, settings.topics.payout_due, expect=3)
        attempts = [m.json() for m in messages if m.json()["data"]["payout_id"] == first.payout_id]
        assert [e["data"]["attempt"] for e in attempts] == [1, 2]
        second_attempt = attempts[1]
        assert second_attempt["event_id"] == str(attempt_event_id(UUID(first.payout_id), 2))
        assert second_attempt["data"]["payee"] == "payee-fixed"
        assert second_attempt["data"]["amount_cents"] == first.amount_cents
        assert {k: v for k, v in attempts[0]["data"].items() if k not in ("attempt", "payee")} == {
            k: v for k, v in second_attempt["data"].items() if k not in ("attempt", "payee")
        }
        audit = await db.fetchrow("select * from audit_log where action = 'payout.reissue'")
        assert audit is not None and audit["actor"] == "support-jo"
        assert audit["details"]["attempt"] == 2

        # The failure of attempt 1 arriving again changes nothing; attempt 2 is paid.
        await publish(settings, [failed(first, 1, "rejected_by_bank"), paid(first, 2)])
        await reports_applied(db, 4)
        row = await payout(db, first.payout_id)
        assert (row["status"], row["attempt"], row["paid_attempt"]) == ("paid", 2, 2)
        await counted_reaches(service, "payout.failed", "superseded", 1)

        # A late payment of attempt 1 as well: money went out twice, and that is loud.
        await publish(settings, [paid(first, 1)])
        await reports_applied(db, 5)
        assert (await payout(db, first.payout_id))["status"] == "paid_twice"
        await counted_reaches(service, "payout.paid", "paid_twice", 1)
        refused = referrals_cli(settings, "payout", "reissue", first.payout_id)
        assert refused.returncode == 2 and "paid more than once" in refused.stderr


async def test_redelivered_and_out_of_order_reports_change_nothing(
    settings: Settings, db: asyncpg.Connection
) -> None:
    await seed_due(db, settings, 3)
    async with running_scheduler(settings) as service:
        a, b, c = await announced(settings, 3)
        paid_a, failed_b, paid_b = paid(a), failed(b), paid(b)
        # a: paid, delivered three times, then a failure after the payment.
        # b: failed and paid for the same attempt, the payment first.
        # c: failed twice (two event ids, the same attempt).
        await publish(
            settings,
            [paid_a, paid_a, paid_b, failed_b, paid_a, failed(a), failed(c), failed(c)],
        )
        await reports_applied(db, 6)

        async def all_consumed() -> bool:
            total = sum(
                counted(service, event_type, outcome)
                for event_type in ("payout.paid", "payout.failed")
                for outcome in (
                    "paid", "failed", "repeated", "failed_after_paid", "duplicate",
                )
            )  # fmt: skip
            return total == 8

        await wait_for(all_consumed, timeout=20)
        assert [(await payout(db, x.payout_id))["status"] for x in (a, b, c)] == [
            "paid",
            "paid",
            "failed",
        ]
        await counted_reaches(service, "payout.paid", "duplicate", 2)
        await counted_reaches(service, "payout.failed", "failed_after_paid", 2)
        await counted_reaches(service, "payout.failed", "repeated", 1)
        assert await db.fetchval("select count(*) from payout_reports") == 6

        # The same reports again, in another order: the state stays as it is.
        before = await db.fetch("select * from payouts order by payout_id")
        await publish(settings, [failed(c), failed_b, paid_b, paid_a])
        await reports_applied(db, 7)  # failed(c) is a new report (a new event id)
        await wait_for(lambda: counted(service, "payout.paid", "duplicate") == 4, timeout=20)
        after = await db.fetch("select * from payouts order by payout_id")
        assert [dict(r) for r in after] == [dict(r) for r in before]


async def test_bad_messages_are_dead_lettered_and_the_partition_moves_on(
    settings: Settings, db: asyncpg.Connection
) -> None:
    await seed_due(db, settings, 1)
    async with running_scheduler(settings) as service:
        (due,) = await announced(settings, 1)
        _, good = paid(due)
        wrong_type = {**good, "data": {**good["data"], "amount_cents": "1000.00"}}
        newer = {**good, "event_id": str(uuid4()), "schema_version": 2}
        other_event = {**good, "event_id": str(uuid4()), "event_type": "payout.cancelled"}
        bad = [b"not json", json.dumps(wrong_type).encode(), json.dumps(newer).encode(),
               json.dumps(other_event).encode()]  # fmt: skip
        # Everything on one key, so on one partition: the good report comes last.
        await publish(settings, [(due.referrer, b) for b in bad] + [(due.referrer, good)])
        await reports_applied(db, 1)
        assert (await payout(db, due.payout_id))["status"] == "paid"

        dlq = await read_topic(settings, settings.topics.dlq, expect=4)
        assert sorted(m.value for m in dlq) == sorted(bad)
        assert sorted(m.headers["dlq.reason"] for m in dlq) == [
            "event_type_mismatch", "invalid", "unparseable", "unsupported_schema_version",
        ]  # fmt: skip
        assert {m.headers["dlq.source.topic"] for m in dlq} == {settings.topics.payout_status}
        assert {m.headers["dlq.consumer_group"] for m in dlq} == {settings.payout_status_group}
        assert all(m.key == due.referrer.encode() for m in dlq)
        await counted_reaches(service, "unknown", "dead_lettered", 4)
        assert (
            await db.fetchval(
                "select count(*) from dead_letters where topic = $1", settings.topics.payout_status
            )
            == 4
        )
        assert service.ready()


async def test_two_replicas_in_one_group_apply_each_report_once(
    settings: Settings, db: asyncpg.Connection
) -> None:
    await seed_due(db, settings, 40)
    async with running_scheduler(settings) as one, running_scheduler(settings) as two:
        dues = await announced(settings, 40)

        def assigned(service: SchedulerService) -> float:
            return gauge(service, "referrals_payout_status_assigned_partitions") or 0

        await wait_for(lambda: assigned(one) == assigned(two) == 2, timeout=60)
        reports = [paid(d) if n % 2 else failed(d) for n, d in enumerate(dues)]
        await publish(settings, reports)
        await reports_applied(db, 40)
        statuses = await db.fetch("select status, count(*) from payouts group by 1 order by 1")
        assert [tuple(r) for r in statuses] == [("failed", 20), ("paid", 20)]

        def applied(service: SchedulerService) -> float:
            return counted(service, "payout.paid", "paid") + counted(
                service, "payout.failed", "failed"
            )

        await wait_for(lambda: applied(one) + applied(two) == 40, timeout=20)
        assert applied(one) > 0 and applied(two) > 0, "both members take a share"


async def test_sigkill_between_applying_and_committing_the_offsets(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    """The reports are applied, the process dies before their offsets are committed: the
    next process reads them again, recognises every one, and changes nothing."""
    await seed(
        db, 3, 3, last_month_as_of(settings), tz=settings.tz,
        settle_days=settings.payout_settle_days, referrers=1,
    )  # fmt: skip
    tick = spawn(
        ["payout-scheduler", "tick", "--as-of", last_month_as_of(settings).isoformat()],
        settings,
        tmp_path / "tick.log",
    )
    assert await asyncio.to_thread(tick.wait, 60) == 0, (tmp_path / "tick.log").read_text()
    a, b, c = await announced(settings, 3)
    await publish(settings, [paid(a), failed(b), paid(c, amount_cents=1)])

    marker = tmp_path / "commit-reached"
    log = tmp_path / "scheduler.log"
    stuck = spawn(
        ["python", "-m", "tests.e2e.stuck_commit"], settings, log,
        STUCK_COMMIT_MARKER=str(marker),
    )  # fmt: skip
    try:
        await wait_for(marker.exists, timeout=60)
        stuck.send_signal(signal.SIGKILL)
        stuck.wait(10)
    finally:
        if stuck.poll() is None:
            stuck.kill()
    applied_before_kill = await db.fetchval("select count(*) from payout_reports")
    assert applied_before_kill >= 1, log.read_text()
    assert await committed(settings) == {}, "the kill landed before any offset commit"
    state = await status_state(db)

    port = free_port()
    second = spawn(["payout-scheduler"], settings, log, HTTP_PORT=str(port))
    try:
        await reports_applied(db, 3, timeout=60)

        async def recognised() -> bool:
            samples = await asyncio.to_thread(scrape, port)
            duplicates = sum(
                v for (name, labels), v in samples.items()
                if name == "referrals_payout_status_events_total"
                and dict(labels)["outcome"] == "duplicate"
            )  # fmt: skip
            return duplicates == applied_before_kill

        await wait_for(recognised, timeout=30)
        # The second process commits what the first never did: up to the end of each partition.
        wanted: dict[int, int] = {}
        for m in await read_topic(settings, settings.topics.payout_status, expect=3):
            wanted[m.partition] = max(wanted.get(m.partition, 0), m.offset + 1)

        async def committed_as_wanted() -> bool:
            return await committed(settings) == wanted

        await wait_for(committed_as_wanted, timeout=30)
        assert await asyncio.to_thread(terminate, second) == 0
    finally:
        if second.poll() is None:
            second.kill()
    after = await status_state(db)
    # What was applied before the kill is exactly as it was; the rest is applied once.
    assert {k: v for k, v in after["reports"].items() if k in state["reports"]} == state["reports"]
    assert len(after["reports"]) == 3
    assert [r[:2] for r in after["payouts"]] == [
        (UUID(x.payout_id), s) for x, s in sorted(
            [(a, "paid"), (b, "failed"), (c, "mismatched")], key=lambda p: p[0].payout_id
        )
    ]  # fmt: skip
    assert await db.fetchval("select count(*) from dead_letters") == 0


async def status_state(db: asyncpg.Connection) -> dict[str, Any]:
    reports = await db.fetch("select * from payout_reports order by event_id")
    payouts = await db.fetch(
        """select payout_id, status, paid_at, paid_reference, failure_reason, status_changed_at
           from payouts order by payout_id"""
    )
    return {
        "reports": {r["event_id"]: tuple(r) for r in reports},
        "payouts": [tuple(r) for r in payouts],
    }


async def committed(settings: Settings) -> dict[int, int]:
    """The status group's committed offsets, per partition of the status topic."""
    return await committed_offsets(
        settings, settings.payout_status_group, settings.topics.payout_status
    )


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return {}
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }

"""Billing events through the real consumer, decided by the scheduler, published as payout.due.

Every referee below first pays in January 2027 (program time, Los Angeles), so
``eligible_on`` is 2027-04-01, ``pay_by`` the 15th business day of April
(2027-04-21), and the referral becomes decidable on 2027-04-02 (one settle day).
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import asyncpg
from prometheus_client.parser import text_string_to_metric_families

from payout_scheduler.metrics import SchedulerMetrics
from payout_scheduler.passes import catch_up, run_pass
from referral_devtools import synthetic as bill
from referral_devtools.devstack import free_port
from referral_devtools.seed import seed
from referral_program import codes
from referral_program.attribution import referral_id_for
from referral_program.decisions import payout_id_for
from referral_runtime.db import create_pool
from referral_runtime.settings import Settings
from tests.conftest import wait_for
from tests.e2e.harness import (
    active_code,
    inbox_reaches,
    producer,
    read_topic,
    running_consumer,
    spawn,
    terminate,
)

T0 = datetime(2027, 1, 5, 17, 0, tzinfo=UTC)
SIGNED_UP = datetime(2027, 1, 8, 17, 0, tzinfo=UTC)
PAID = datetime(2027, 1, 9, 18, 0, tzinfo=UTC)
VR, VA, CHAT = "virtual_receptionist", "voice_assistant", "chat"


def _referee(
    account: str, family: str, code: str, *, paid_at: datetime = PAID, **customer: Any
) -> list[dict[str, Any]]:
    """A referee who signs up with ``code`` on one plan and pays its first invoice."""
    return [
        bill.subscription_created(
            account, f"{account}-s", family, SIGNED_UP, code=code, **customer
        ),
        bill.invoice_paid(account, f"{account}-s", f"{account}-i1", 19900, paid_at),
    ]


def _expected_due(
    referee: str, referrer: str, code: str, family: str, amount: int, payee: str
) -> dict[str, Any]:
    referral_id = referral_id_for(referee)
    payout_id = str(payout_id_for(referral_id))
    return {
        "event_id": payout_id,
        "event_type": "payout.due",
        "schema_version": 1,
        "occurred_at": "2027-04-01T00:00:00-07:00",
        "data": {
            "payout_id": payout_id,
            "referral_id": str(referral_id),
            "program": "cash",
            "referrer_account_id": referrer,
            "payee": payee,
            "referee_account_id": referee,
            "referral_code": codes.display(code),
            "plan_family": family,
            "amount_cents": amount,
            "currency": "USD",
            "first_payment_at": "2027-01-09T18:00:00Z",
            "eligible_on": "2027-04-01",
            "pay_by": "2027-04-21",
            "attempt": 1,
        },
    }


async def test_billing_to_payout_due_end_to_end(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    referrers = [
        bill.subscription_created(
            "ref-a", "ref-a-s", VR, T0, email="owner@acme-dental.com",
            organization_id="org-acme", payment_fingerprint="fp-acme",
        ),
        bill.subscription_created("ref-b", "ref-b-s", VA, T0, email="boss@bakery.example"),
        bill.subscription_created("ref-partner", "ref-partner-s", CHAT, T0),
    ]  # fmt: skip
    pool = await create_pool(settings.database_url, size=3)
    metrics = SchedulerMetrics()
    try:
        async with running_consumer(settings), producer(settings) as p:
            await bill.publish(p, settings.topics, referrers)
            await inbox_reaches(db, len(referrers))
            a, b = await active_code(db, "ref-a"), await active_code(db, "ref-b")
            partner = await active_code(db, "ref-partner")
            referees = [
                *_referee("vr", VR, a),
                *_referee("va", VA, a),
                # Both qualifying families at decision time: the larger reward, once.
                bill.subscription_created("both", "both-vr", VR, SIGNED_UP, code=a),
                bill.subscription_created("both", "both-va", VA, SIGNED_UP),
                bill.invoice_paid("both", "both-va", "both-i1", 4900, PAID),
                # A paid chat plan is never a first payment: the referral stays pending.
                *_referee("chat", CHAT, a),
                *_referee("cancel-early", VR, a),
                bill.subscription_cancelled(
                    "cancel-early", "cancel-early-s", datetime(2027, 2, 10, tzinfo=UTC),
                    effective_at=datetime(2027, 2, 28, tzinfo=UTC),
                ),
                *_referee("cancel-late", VR, a),
                bill.subscription_cancelled(
                    "cancel-late", "cancel-late-s", datetime(2027, 3, 20, tzinfo=UTC),
                    effective_at=datetime(2027, 4, 15, tzinfo=UTC),
                ),
                # Cancelled after eligible_on, backdated: a later fact, ignored.
                *_referee("cancel-after", VA, a),
                bill.subscription_cancelled(
                    "cancel-after", "cancel-after-s", datetime(2027, 4, 1, 12, tzinfo=UTC),
                    effective_at=datetime(2027, 3, 1, tzinfo=UTC),
                ),
                bill.subscription_created("ref-a", "self-s", VR, SIGNED_UP, code=a),
                bill.invoice_paid("ref-a", "self-s", "self-i1", 19900, PAID),
                *_referee("same-org", VR, a, organization_id="org-acme"),
                *_referee("same-fp", VR, a, payment_fingerprint="fp-acme"),
                *_referee("same-dom", VR, a, email="desk@ACME-dental.com"),
                *_referee("not-new", VR, a, first_time_client=False),
                *_referee("partnered", VR, partner),
                *_referee("payee-override", VR, a),
                *_referee("bakery-friend", VA, b),
                # Paid in February: eligible 2027-05-01, decided by the catch-up below.
                *_referee("february", VR, a, paid_at=datetime(2027, 2, 10, 18, tzinfo=UTC)),
            ]  # fmt: skip
            await bill.publish(p, settings.topics, referees)
            await inbox_reaches(db, len(referrers) + len(referees))
            # Support's changes after attribution: a partner flag, two payees.
            await db.execute(
                "update accounts set is_partner = true, partner_periods = '{(,)}' where account_id = 'ref-partner'"
            )
            await db.execute(
                "update accounts set payee = 'payee-bakery' where account_id = 'ref-b'"
            )
            await db.execute(
                "update referrals set payee = 'payee-7' where referee_account_id = 'payee-override'"
            )

            # Nothing is decidable before eligible_on + PAYOUT_SETTLE_DAYS.
            for early in (date(2027, 3, 31), date(2027, 4, 1)):
                assert (await run_pass(pool, settings, early, metrics)).total == 0
            assert await db.fetchval("select count(*) from payouts") == 0

            log = tmp_path / "tick.log"
            tick = spawn(
                ["payout-scheduler", "tick", "--as-of", "2027-04-02", "--allow-future"],
                settings,
                log,
            )
            assert await asyncio.to_thread(tick.wait, 60) == 0, log.read_text()
            summary = log.read_text()
            assert "as of 2027-04-02: decided 14 referrals" in summary, summary
            assert "7 due, 1 forfeited, 6 ineligible" in summary, summary

            expected = [
                _expected_due("vr", "ref-a", a, VR, 100_000, "ref-a"),
                _expected_due("va", "ref-a", a, VA, 20_000, "ref-a"),
                _expected_due("both", "ref-a", a, VR, 100_000, "ref-a"),
                _expected_due("cancel-late", "ref-a", a, VR, 100_000, "ref-a"),
                _expected_due("cancel-after", "ref-a", a, VA, 20_000, "ref-a"),
                _expected_due("payee-override", "ref-a", a, VR, 100_000, "payee-7"),
                _expected_due("bakery-friend", "ref-b", b, VA, 20_000, "payee-bakery"),
            ]
            received = await read_topic(settings, settings.topics.payout_due, expect=7)
            assert sorted((m.json() for m in received), key=_by_referee) == sorted(
                expected, key=_by_referee
            )
            assert all(m.key == m.json()["data"]["referrer_account_id"].encode() for m in received)

            decided = {
                r["referee_account_id"]: (r["outcome"], r["reason"], r["amount_cents"])
                for r in await db.fetch("select * from payouts")
            }
            assert decided == {
                "vr": ("due", None, 100_000),
                "va": ("due", None, 20_000),
                "both": ("due", None, 100_000),
                "cancel-late": ("due", None, 100_000),
                "cancel-after": ("due", None, 20_000),
                "payee-override": ("due", None, 100_000),
                "bakery-friend": ("due", None, 20_000),
                "cancel-early": ("forfeited", "cancelled_before_eligibility", 0),
                "ref-a": ("ineligible", "self_referral", 0),
                "same-org": ("ineligible", "same_organization", 0),
                "same-fp": ("ineligible", "shared_payment_method", 0),
                "same-dom": ("ineligible", "same_email_domain", 0),
                "not-new": ("ineligible", "existing_client", 0),
                "partnered": ("ineligible", "partner_ineligible", 0),
            }
            assert (
                await db.fetchval("select status from referrals where referee_account_id = 'chat'")
                == "pending"
            )

            # A re-run of the same day decides and publishes nothing new.
            assert (await run_pass(pool, settings, date(2027, 4, 2), metrics)).total == 0
            assert await db.fetchval("select count(*) from outbox where published_at is null") == 0
            assert len(await read_topic(settings, settings.topics.payout_due, expect=7)) == 7

            # Down for a month: the catch-up runs every missed day and decides February's.
            results = await catch_up(pool, settings, date(2027, 5, 3), metrics)
            assert results[0].as_of == date(2027, 4, 3)
            assert {r.as_of: r.total for r in results if r.total} == {date(2027, 5, 2): 1}
            assert (
                await db.fetchval(
                    "select count(*) from scheduler_passes where as_of between $1 and $2",
                    date(2027, 4, 3),
                    date(2027, 5, 3),
                )
                == 31
            )
            received = await read_topic(settings, settings.topics.payout_due, expect=8)
    finally:
        await pool.close()
    february = [m.json() for m in received if m.json()["data"]["referee_account_id"] == "february"]
    assert len(received) == 8 and len(february) == 1
    assert (february[0]["data"]["eligible_on"], february[0]["data"]["pay_by"]) == (
        "2027-05-01",
        "2027-05-21",
    )


def _by_referee(event: dict[str, Any]) -> str:
    return str(event["data"]["referee_account_id"])


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


async def test_scheduler_process_probes_metrics_and_sigterm(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    today = datetime.now(settings.tz).date()
    await seed(db, 60, 40, today, tz=settings.tz, settle_days=settings.payout_settle_days)
    port = free_port()
    log = tmp_path / "scheduler.log"
    proc = spawn(["payout-scheduler"], settings, log, HTTP_PORT=str(port))
    try:

        async def ready() -> bool:
            return (await asyncio.to_thread(_get, port, "/readyz"))[0] == 200

        await wait_for(ready, timeout=30)
        assert (await asyncio.to_thread(_get, port, "/healthz"))[0] == 200
        received = await read_topic(settings, settings.topics.payout_due, expect=40)
        assert len({m.json()["data"]["payout_id"] for m in received}) == len(received) == 40

        published = ("referrals_outbox_published_total", (("topic", settings.topics.payout_due),))

        async def gauges_caught_up() -> bool:
            samples = dict(_samples((await asyncio.to_thread(_get, port, "/metrics"))[1]))
            return (
                samples.get(published) == 40
                and samples.get(("referrals_scheduler_due_soon", ())) == 0
            )

        await wait_for(gauges_caught_up, timeout=15)
        status, text = await asyncio.to_thread(_get, port, "/metrics")
        assert status == 200
        samples = dict(_samples(text))
        assert samples[("process_resident_memory_bytes", ())] > 10e6
        assert samples[("process_cpu_seconds_total", ())] > 0
        cash = await db.fetchval("select sum(amount_cents) from payouts where outcome = 'due'")
        assert (
            samples[("referrals_scheduler_decisions_total", (("outcome", "due"), ("reason", "")))]
            == 40
        )
        assert (
            sum(
                v
                for (name, _), v in samples.items()
                if name == "referrals_scheduler_cash_due_cents_total"
            )
            == cash
        )
        assert samples[("referrals_scheduler_last_success_timestamp_seconds", ())] > 0
        assert samples[("referrals_scheduler_pass_duration_seconds_count", ())] == 1
        assert samples[("referrals_scheduler_due_soon", ())] == 0
        assert (
            samples[("referrals_outbox_published_total", (("topic", settings.topics.payout_due),))]
            == 40
        )
        started = asyncio.get_running_loop().time()
        assert await asyncio.to_thread(terminate, proc) == 0, log.read_text()
        assert asyncio.get_running_loop().time() - started < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "decision_pass_finished" in log.read_text()


def _samples(text: str) -> list[tuple[tuple[str, tuple[tuple[str, str], ...]], float]]:
    return [
        ((sample.name, tuple(sorted(sample.labels.items()))), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]

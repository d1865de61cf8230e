"""Decisions are fixed at eligible_on and paid in the program currency, end to end.

Business time here is in the past: every referee first pays on 2026-07-09 (Los
Angeles), so ``eligible_on`` is 2026-10-01 (its first instant 2026-10-01T07:00Z)
and the referral is decidable on 2026-10-02. Support's partner flag is set by
the real operation, on the real clock, i.e. after that instant.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

import asyncpg

from payout_scheduler.metrics import SchedulerMetrics
from payout_scheduler.passes import run_pass
from referral_devtools import synthetic as bill
from referral_ops import partners
from referral_runtime.db import create_pool
from referral_runtime.settings import Settings
from tests.e2e.harness import (
    active_code,
    inbox_reaches,
    producer,
    read_topic,
    referral_status,
    running_consumer,
)

T0 = datetime(2026, 6, 1, 17, tzinfo=UTC)
SIGNED_UP = datetime(2026, 7, 8, 17, tzinfo=UTC)
PAID = datetime(2026, 7, 9, 18, tzinfo=UTC)
BEFORE = datetime(2026, 10, 1, 6, 59, tzinfo=UTC)  # 2026-09-30 23:59 in Los Angeles
AFTER = datetime(2026, 10, 1, 7, 0, tzinfo=UTC)  # the first instant of eligible_on
VR = "virtual_receptionist"


async def test_later_facts_leave_a_due_payout_due_and_it_is_paid_in_the_program_currency(
    settings: Settings, db: asyncpg.Connection
) -> None:
    referrers = [
        bill.subscription_created("ref-late", "ref-late-s1", VR, T0, organization_id="org-r"),
        bill.subscription_created("ref-early", "ref-early-s1", VR, T0, organization_id="org-r2"),
        bill.subscription_created("ref-partner", "ref-partner-s1", VR, T0),
    ]
    pool = await create_pool(settings.database_url, size=2)
    try:
        async with running_consumer(settings), producer(settings) as p:
            await bill.publish(p, settings.topics, referrers)
            await inbox_reaches(db, len(referrers))
            late, early = await active_code(db, "ref-late"), await active_code(db, "ref-early")
            partner = await active_code(db, "ref-partner")

            def referee(account: str, code: str, **extra: str) -> list[bill.Event]:
                currency = extra.pop("currency", "USD")
                return [
                    bill.subscription_created(
                        account, f"{account}-s", VR, SIGNED_UP, code=code, currency=currency,
                        **extra,
                    ),
                    bill.invoice_paid(
                        account, f"{account}-s", f"{account}-i1", 19900, PAID, currency=currency
                    ),
                ]  # fmt: skip

            referees = [
                *referee("late-org", late, organization_id="org-shared"),
                *referee("early-org", early, organization_id="org-shared-2"),
                *referee("late-partner", partner),
                *referee("billed-in-cad", late, currency="CAD"),
            ]
            await bill.publish(p, settings.topics, referees)
            await inbox_reaches(db, len(referrers) + len(referees))
            assert await referral_status(db, "late-org") == ("qualified", None)

            # The referrers join the referees' organizations: one at the first instant of
            # eligible_on (too late to count), one the minute before (it counts).
            later = [
                bill.subscription_created(
                    "ref-late", "ref-late-s2", VR, AFTER, organization_id="org-shared"
                ),
                bill.subscription_created(
                    "ref-early", "ref-early-s2", VR, BEFORE, organization_id="org-shared-2"
                ),
            ]
            await bill.publish(p, settings.topics, later)
            await inbox_reaches(db, len(referrers) + len(referees) + len(later))
            # Support makes ref-partner a partner today, after eligible_on.
            done = await partners.set_partner(db, "ref-partner", True, actor="e2e", tz=settings.tz)
            assert done.changed

            assert await referral_status(db, "late-org") == ("qualified", None)
            assert await referral_status(db, "early-org") == ("ineligible", "same_organization")
            assert await referral_status(db, "late-partner") == ("qualified", None)

            result = await run_pass(pool, settings, date(2026, 10, 2), SchedulerMetrics())
            assert result.total == 4
            decided = {
                r["referee_account_id"]: (r["outcome"], r["reason"], r["amount_cents"], r["currency"])
                for r in await db.fetch("select * from payouts")
            }  # fmt: skip
            assert decided == {
                "late-org": ("due", None, 100_000, "USD"),
                "late-partner": ("due", None, 100_000, "USD"),
                "billed-in-cad": ("due", None, 100_000, "USD"),
                "early-org": ("ineligible", "same_organization", 0, "USD"),
            }
            received = await read_topic(settings, settings.topics.payout_due, expect=3)
    finally:
        await pool.close()
    due = {m.json()["data"]["referee_account_id"]: m.json()["data"] for m in received}
    assert set(due) == {"late-org", "late-partner", "billed-in-cad"}
    assert {(d["amount_cents"], d["currency"], d["eligible_on"]) for d in due.values()} == {
        (100_000, "USD", "2026-10-01")
    }

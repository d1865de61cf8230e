"""Legacy credits only from their credit start, however late an invoice is consumed.

Real broker and consumer: support imports a legacy referral with a credit start; an
invoice paid before it that the consumer applies only afterwards earns nothing (the
old system credited it), one paid after earns one ``referral.credit.earned``, in the
program currency whatever the referee is billed in.
"""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg

from referral_devtools import synthetic as bill
from referral_ops import legacy
from referral_runtime.referral_state import Outbound
from referral_runtime.settings import Settings
from tests.e2e.harness import inbox_reaches, producer, read_topic, running_consumer

SIGNED_UP = datetime(2026, 1, 12, 17, tzinfo=UTC)
CREDIT_FROM = datetime(2026, 6, 1, 7, tzinfo=UTC)  # 2026-06-01 00:00 in Los Angeles
BEFORE = datetime(2026, 6, 1, 6, 30, tzinfo=UTC)  # still May 31 in Los Angeles
AFTER = datetime(2026, 6, 2, 17, tzinfo=UTC)


async def test_invoices_before_the_credit_start_earn_nothing_however_late_they_arrive(
    settings: Settings, db: asyncpg.Connection
) -> None:
    async with running_consumer(settings), producer(settings) as p:
        await bill.publish(
            p,
            settings.topics,
            [bill.subscription_created("old-referee", "o-s", "chat", SIGNED_UP, currency="CAD")],
        )
        await inbox_reaches(db, 1)
        done = await legacy.import_legacy(
            db,
            [legacy.LegacyRow(2, "old-referrer", "old-referee", 500, "USD")],
            file="legacy.csv",
            actor="support-e2e",
            out=Outbound.from_settings(settings),
            credit_from=CREDIT_FROM,
        )
        assert (done.new, done.credits) == (1, 0)

        # Billing's invoices arrive after the import, the old one included.
        await bill.publish(
            p,
            settings.topics,
            [
                bill.invoice_paid(
                    "old-referee", "o-s", "paid-before", 4900, BEFORE, currency="CAD"
                ),
                bill.invoice_paid("old-referee", "o-s", "paid-after", 4900, AFTER, currency="CAD"),
                bill.invoice_paid("old-referee", "o-s", "nothing-paid", 0, AFTER, currency="CAD"),
            ],
        )
        await inbox_reaches(db, 4)
        credited = await read_topic(settings, settings.topics.credit_earned, expect=1)

    assert [m.json()["data"] for m in credited] == [
        {
            "referrer_account_id": "old-referrer",
            "referee_account_id": "old-referee",
            "invoice_id": "paid-after",
            "amount_cents": 500,
            "currency": "USD",
        }
    ]
    assert await db.fetchval("select array_agg(invoice_id) from legacy_credits") == ["paid-after"]
    stored = await db.fetchval(
        "select credit_from from legacy_referrals where referee_account_id = 'old-referee'"
    )
    assert stored == CREDIT_FROM

"""A cancellation that arrives after ``payout.due`` was emitted claws nothing back, but is recorded.

Real broker and Postgres: billing events through the consumer, the decision by a real
``payout-scheduler tick`` process, the payout read back from its topic.

The cancellation is dated before ``eligible_on`` (it occurred, and service ended, in
March), so had it been known it would have forfeited the referral. A pass waits until
the consumer group has applied every billing event published when the pass began, so
"arrives after ``payout.due``" means billing publishes it only after the pass that
decided (a late, back-dated cancellation); the consumer applies it then.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime
from pathlib import Path

import asyncpg

from referral_devtools import synthetic as bill
from referral_program.decisions import ReferralFacts, SubscriptionSpan, decide
from referral_runtime.settings import Settings
from tests.e2e.harness import inbox_reaches, producer, read_topic, running_consumer, spawn

T0 = datetime(2027, 1, 5, 17, 0, tzinfo=UTC)
SIGNED_UP = datetime(2027, 1, 8, 17, 0, tzinfo=UTC)
PAID = datetime(2027, 1, 9, 18, 0, tzinfo=UTC)  # eligible_on 2027-04-01, decidable 04-02
CANCELLED = datetime(2027, 3, 20, 16, 0, tzinfo=UTC)  # before eligible_on ...
SERVICE_ENDS = datetime(2027, 3, 25, 0, 0, tzinfo=UTC)  # ... and so is the end of service
VR = "virtual_receptionist"


def _tick(settings: Settings, as_of: str, log: Path) -> int:
    proc = spawn(["payout-scheduler", "tick", "--as-of", as_of, "--allow-future"], settings, log)
    return proc.wait(60)


async def test_a_cancellation_after_payout_due_changes_nothing_but_is_recorded(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    log = tmp_path / "tick.log"
    async with running_consumer(settings), producer(settings) as p:
        await bill.publish(
            p, settings.topics, [bill.subscription_created("ref-a", "ref-a-s", VR, T0)]
        )
        await inbox_reaches(db, 1)
        code = await db.fetchval("select code from referral_codes where account_id = 'ref-a'")
        await bill.publish(
            p,
            settings.topics,
            [
                bill.subscription_created("vr", "vr-s", VR, SIGNED_UP, code=code),
                bill.invoice_paid("vr", "vr-s", "vr-i1", 19900, PAID),
            ],
        )
        await inbox_reaches(db, 3)

        assert await asyncio.to_thread(_tick, settings, "2027-04-02", log) == 0, log.read_text()
        first = await read_topic(settings, settings.topics.payout_due, expect=1)
        assert len(first) == 1
        payout_id = first[0].json()["data"]["payout_id"]
        payout = dict(await db.fetchrow("select * from payouts where referee_account_id = 'vr'"))
        assert (payout["outcome"], payout["amount_cents"]) == ("due", 100_000)
        referral = await db.fetchrow(
            "select status, reason from referrals where referee_account_id = 'vr'"
        )

        # Billing publishes, after the payout.due went out, a cancellation dated before
        # eligible_on: it would have forfeited the referral, had the pass known it.
        await bill.publish(
            p,
            settings.topics,
            [
                bill.subscription_cancelled(
                    "vr", "vr-s", CANCELLED, effective_at=SERVICE_ENDS, reason="moving"
                )
            ],
        )
        await inbox_reaches(db, 4)

        # Later passes (the next day, and one after the cancellation) decide nothing anew.
        for as_of in ("2027-04-03", "2027-04-11"):
            assert await asyncio.to_thread(_tick, settings, as_of, log) == 0, log.read_text()

    # Recorded ...
    cancellation = await db.fetchrow(
        """select subscription_id, cancelled_at, effective_at, reason
           from cancellations where account_id = 'vr'"""
    )
    assert cancellation is not None
    assert (
        cancellation["subscription_id"],
        cancellation["effective_at"],
        cancellation["reason"],
    ) == ("vr-s", SERVICE_ENDS, "moving")
    # ... a cancellation that counts (the same facts, had the pass known them, forfeit) ...
    row = await db.fetchrow("select * from referrals where referee_account_id = 'vr'")
    known_before = ReferralFacts(
        row["referral_id"], "ref-a", "vr", row["referral_code"], row["status"], row["reason"],
        row["first_payment_at"], (), None,
        (SubscriptionSpan("vr-s", VR, SIGNED_UP, cancellation["cancelled_at"],
                          cancellation["effective_at"]),),
    )  # fmt: skip
    would_have_been = decide(known_before, date(2027, 4, 2), settings.tz, currency="USD")
    assert would_have_been is not None
    assert (would_have_been.outcome, would_have_been.reason) == (
        "forfeited",
        "cancelled_before_eligibility",
    )
    # ... but nothing clawed back: the payout row is as it was, the referral is not forfeited,
    assert (
        dict(await db.fetchrow("select * from payouts where referee_account_id = 'vr'")) == payout
    )
    assert await db.fetchval("select count(*) from payouts") == 1
    assert (
        await db.fetchrow("select status, reason from referrals where referee_account_id = 'vr'")
    ) == referral
    # ... and no second payout.due (nor a redelivery under another id) is published.
    received = await read_topic(settings, settings.topics.payout_due, expect=2, timeout=5)
    assert [m.json()["data"]["payout_id"] for m in received] == [payout_id]
    assert (
        await db.fetchval(
            "select count(*) from outbox where topic = $1", settings.topics.payout_due
        )
        == 1
    )

"""The consumer on the real broker and the real Postgres: the program's outcomes end to end."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

from referral_devtools import synthetic as bill
from referral_program import codes
from referral_runtime.settings import Settings
from tests.conftest import wait_for
from tests.e2e.harness import active_code, producer, read_topic, running_consumer

T0 = datetime(2027, 1, 5, 17, 0, tzinfo=UTC)


async def _drain(db: asyncpg.Connection, n: int) -> None:
    async def inbox_has_all() -> bool:
        return await db.fetchval("select count(*) from inbox") >= n

    await wait_for(inbox_has_all, timeout=60)


async def test_referral_outcomes_for_every_rule(settings: Settings, db: asyncpg.Connection) -> None:
    referrers = {
        "ref-a": bill.subscription_created(
            "ref-a",
            "sub-ref-a",
            "virtual_receptionist",
            T0,
            email="owner@acme-dental.com",
            organization_id="org-acme",
            payment_fingerprint="fp-acme",
        ),
        "ref-gmail": bill.subscription_created(
            "ref-gmail", "sub-ref-gmail", "voice_assistant", T0, email="someone@gmail.com"
        ),
        "ref-partner": bill.subscription_created("ref-partner", "sub-ref-partner", "chat", T0),
    }
    async with running_consumer(settings), producer(settings) as p:
        await bill.publish(p, settings.topics, referrers.values())
        await _drain(db, 3)
        await db.execute(
            "update accounts set is_partner = true, partner_periods = '{(,)}' where account_id = 'ref-partner'"
        )
        code_a = await active_code(db, "ref-a")
        code_gmail = await active_code(db, "ref-gmail")
        code_partner = await active_code(db, "ref-partner")
        t = T0 + timedelta(days=3)
        ev = [
            # eligible, paid -> qualified; code typed sloppily
            bill.subscription_created(
                "ok-vr",
                "s-ok-vr",
                "virtual_receptionist",
                t,
                code=code_a.lower().replace("-", " "),
                email="x@ok-vr.com",
            ),
            bill.invoice_paid("ok-vr", "s-ok-vr", "i-ok-vr-0", 0, t),  # $0 invoice: not a payment
            bill.invoice_paid("ok-vr", "s-ok-vr", "i-ok-vr-1", 19900, t + timedelta(days=1)),
            # eligible, nothing paid yet -> pending
            bill.subscription_created(
                "ok-pending", "s-ok-pending", "voice_assistant", t, code=code_a
            ),
            # same gmail domain is NOT same_email_domain -> qualified
            bill.subscription_created(
                "gm", "s-gm", "voice_assistant", t, code=code_gmail, email="other@gmail.com"
            ),
            bill.invoice_paid("gm", "s-gm", "i-gm", 5000, t),
            bill.subscription_created("ref-a", "s-self", "voice_assistant", t, code=code_a),
            bill.subscription_created(
                "same-org",
                "s-org",
                "virtual_receptionist",
                t,
                code=code_a,
                organization_id="org-acme",
            ),
            bill.subscription_created(
                "same-fp",
                "s-fp",
                "virtual_receptionist",
                t,
                code=code_a,
                payment_fingerprint="fp-acme",
            ),
            bill.subscription_created(
                "same-dom",
                "s-dom",
                "virtual_receptionist",
                t,
                code=code_a,
                email="Employee@ACME-dental.com",
            ),
            bill.subscription_created(
                "not-new",
                "s-notnew",
                "virtual_receptionist",
                t,
                code=code_a,
                first_time_client=False,
            ),
            # paid before the referral -> existing client
            bill.invoice_paid("paid-before", "s-old", "i-old", 1000, t - timedelta(days=30)),
            bill.subscription_created(
                "paid-before", "s-pb", "virtual_receptionist", t, code=code_a
            ),
            bill.subscription_created(
                "partnered", "s-partnered", "virtual_receptionist", t, code=code_partner
            ),
            bill.subscription_created(
                "unknown", "s-unknown", "virtual_receptionist", t, code="ZZZZ-ZZZZ"
            ),
            bill.subscription_created(
                "malformed", "s-malformed", "virtual_receptionist", t, code="not a code"
            ),
        ]
        await bill.publish(p, settings.topics, ev)
        await _drain(db, 3 + len(ev))
        rows = {
            r["referee_account_id"]: (r["status"], r["reason"], r["referrer_account_id"])
            for r in await db.fetch("select * from referrals")
        }
    assert rows == {
        "ok-vr": ("qualified", None, "ref-a"),
        "ok-pending": ("pending", None, "ref-a"),
        "gm": ("qualified", None, "ref-gmail"),
        "ref-a": ("ineligible", "self_referral", "ref-a"),
        "same-org": ("ineligible", "same_organization", "ref-a"),
        "same-fp": ("ineligible", "shared_payment_method", "ref-a"),
        "same-dom": ("ineligible", "same_email_domain", "ref-a"),
        "not-new": ("ineligible", "existing_client", "ref-a"),
        "paid-before": ("ineligible", "existing_client", "ref-a"),
        "partnered": ("ineligible", "partner_ineligible", "ref-partner"),
    }
    first_payment = await db.fetchval(
        "select first_payment_invoice_id from referrals where referee_account_id = 'ok-vr'"
    )
    assert first_payment == "i-ok-vr-1"
    outcomes = dict(
        await db.fetch(
            "select subscription_id, code_outcome from subscriptions where subscription_id = any($1)",
            ["s-unknown", "s-malformed"],
        )
    )
    assert outcomes == {"s-unknown": "unknown", "s-malformed": "unknown"}


async def test_code_assigned_once_per_account(settings: Settings, db: asyncpg.Connection) -> None:
    accounts = [f"acct-{i}" for i in range(40)]
    events = [bill.subscription_created(a, f"sub-{a}", "voice_assistant", T0) for a in accounts] + [
        bill.invoice_paid(a, f"sub-{a}", f"inv-{a}", 100, T0) for a in accounts
    ]
    async with running_consumer(settings), producer(settings) as p:
        await bill.publish(p, settings.topics, events)
        await bill.publish(p, settings.topics, events[:10])  # redelivered by billing
        await _drain(db, len(events))
        received = await read_topic(settings, settings.topics.code_assigned, expect=len(accounts))
    by_account = {}
    for message in received:
        body = message.json()
        assert message.key == body["data"]["account_id"].encode()
        assert body["event_type"] == "referral_code.assigned"
        by_account.setdefault(body["data"]["account_id"], []).append(body)
    assert sorted(by_account) == sorted(accounts)
    assert all(len(v) == 1 for v in by_account.values())
    sample = by_account["acct-0"][0]["data"]
    assert codes.normalise(sample["code"]) == await db.fetchval(
        "select code from referral_codes where account_id = 'acct-0'"
    )
    assert sample["link"].endswith("/" + sample["code"])

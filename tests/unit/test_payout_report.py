"""`referrals payouts`: the lines, the totals, and CSV that a spreadsheet opens as it is."""

from __future__ import annotations

import csv
import io
import json
import uuid
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from referral_ops.payout_report import (
    BOM,
    CSV_COLUMNS,
    STATUSES,
    PayoutReport,
    decimal_amount,
    parse_month,
    parse_statuses,
    payout_line,
    render_csv,
    render_table,
    spreadsheet_safe,
)
from referral_ops.support import InvalidInput

LA = ZoneInfo("America/Los_Angeles")
TODAY = date(2027, 4, 26)


def row(n: int, status: str, **extra: Any) -> dict[str, Any]:
    base = {
        "payout_id": uuid.UUID(int=n),
        "referrer_account_id": f"ref-{n}",
        "payee": f"payee-{n}",
        "referee_account_id": f"referee-{n}",
        "plan_family": "virtual_receptionist",
        "amount_cents": 100_000,
        "currency": "USD",
        "eligible_on": date(2027, 4, 1),
        "pay_by": date(2027, 4, 21),
        "attempt": 1,
        "status": status,
        "paid_at": None,
        "paid_attempt": None,
        "paid_amount_cents": None,
        "paid_currency": None,
        "paid_reference": None,
        "failed_at": None,
        "failure_reason": None,
    }
    return base | extra


PAID_AT = datetime(2027, 4, 13, 5, 30, tzinfo=UTC)  # still Apr 12 in Los Angeles
ROWS = [
    row(1, "paid", paid_at=PAID_AT, paid_attempt=1, paid_amount_cents=100_000,
        paid_currency="USD", paid_reference="ACH-0412-1"),
    row(2, "due"),  # pay_by 2027-04-21 has ended: overdue
    row(3, "due", eligible_on=date(2027, 5, 1), pay_by=date(2027, 5, 21), amount_cents=20_000,
        plan_family="voice_assistant"),
    row(4, "failed", attempt=1, failed_at=PAID_AT, failure_reason="payee_details_missing"),
    row(5, "mismatched", paid_at=PAID_AT, paid_attempt=1, paid_amount_cents=10_000,
        paid_currency="USD", paid_reference="ACH-0412-5"),
    row(6, "due", payee="=HYPERLINK(\"http://evil\",\"x\")", referrer_account_id="+1 555",
        eligible_on=date(2027, 5, 1), pay_by=date(2027, 5, 21)),
]  # fmt: skip


def report(statuses: tuple[str, ...] = STATUSES) -> PayoutReport:
    lines = [payout_line(r, TODAY, LA) for r in ROWS]
    return PayoutReport(TODAY, None, statuses, [x for x in lines if x.status in statuses])


def test_lines_show_overdue_and_the_paid_date_in_program_time() -> None:
    lines = {line.payout_id.int: line for line in report().payouts}
    assert lines[1].status == "paid" and lines[1].paid_on == date(2027, 4, 12)
    assert lines[2].status == "overdue"
    assert lines[3].status == "due"
    assert lines[4].note == "payee_details_missing"
    assert lines[5].note == "paid $100.00"


def test_totals_per_month_and_status_then_overall() -> None:
    totals = [(t.month, t.status, t.payouts, t.amount_cents) for t in report().totals()]
    assert totals == [
        ("2027-04", "overdue", 1, 100_000),
        ("2027-04", "failed", 1, 100_000),
        ("2027-04", "paid", 1, 100_000),
        ("2027-04", "mismatched", 1, 100_000),
        ("2027-05", "due", 2, 120_000),
        ("all", "due", 2, 120_000),
        ("all", "overdue", 1, 100_000),
        ("all", "failed", 1, 100_000),
        ("all", "paid", 1, 100_000),
        ("all", "mismatched", 1, 100_000),
    ]


def test_csv_opens_in_a_spreadsheet_as_it_is() -> None:
    text = render_csv(report())
    assert text.startswith(BOM)
    assert "\r\n" in text and "\n" not in text.replace("\r\n", "")
    rows = list(csv.DictReader(io.StringIO(text.removeprefix(BOM))))
    assert tuple(rows[0]) == CSV_COLUMNS
    by_id = {uuid.UUID(r["payout_id"]).int: r for r in rows}
    paid = by_id[1]
    assert (paid["amount"], paid["amount_cents"], paid["currency"]) == ("1000.00", "100000", "USD")
    assert (paid["paid_on"], paid["paid_at"]) == ("2027-04-12", "2027-04-13T05:30:00Z")
    assert paid["reference"] == "ACH-0412-1" and paid["status"] == "paid"
    assert by_id[5]["paid_amount"] == "100.00"
    assert by_id[2]["status"] == "overdue" and by_id[2]["paid_on"] == ""
    # Nothing a spreadsheet would evaluate as a formula.
    assert by_id[6]["payee"] == '\'=HYPERLINK("http://evil","x")'
    assert by_id[6]["referrer_account_id"] == "'+1 555"
    for r in rows:
        for column in ("payee", "referrer_account_id", "reference", "failure_reason"):
            assert not r[column].startswith(("=", "+", "-", "@")), (column, r[column])


@pytest.mark.parametrize(
    ("text", "safe"),
    [("=1+2", "'=1+2"), ("-3", "'-3"), ("@SUM(A1)", "'@SUM(A1)"), ("\tx", "'\tx"),
     ("acct_7Hq2", "acct_7Hq2"), ("", ""), (None, "")],
)  # fmt: skip
def test_spreadsheet_safe(text: str | None, safe: str) -> None:
    assert spreadsheet_safe(text) == safe


@pytest.mark.parametrize(
    ("cents", "text"), [(100_000, "1000.00"), (5, "0.05"), (123_456_789, "1234567.89"), (0, "0.00")]
)
def test_decimal_amounts_are_exact(cents: int, text: str) -> None:
    assert decimal_amount(cents) == text


def test_status_filter() -> None:
    only = report(parse_statuses("overdue,failed"))
    assert sorted(line.status for line in only.payouts) == ["failed", "overdue"]
    assert parse_statuses(None) == STATUSES
    assert parse_statuses(" Paid , paid") == ("paid",)


@pytest.mark.parametrize("text", ["sent", "due,late", ","])
def test_unknown_status_says_which_exist(text: str) -> None:
    with pytest.raises(InvalidInput, match="choose among due, overdue, failed, paid"):
        parse_statuses(text)


@pytest.mark.parametrize("text", ["2027-4", "April", "2027-13", "27-04"])
def test_month_must_be_yyyy_mm(text: str) -> None:
    with pytest.raises(InvalidInput, match="expected a month like 2027-04"):
        parse_month(text)
    assert parse_month("2027-04") == date(2027, 4, 1)


def test_table_and_json() -> None:
    table = render_table(report())
    assert "PAYOUT_ID" in table and "overdue" in table and "ACH-0412-1" in table
    assert "totals" in table
    document = json.loads(json.dumps(report().to_json()))
    assert document["payouts"][0]["amount_cents"] == 100_000
    assert {t["status"] for t in document["totals"]} == {
        "due", "overdue", "failed", "paid", "mismatched"
    }  # fmt: skip
    assert render_table(report(("paid_twice",))).endswith("no payouts")

"""Finance's status topic at the edge: every record is one report or one dead letter."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest

from payout_scheduler.status_ingest import StatusReport, parse_status_record, parse_status_records
from referral_devtools import finance
from referral_program.payouts import ReportKind
from referral_runtime.dead_letters import DeadLetter
from tests.unit.records import Rec

AT = datetime(2027, 4, 12, 17, 5, tzinfo=UTC)
PAYOUT = uuid.UUID("0e6f1c2d-3b4a-5968-8776-a5b4c3d2e1f0")
PAID = finance.payout_paid(PAYOUT, 2, AT, 100_000, reference="ACH-1")
FAILED = finance.payout_failed(PAYOUT, 1, AT, "rejected_by_bank")


def parse(value: bytes | None, limit: int = 65536) -> StatusReport | DeadLetter:
    return parse_status_record(Rec("finance.payout.status", value), limit)


def test_both_kinds_parse_into_reports() -> None:
    paid = parse(json.dumps(PAID).encode())
    assert isinstance(paid, StatusReport)
    report = paid.report()
    assert (report.kind, report.attempt, report.amount_cents, report.reference) == (
        ReportKind.PAID, 2, 100_000, "ACH-1"
    )  # fmt: skip
    assert report.at == AT and report.event_id == uuid.UUID(PAID["event_id"])
    failed = parse(json.dumps(FAILED).encode())
    assert isinstance(failed, StatusReport)
    assert (failed.report().kind, failed.report().reason) == (ReportKind.FAILED, "rejected_by_bank")


def _with(event: dict[str, object], **data: object) -> bytes:
    body = dict(event)
    body["data"] = {**event["data"], **data}  # type: ignore[dict-item]
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("value", "reason", "detail"),
    [
        (b"{not json", "unparseable", "not a JSON object"),
        (None, "unparseable", "not a JSON object"),
        (b"[]", "unparseable", "JSON but not an object"),
        (json.dumps({**PAID, "schema_version": 2}).encode(), "unsupported_schema_version", "2 > supported 1"),
        (json.dumps({**PAID, "event_type": "payout.cancelled"}).encode(), "event_type_mismatch",
         "'payout.cancelled' on a topic that carries 'payout.paid' or 'payout.failed'"),
        (_with(PAID, amount_cents="100000"), "invalid", "data.amount_cents"),
        (_with(PAID, attempt=0), "invalid", "data.attempt"),
        (_with(FAILED, reason=""), "invalid", "data.reason"),
        (_with(FAILED, reason="bad\u0000byte"), "invalid", "NUL"),
    ],
)  # fmt: skip
def test_what_cannot_be_applied_is_dead_lettered_with_a_reason(
    value: bytes | None, reason: str, detail: str
) -> None:
    result = parse(value)
    assert isinstance(result, DeadLetter), result
    assert result.reason == reason and detail in result.detail, result.detail
    assert "ACH-1" not in result.detail  # field paths and messages, never values


def test_oversized() -> None:
    result = parse(json.dumps(PAID).encode(), limit=100)
    assert isinstance(result, DeadLetter) and result.reason == "oversized"


def test_a_batch_splits_into_reports_and_dead_letters_and_loses_nothing() -> None:
    records = [Rec("t", json.dumps(PAID).encode(), offset=0), Rec("t", b"x", offset=1),
               Rec("t", json.dumps(FAILED).encode(), offset=2)]  # fmt: skip
    reports, dead = parse_status_records(records, 65536)
    assert [r.record.offset for r in reports] == [0, 2]
    assert [d.record.offset for d in dead] == [1]

"""The edge: every record becomes exactly one validated event or one dead letter."""

from __future__ import annotations

import json

import pytest

from referral_consumer.ingest import DeadLetter, Parsed, parse_record
from referral_devtools import synthetic as bill
from tests.unit.records import TOPICS, Rec, T


def parse(topic: str, value: bytes | None, limit: int = 65536) -> Parsed | DeadLetter:
    return parse_record(Rec(topic, value), TOPICS, limit)


def test_valid_events_parse() -> None:
    for topic, event in [
        ("created", bill.subscription_created("a", "s", "chat", T, code="ABCD-EFGH")),
        ("paid", bill.invoice_paid("a", "s", "i", 100, T)),
        ("cancelled", bill.subscription_cancelled("a", "s", T)),
    ]:
        result = parse(topic, json.dumps(event).encode())
        assert isinstance(result, Parsed), result
        assert str(result.event.event_id) == event["event_id"]


def test_cancellation_effective_at_defaults_to_occurred_at() -> None:
    result = parse("cancelled", json.dumps(bill.subscription_cancelled("a", "s", T)).encode())
    assert isinstance(result, Parsed)
    assert result.event.data.effective_at == T  # type: ignore[union-attr]


GOOD = bill.invoice_paid("a", "s", "i", 100, T)


@pytest.mark.parametrize(
    ("value", "reason", "detail"),
    [
        (b"\xff\xfe{", "unparseable", "not a JSON object"),
        (b"", "unparseable", "not a JSON object"),
        (None, "unparseable", "not a JSON object"),
        (b"[1, 2]", "unparseable", "not an object"),
        (json.dumps({**GOOD, "schema_version": 2}).encode(), "unsupported_schema_version", "2 > supported 1"),
        (json.dumps({**GOOD, "event_type": "subscription.created"}).encode(), "event_type_mismatch", "carries 'invoice.paid'"),
        (json.dumps({**GOOD, "data": {**GOOD["data"], "amount_paid_cents": -5}}).encode(), "invalid", "data.amount_paid_cents"),
        (json.dumps({**GOOD, "data": {**GOOD["data"], "amount_paid_cents": 1.5}}).encode(), "invalid", "data.amount_paid_cents"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "event_id"}).encode(), "invalid", "event_id: Field required"),
        (json.dumps({**GOOD, "occurred_at": "2027-01-17T15:04:05"}).encode(), "invalid", "occurred_at"),
        (json.dumps({**GOOD, "data": {**GOOD["data"], "invoice_id": "bad\u0000id"}}).encode(), "invalid", "NUL"),
        (json.dumps({**GOOD, "pad": "x" * 70_000}).encode(), "oversized", "> limit of 65536"),
    ],
)  # fmt: skip
def test_bad_input_is_dead_lettered_with_a_reason(
    value: bytes | None, reason: str, detail: str
) -> None:
    result = parse("paid", value)
    assert isinstance(result, DeadLetter)
    assert result.reason.value == reason
    assert detail in result.detail


def test_dead_letter_detail_carries_no_personal_data() -> None:
    event = bill.subscription_created("a", "s", "chat", T, email="jane.doe@example.org")
    event["data"]["currency"] = "dollars"  # invalid, next to an email address
    result = parse("created", json.dumps(event).encode())
    assert isinstance(result, DeadLetter)
    assert "jane" not in result.detail and "example.org" not in result.detail

"""Free text never dead-letters a money fact: it is cut or cleaned, and what was done is noted."""

from __future__ import annotations

import json
from typing import Any

import pytest

from referral_consumer.free_text import CUT, NUL_REMOVED, Amendment
from referral_consumer.ingest import DeadLetter, Parsed, parse_record
from referral_devtools import synthetic as bill
from tests.unit.records import TOPICS, Rec, T


def parse(topic: str, event: dict[str, Any]) -> Parsed | DeadLetter:
    return parse_record(Rec(topic, json.dumps(event).encode()), TOPICS, 65536)


def applied(topic: str, event: dict[str, Any]) -> Parsed:
    result = parse(topic, event)
    assert isinstance(result, Parsed), result
    return result


def test_a_long_cancellation_reason_is_cut_and_the_cancellation_applied() -> None:
    result = applied("cancelled", bill.subscription_cancelled("a", "s", T, reason="x" * 600))
    assert result.event.data.reason == "x" * 500  # type: ignore[union-attr]
    assert result.amended == (Amendment("data.reason", CUT),)


def test_a_nul_in_free_text_is_removed() -> None:
    result = applied("cancelled", bill.subscription_cancelled("a", "s", T, reason="too\u0000dear"))
    assert result.event.data.reason == "toodear"  # type: ignore[union-attr]
    assert result.amended == (Amendment("data.reason", NUL_REMOVED),)

    both = applied(
        "cancelled", bill.subscription_cancelled("a", "s", T, reason="\u0000" + "y" * 501)
    )
    assert both.event.data.reason == "y" * 500  # type: ignore[union-attr]
    assert both.amended == (Amendment("data.reason", NUL_REMOVED), Amendment("data.reason", CUT))


def test_plan_id_is_free_text() -> None:
    long = applied("created", bill.subscription_created("a", "s", "chat", T, plan_id="p" * 250))
    assert long.event.data.plan_id == "p" * 200  # type: ignore[union-attr]
    assert long.amended == (Amendment("data.plan_id", CUT),)
    nul = applied("created", bill.subscription_created("a", "s", "chat", T, plan_id="vr\u0000-1"))
    assert nul.event.data.plan_id == "vr-1"  # type: ignore[union-attr]
    assert nul.amended == (Amendment("data.plan_id", NUL_REMOVED),)


def test_an_email_keeps_its_domain_whatever_its_local_part() -> None:
    long = applied(
        "created", bill.subscription_created("a", "s", "chat", T, email="x" * 400 + "@acme.test")
    )
    assert long.amended == (Amendment("data.customer.email", CUT),)
    nul = applied(
        "created", bill.subscription_created("a", "s", "chat", T, email="j\u0000@acme.test")
    )
    assert nul.amended == (Amendment("data.customer.email", NUL_REMOVED),)
    plain = applied("created", bill.subscription_created("a", "s", "chat", T, email="j@acme.test"))
    assert plain.amended == ()


def test_unknown_fields_are_ignored_whatever_they_hold() -> None:
    event = bill.invoice_paid("a", "s", "i", 100, T)
    event["data"]["note"] = "\u0000" * 10
    assert applied("paid", event).amended == ()


@pytest.mark.parametrize(
    ("topic", "event", "detail"),
    [
        ("paid", bill.invoice_paid("a\u0000b", "s", "i", 100, T), "data.account_id"),
        ("created", bill.subscription_created("a", "s", "chat\u0000", T), "data.plan_family"),
        ("created", bill.subscription_created("a", "s", "chat", T, organization_id="o\u0000"), "data.customer.organization_id"),
        ("created", bill.subscription_created("a", "s", "chat", T, email="j@ac\u0000me.test"), "data.customer.email"),
        ("created", bill.subscription_created("a", "s", "chat", T, email="j@" + "d" * 250 + ".com"), "longer than 253"),
        ("cancelled", bill.subscription_cancelled("a", "s\u0000", T), "data.subscription_id"),
    ],
)  # fmt: skip
def test_a_field_the_rules_read_that_cannot_be_stored_still_dead_letters(
    topic: str, event: dict[str, Any], detail: str
) -> None:
    result = parse(topic, event)
    assert isinstance(result, DeadLetter)
    assert result.reason.value == "invalid"
    assert detail in result.detail

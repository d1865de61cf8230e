"""The compiled decoders say what the pydantic models say: same verdicts, same values,
same dead-letter reasons and details, same free-text amendments."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field, ValidationError

from referral_consumer.ingest import DeadLetter, Parsed, parse_record, parse_with_models
from referral_events import INBOUND_EVENT_TYPES
from referral_events.compiled import Refused, compile_model
from referral_events.inbound import INBOUND_DECODERS
from tests.unit.records import TOPICS, Rec

TOPIC_OF = {event_type: topic for topic, event_type in TOPICS.items()}

ident = st.text(st.characters(codec="utf-8"), min_size=1, max_size=12)
#: Business times as billing writes them: RFC 3339 with an offset in whole minutes.
billing_times = st.datetimes(
    timezones=st.sampled_from(
        [UTC, timezone(timedelta(hours=-8)), timezone(timedelta(hours=5, minutes=30))]
    )
).map(lambda d: d.isoformat().replace("+00:00", "Z"))
times = st.one_of(
    billing_times,
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
    st.datetimes(timezones=st.just(None)).map(lambda d: d.isoformat() + "Z"),
    st.sampled_from(
        [
            "2027-01-17T15:04:05Z",
            "2027-01-17t15:04:05z",
            "2027-01-17T15:04:05z",
            "2027-01-17 15:04:05Z",
            "2027-01-17T15:04:05.1Z",
            "2027-01-17T15:04:05.123456Z",
            "2027-01-17T15:04:05.1234567Z",
            "2027-01-17T15:04:05.123456789+01:00",
            "2027-01-17T15:04:05.9999999Z",
            "2027-01-17T15:04:05",
            "2027-01-17T15:04Z",
            "2027-01-17T23:59:60Z",
            "2027-01-17T24:00:00Z",
            "2027-01-17T15:04:05+24:00",
            "2027-01-17T15:04:05+23:59",
            "2027-01-17T15:04:05-00:00",
            "2027-01-17T15:04:05+00:60",
            "2027-02-30T15:04:05Z",
            "2027-01-17T15:04:05.Z",
            "2027-01-17T15:04:05,5Z",
            "2027-01-17",
            "1700000000",
            "2027-01-17T15:04:05+0100",
            " 2027-01-17T15:04:05Z",
            "2027-01-17T15:04:05Z\n",
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59+14:00",
            "2027-W03-7T15:04:05Z",
            "20270117T150405Z",
        ]
    ),
)
uuids = st.uuids().flatmap(
    lambda u: st.sampled_from(
        [str(u), str(u).upper(), u.hex, "{" + str(u) + "}", "urn:uuid:" + str(u), str(u)[:-1]]
    )
)
tricky_text = st.sampled_from(
    [
        "",
        " ",
        "\t\n",
        "a",
        "a\x00b",
        "\x00",
        "x" * 200,
        "x" * 201,
        "x" * 600,
        "é",
        "USD",
        "EUR",
        "usd",
        "USD\n",
        "US",
        "USDX",
        "gmail.com",
        "j@acme.test",
        "j\x00@acme.test",
        "j@ac\x00me.test",
        "j@acme.test.",
        "@",
        "a@",
        "x" * 400 + "@acme.test",
        "j@" + "d" * 254,
        "j@" + "d" * 253,
        "ABCD-EFGH",
        "virtual_receptionist",
        "subscription.created",
        "invoice.paid",
        "subscription.cancelled",
    ]
)
numbers = st.sampled_from(
    [0, 1, 2, -1, 100, 10**12, 10**12 + 1, 2**63, 1.0, 1.5, -0.0, 1e3, "1", "100", True, False]
)
anything = st.one_of(
    st.none(),
    tricky_text,
    ident,
    numbers,
    times,
    uuids,
    st.builds(list),
    st.builds(dict),
    st.builds(lambda: [1]),
)


@st.composite
def documents(draw: st.DrawFn, times: st.SearchStrategy[str] = times) -> tuple[str, dict[str, Any]]:
    """An inbound event of some type, as billing would publish it (``times``: how it writes
    business times)."""
    event_type = draw(st.sampled_from(sorted(INBOUND_EVENT_TYPES)))
    common = {"account_id": draw(ident), "subscription_id": draw(ident)}
    if event_type == "subscription.created":
        customer = {
            k: draw(st.none() | v)
            for k, v in (
                ("email", st.emails() | tricky_text),
                ("organization_id", ident),
                ("payment_fingerprint", ident),
            )
            if draw(st.booleans())
        }
        data = {
            **common,
            "plan_family": draw(st.sampled_from(["virtual_receptionist", "chat"]) | ident),
            "plan_id": draw(ident | tricky_text),
            "currency": draw(st.sampled_from(["USD", "EUR"])),
            "referral_code": draw(st.none() | ident | tricky_text),
            "first_time_client": draw(st.booleans()),
            "customer": customer,
        }
    elif event_type == "invoice.paid":
        data = {
            **common,
            "invoice_id": draw(ident),
            "amount_paid_cents": draw(st.integers(0, 10**12)),
            "discount_cents": draw(st.integers(0, 10**12)),
            "currency": draw(st.sampled_from(["USD", "EUR"])),
        }
    else:
        data = {
            **common,
            "effective_at": draw(st.none() | times),
            "reason": draw(st.none() | ident | tricky_text),
        }
    for key in [k for k in data if k not in ("account_id", "subscription_id")]:
        if draw(st.integers(0, 5)) == 0:
            del data[key]  # optional fields left out (required ones make the document invalid)
    return event_type, {
        "event_id": str(draw(st.uuids())),
        "event_type": event_type,
        "schema_version": 1,
        "occurred_at": draw(times),
        "data": data,
    }


def _paths(document: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    paths = [prefix] if prefix else []
    if isinstance(document, dict):
        for key, value in document.items():
            paths += _paths(value, (*prefix, key))
    return paths


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    """A document with some fields replaced, removed or added, encoded some way."""
    event_type, document = draw(documents())
    for _ in range(draw(st.integers(0, 3))):
        path = draw(st.sampled_from(_paths(document)))
        parent = document
        for key in path[:-1]:
            parent = parent[key]
        if draw(st.integers(0, 4)) == 0:
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(anything)
    if draw(st.integers(0, 4)) == 0:  # an unknown field, at the top or in data
        data = document.get("data")
        target = data if isinstance(data, dict) and draw(st.booleans()) else document
        target[draw(ident)] = draw(anything)
    text = json.dumps(document, ensure_ascii=draw(st.booleans()))
    if draw(st.integers(0, 9)) == 0:  # a key given twice: the last one counts for both
        text = text[:-1] + f', "schema_version": {json.dumps(draw(anything))}}}'
    if draw(st.integers(0, 19)) == 0:
        text = draw(st.sampled_from(["", "[]", "null", "{", text[:-1], text + "x", '"x"']))
    return event_type, text.encode("utf-8", "surrogatepass")


def _plain(value: Any) -> Any:
    """Struct values as plain data; a time with its offset, since both are kept."""
    if isinstance(value, msgspec.Struct):
        return {k: _plain(v) for k, v in msgspec.structs.asdict(value).items()}
    if isinstance(value, datetime):
        return (value, value.utcoffset())
    return value


def _outcome(result: Parsed | DeadLetter) -> Any:
    if isinstance(result, DeadLetter):
        return ("dead", result.reason, result.detail)
    return ("parsed", _plain(result.event), result.foreign_currency, result.amended)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=mutated(), currency=st.sampled_from([None, "USD"]))
def test_the_compiled_path_and_the_models_agree_on_every_document(
    case: tuple[str, bytes], currency: str | None
) -> None:
    """Verdict, values, dead-letter reason and detail, amendments: all the same."""
    _, value = case
    for expected in INBOUND_EVENT_TYPES:  # also each type on the others' topics
        record = Rec(TOPIC_OF[expected], value)
        compiled = parse_record(record, TOPICS, 65536, currency)
        models = parse_with_models(record, expected, value, currency)
        assert _outcome(compiled) == _outcome(models)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=mutated())
def test_what_the_compiled_decoder_accepts_the_model_accepts_with_the_same_values(
    case: tuple[str, bytes],
) -> None:
    """The decoder alone, without the models' second look: never more lenient."""
    _, value = case
    for event_type, model in INBOUND_EVENT_TYPES.items():
        decoder = INBOUND_DECODERS[event_type]
        try:
            decoded = decoder.decode(value)
        except Refused:
            continue
        assert _plain(decoded) == _plain(decoder.from_model(model.model_validate_json(value)))


@settings(max_examples=500, deadline=None)
@given(case=documents(billing_times), ascii_only=st.booleans())
def test_valid_events_take_the_compiled_path(
    case: tuple[str, dict[str, Any]], ascii_only: bool
) -> None:
    """Billing's ordinary events never need the models (else the decoder would save nothing)."""
    event_type, document = case
    value = json.dumps(document, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    try:
        INBOUND_EVENT_TYPES[event_type].model_validate_json(value)
    except ValidationError:
        return  # the generator drew an invalid value (a blank id, say)
    INBOUND_DECODERS[event_type].decode(value)


def test_a_pattern_keeps_its_meaning() -> None:
    """pydantic's ``$`` is the end of the text; Python's would also match before a newline."""
    decoder = INBOUND_DECODERS["invoice.paid"]
    good = {
        "event_id": str(uuid.uuid4()),
        "event_type": "invoice.paid",
        "schema_version": 1,
        "occurred_at": "2027-01-17T15:04:05Z",
        "data": {
            "account_id": "a",
            "subscription_id": "s",
            "invoice_id": "i",
            "amount_paid_cents": 1,
            "currency": "USD",
        },
    }
    decoder.decode(json.dumps(good).encode())
    good["data"]["currency"] = "USD\n"
    with pytest.raises(Refused):
        decoder.decode(json.dumps(good).encode())


def test_a_model_feature_the_compiler_does_not_know_stops_it() -> None:
    class Unknown(BaseModel):
        value: str = Field(min_length=2)

    with pytest.raises(TypeError, match="compile"):
        compile_model(Unknown)

    class Valid(BaseModel):
        value: str = Field(max_length=2)

    assert compile_model(Valid).decode(b'{"value": "ab"}').value == "ab"
    with pytest.raises(Refused):
        compile_model(Valid).decode(b'{"value": "abc"}')
    with pytest.raises(ValidationError):
        Valid.model_validate_json(b'{"value": "abc"}')

"""The wire contract (docs/rules.md): the v1 models and the files generated from them.

The committed JSON Schema files and AsyncAPI document must be what the
generator writes today; the inbound models must accept what billing may send
(unknown fields included) and reject what it must not; the outbound models
must round-trip and emit exactly what their schemas declare.
"""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from referral_events import (
    DLQ_HEADERS,
    INBOUND_EVENT_TYPES,
    PAYOUT_STATUS_EVENT_TYPES,
    SUPPORTED_SCHEMA_VERSION,
    DeadLetterReason,
    Envelope,
    InvoicePaid,
    PayoutDue,
    PayoutDueData,
    PayoutDueEncoder,
    PayoutFailed,
    PayoutPaid,
    ReferralCodeAssigned,
    ReferralCodeAssignedData,
    ReferralCreditEarned,
    ReferralCreditEarnedData,
    SubscriptionCancelled,
    SubscriptionCreated,
    generate,
    payout_due_json,
)
from referral_program.payouts import attempt_event_id
from referral_runtime.settings import Topics

V1 = generate.SCHEMAS_DIR / generate.VERSION_DIR
ENVELOPE_FIELDS = ["event_id", "event_type", "schema_version", "occurred_at", "data"]
OUTBOUND: list[type[Envelope]] = [PayoutDue, ReferralCodeAssigned, ReferralCreditEarned]
BILLING: list[type[Envelope]] = [SubscriptionCreated, InvoicePaid, SubscriptionCancelled]
FINANCE: list[type[Envelope]] = [PayoutPaid, PayoutFailed]
INBOUND: list[type[Envelope]] = BILLING + FINANCE


# --- realistic payloads in the envelope ------------------------------------------------

SUBSCRIPTION_CREATED: dict[str, Any] = {
    "event_id": "9b2d4c61-0f3a-4e8b-b1d7-5a6c2e9f0a13",
    "event_type": "subscription.created",
    "schema_version": 1,
    "occurred_at": "2027-01-10T18:22:41Z",
    "data": {
        "account_id": "acct_Q81cLp",
        "subscription_id": "sub_1Pq9xR",
        "plan_family": "virtual_receptionist",
        "plan_id": "vr_standard_monthly",
        "referral_code": "7K3M-9QXD",
        "first_time_client": True,
        "currency": "USD",
        "customer": {
            "email": "dana@harborlaw.com",
            "organization_id": "org_5521",
            "payment_fingerprint": "fp_Zq81kd03",
        },
    },
}
INVOICE_PAID: dict[str, Any] = {
    "event_id": "3f0c2a9e-5b1d-4c1e-9a77-0d3c7b8f1e21",
    "event_type": "invoice.paid",
    "schema_version": 1,
    "occurred_at": "2027-01-17T15:04:05Z",
    "data": {
        "account_id": "acct_Q81cLp",
        "subscription_id": "sub_1Pq9xR",
        "invoice_id": "in_1QzT8eLk",
        "amount_paid_cents": 15900,
        "discount_cents": 10000,
        "currency": "USD",
    },
}
SUBSCRIPTION_CANCELLED: dict[str, Any] = {
    "event_id": "c7e51f02-8d4b-4a90-9f3e-21b6d0a4e875",
    "event_type": "subscription.cancelled",
    "schema_version": 1,
    "occurred_at": "2027-03-02T09:30:00-08:00",
    "data": {
        "account_id": "acct_Q81cLp",
        "subscription_id": "sub_1Pq9xR",
        "effective_at": "2027-03-31T23:59:59-07:00",
        "reason": "switched_provider",
    },
}
PAYOUT_PAID: dict[str, Any] = {
    "event_id": "2b7c9e14-6a3d-4f58-8c21-9d0e4f7a1b36",
    "event_type": "payout.paid",
    "schema_version": 1,
    "occurred_at": "2027-04-12T17:20:00Z",
    "data": {
        "payout_id": "0e6f1c2d-3b4a-5968-8776-a5b4c3d2e1f0",
        "attempt": 1,
        "paid_at": "2027-04-12T10:05:00-07:00",
        "amount_cents": 100000,
        "currency": "USD",
        "reference": "ACH-2027-04-12-000381",
    },
}
PAYOUT_FAILED: dict[str, Any] = {
    "event_id": "8e1f4a27-3c5b-4d69-a0b8-6f2c7d9e1a54",
    "event_type": "payout.failed",
    "schema_version": 1,
    "occurred_at": "2027-04-09T16:00:00Z",
    "data": {
        "payout_id": "0e6f1c2d-3b4a-5968-8776-a5b4c3d2e1f0",
        "attempt": 1,
        "failed_at": "2027-04-09T09:00:00-07:00",
        "reason": "payee_details_missing",
    },
}
EXAMPLES: dict[type[Envelope], dict[str, Any]] = {
    SubscriptionCreated: SUBSCRIPTION_CREATED,
    InvoicePaid: INVOICE_PAID,
    SubscriptionCancelled: SUBSCRIPTION_CANCELLED,
    PayoutPaid: PAYOUT_PAID,
    PayoutFailed: PAYOUT_FAILED,
}

PAYOUT_DUE = PayoutDue(
    event_id=UUID("5d1e8a7b-2c3f-4b6a-9e0d-7f1a2b3c4d5e"),
    occurred_at=datetime(2027, 4, 2, 16, 0, tzinfo=UTC),
    data=PayoutDueData(
        payout_id=UUID("0e6f1c2d-3b4a-5968-8776-a5b4c3d2e1f0"),
        referral_id=UUID("a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"),
        referrer_account_id="acct_7Hq2mZ",
        payee="acct_7Hq2mZ",
        referee_account_id="acct_Q81cLp",
        referral_code="7K3M-9QXD",
        plan_family="virtual_receptionist",
        amount_cents=100000,
        currency="USD",
        first_payment_at=datetime(2027, 1, 17, 15, 4, 5, tzinfo=UTC),
        eligible_on=date(2027, 4, 1),
        pay_by=date(2027, 4, 21),  # the 15th business day of April 2027
    ),
)
CODE_ASSIGNED = ReferralCodeAssigned(
    event_id=UUID("6a7b8c9d-0e1f-4a2b-8c3d-4e5f6a7b8c9d"),
    occurred_at=datetime(2027, 1, 10, 18, 22, 42, tzinfo=UTC),
    data=ReferralCodeAssignedData(
        account_id="acct_Q81cLp",
        code="4VN8-2HZR",
        link="https://app.example.com/r/4VN8-2HZR",
        replaces=None,
    ),
)
CODE_ROTATED = CODE_ASSIGNED.model_copy(
    update={
        "data": CODE_ASSIGNED.data.model_copy(
            update={
                "code": "M2C6-PX9T",
                "link": "https://app.example.com/r/M2C6-PX9T",
                "replaces": "4VN8-2HZR",
            }
        )
    }
)
CREDIT_EARNED = ReferralCreditEarned(
    event_id=UUID("b8c9d0e1-f2a3-4b4c-9d5e-6f7a8b9c0d1e"),
    occurred_at=datetime(2027, 2, 17, 15, 4, 5, tzinfo=UTC),
    data=ReferralCreditEarnedData(
        referrer_account_id="acct_Lg0Legacy",
        referee_account_id="acct_Q81cLp",
        invoice_id="in_1RaU9fMm",
        amount_cents=2500,
        currency="USD",
    ),
)


def parse(model: type[Envelope], payload: Any) -> Envelope:
    """Validate as the consumer does: from the JSON bytes on the wire."""
    return model.model_validate_json(json.dumps(payload))


def example(model: type[Envelope]) -> dict[str, Any]:
    return copy.deepcopy(EXAMPLES[model])


def required_fields(model: type[BaseModel]) -> list[str]:
    return [name for name, field in model.model_fields.items() if field.is_required()]


def data_model(model: type[Envelope]) -> type[BaseModel]:
    annotation = model.model_fields["data"].annotation
    assert isinstance(annotation, type) and issubclass(annotation, BaseModel)
    return annotation


def load(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return document


def resolve(document: dict[str, Any], ref: str) -> Any:
    """Follow a local JSON pointer ("#/a/b~1c")."""
    assert ref.startswith("#/"), f"not a local reference: {ref}"
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in refs(value)]
    return []


# JSON Schema 2020-12 keywords the generator may emit; anything else is a typo.
KEYWORDS = {
    "$schema", "$id", "$defs", "$ref", "title", "description", "type", "properties",
    "required", "const", "enum", "default", "format", "anyOf", "minimum", "maximum",
    "exclusiveMinimum", "maxLength", "pattern",
}  # fmt: skip
TYPES = {"object", "string", "integer", "boolean", "null", "number", "array"}


def check_keywords(schema: Any, where: str = "#") -> None:
    assert isinstance(schema, dict), f"{where}: a schema must be an object"
    assert set(schema) <= KEYWORDS, f"{where}: unknown keywords {set(schema) - KEYWORDS}"
    if "type" in schema:
        assert schema["type"] in TYPES, f"{where}: unknown type {schema['type']!r}"
    if "required" in schema:
        assert set(schema["required"]) <= set(schema.get("properties", {})), where
        assert len(set(schema["required"])) == len(schema["required"]), where
    for keyword in ("properties", "$defs"):
        for name, sub in schema.get(keyword, {}).items():
            check_keywords(sub, f"{where}/{keyword}/{name}")
    for i, sub in enumerate(schema.get("anyOf", [])):
        check_keywords(sub, f"{where}/anyOf/{i}")


def conforms(instance: Any, schema: dict[str, Any], root: dict[str, Any]) -> list[str]:
    """A small validator for the keywords above (the venv has no `jsonschema`)."""
    if "$ref" in schema:
        return conforms(instance, resolve(root, schema["$ref"]), root)
    if "anyOf" in schema:
        if any(not conforms(instance, sub, root) for sub in schema["anyOf"]):
            return []
        return [f"{instance!r} matches no anyOf branch"]
    kinds = {
        "object": dict, "string": str, "boolean": bool, "null": type(None), "array": list,
    }  # fmt: skip
    kind = schema.get("type")
    if kind == "integer":
        if not isinstance(instance, int) or isinstance(instance, bool):
            return [f"{instance!r} is not an integer"]
    elif kind is not None and not isinstance(instance, kinds[kind]):
        return [f"{instance!r} is not a {kind}"]
    problems = []
    if "const" in schema and instance != schema["const"]:
        problems.append(f"{instance!r} != const {schema['const']!r}")
    if "enum" in schema and instance not in schema["enum"]:
        problems.append(f"{instance!r} not in {schema['enum']}")
    if "minimum" in schema and instance < schema["minimum"]:
        problems.append(f"{instance!r} < {schema['minimum']}")
    if "maximum" in schema and instance > schema["maximum"]:
        problems.append(f"{instance!r} > {schema['maximum']}")
    if "exclusiveMinimum" in schema and instance <= schema["exclusiveMinimum"]:
        problems.append(f"{instance!r} <= {schema['exclusiveMinimum']}")
    if "maxLength" in schema and len(instance) > schema["maxLength"]:
        problems.append(f"{instance!r} longer than {schema['maxLength']}")
    if "pattern" in schema and not re.search(schema["pattern"], instance):
        problems.append(f"{instance!r} does not match {schema['pattern']}")
    if kind == "object":
        problems += [
            f"missing {name}" for name in schema.get("required", []) if name not in instance
        ]
        for name, sub in schema.get("properties", {}).items():
            if name in instance:
                problems += [f"{name}: {p}" for p in conforms(instance[name], sub, root)]
    return problems


# --- the generated files are what the generator writes today --------------------------


def test_committed_files_are_up_to_date() -> None:
    problems = generate.check()
    assert problems == [], f"{generate.STALE_MESSAGE}: {problems}"


def test_generation_is_deterministic_and_canonical() -> None:
    first, second = generate.render(), generate.render()
    assert first == second
    for path, text in first.items():
        assert text.endswith("}\n"), path
        assert json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n" == text, path


def test_check_reports_stale_missing_and_unexpected_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert generate.main(["--root", str(tmp_path)]) == 0
    assert generate.check(tmp_path) == []
    assert generate.main(["--check", "--root", str(tmp_path)]) == 0

    payout = tmp_path / "jsonschema/v1/payout.due.json"
    payout.write_text(payout.read_text().replace('"payee"', '"payee_name"'))
    (tmp_path / "asyncapi.json").unlink()
    (tmp_path / "jsonschema/v1/payout.cancelled.json").write_text("{}\n")

    assert sorted(generate.check(tmp_path)) == [
        "missing: asyncapi.json",
        "stale: jsonschema/v1/payout.due.json",
        "unexpected: jsonschema/v1/payout.cancelled.json",
    ]
    capsys.readouterr()
    assert generate.main(["--check", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert generate.STALE_MESSAGE in err
    assert "payout.due.json" in err and "asyncapi.json" in err

    assert generate.main(["--root", str(tmp_path)]) == 0
    assert generate.check(tmp_path) == []
    assert not (tmp_path / "jsonschema/v1/payout.cancelled.json").exists()


# --- the JSON Schema files -------------------------------------------------------------

SCHEMA_FILES = sorted(V1.glob("*.json"))
EVENT_FILES = [path for path in SCHEMA_FILES if path.name != "dlq-headers.json"]
MODELS_BY_TYPE: dict[str, type[Envelope]] = {m.EVENT_TYPE: m for m in INBOUND + OUTBOUND}


def test_every_event_and_the_dlq_headers_have_a_file() -> None:
    expected = {f"{event_type}.json" for event_type in MODELS_BY_TYPE} | {"dlq-headers.json"}
    assert set(INBOUND_EVENT_TYPES) == {m.EVENT_TYPE for m in BILLING}
    assert set(PAYOUT_STATUS_EVENT_TYPES) == {m.EVENT_TYPE for m in FINANCE}
    assert {path.name for path in SCHEMA_FILES} == expected


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda p: p.name)
def test_schema_file_is_a_well_formed_json_schema(path: Path) -> None:
    schema = load(path)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"https://schemas.example.com/referrals/v1/{path.name}"
    assert schema["title"] and schema["description"]
    assert schema["type"] == "object"
    check_keywords(schema)
    for ref in refs(schema):
        assert isinstance(resolve(schema, ref), dict), ref


@pytest.mark.parametrize("path", EVENT_FILES, ids=lambda p: p.name)
def test_event_schema_declares_the_envelope(path: Path) -> None:
    schema = load(path)
    properties = schema["properties"]
    assert set(ENVELOPE_FIELDS) <= set(schema["required"])
    assert properties["event_type"]["const"] == path.name.removesuffix(".json")
    assert properties["event_id"] == {"format": "uuid", "title": "Event Id", "type": "string"}
    assert properties["occurred_at"]["format"] == "date-time"
    version = properties["schema_version"]
    assert (version["type"], version["minimum"], version["maximum"]) == (
        "integer",
        1,
        SUPPORTED_SCHEMA_VERSION,
    )
    assert resolve(schema, properties["data"]["$ref"])["type"] == "object"
    # Forward compatibility: nothing forbids fields a later minor change may add.
    assert "additionalProperties" not in json.dumps(schema)


@pytest.mark.parametrize("model", INBOUND, ids=lambda m: m.EVENT_TYPE)
def test_inbound_schema_requires_what_the_model_requires(model: type[Envelope]) -> None:
    schema = load(V1 / f"{model.EVENT_TYPE}.json")
    assert schema["required"] == required_fields(model)
    data = data_model(model)
    assert schema["$defs"][data.__name__]["required"] == required_fields(data)
    if model is SubscriptionCreated:
        assert "required" not in schema["$defs"]["Customer"]  # every customer field nullable


@pytest.mark.parametrize("model", OUTBOUND, ids=lambda m: m.EVENT_TYPE)
def test_outbound_schema_requires_every_field_it_emits(model: type[Envelope]) -> None:
    schema = load(V1 / f"{model.EVENT_TYPE}.json")
    data = data_model(model)
    # What the model requires on input is a subset; on the wire every field is written.
    assert set(required_fields(model)) <= set(schema["required"])
    assert schema["required"] == list(model.model_fields)
    assert schema["$defs"][data.__name__]["required"] == list(data.model_fields)


def test_dlq_headers_schema() -> None:
    schema = load(V1 / "dlq-headers.json")
    assert list(schema["properties"]) == sorted(DLQ_HEADERS)
    assert schema["required"] == list(DLQ_HEADERS)
    for name, header in schema["properties"].items():
        assert header["type"] == "string"
        assert header["description"] == DLQ_HEADERS[name]
    assert schema["properties"]["dlq.reason"]["enum"] == [r.value for r in DeadLetterReason]
    headers = dict.fromkeys(DLQ_HEADERS, "0") | {"dlq.reason": "invalid"}
    assert conforms(headers, schema, schema) == []
    assert conforms(headers | {"dlq.reason": "flaky"}, schema, schema) != []


# --- the AsyncAPI document ---------------------------------------------------------------


def test_asyncapi_document_describes_every_topic() -> None:
    doc = load(generate.SCHEMAS_DIR / "asyncapi.json")
    assert doc["asyncapi"] == "3.0.0"
    defaults = {name: field.default for name, field in Topics.model_fields.items()}
    addresses = {channel["address"] for channel in doc["channels"].values()}
    assert addresses == set(defaults.values())

    actions = {
        resolve(doc, op["channel"]["$ref"])["address"]: op["action"]
        for op in doc["operations"].values()
    }
    assert actions == {
        topic: "receive" if topic.startswith(("billing.", "finance.")) else "send"
        for topic in addresses
    }
    for op in doc["operations"].values():
        channel = resolve(doc, op["channel"]["$ref"])
        for message_ref in op["messages"]:
            assert message_ref["$ref"].startswith(op["channel"]["$ref"] + "/messages/")
            message = resolve(doc, resolve(doc, message_ref["$ref"])["$ref"])
            key = message["bindings"]["kafka"]["key"]
            assert key["type"] == "string" and key["description"], channel["address"]
    for ref in refs(doc):
        assert resolve(doc, ref) is not None, ref


def test_asyncapi_payloads_are_the_event_schemas() -> None:
    doc = load(generate.SCHEMAS_DIR / "asyncapi.json")
    messages = {m["name"]: m for m in doc["components"]["messages"].values()}
    for path in EVENT_FILES:
        event_type = path.name.removesuffix(".json")
        model = MODELS_BY_TYPE[event_type]
        message = messages[event_type]
        assert message["contentType"] == "application/json"
        assert message["payload"] == {"$ref": f"#/components/schemas/{model.__name__}"}
        standalone = load(path)
        for name, definition in standalone.pop("$defs").items():
            assert doc["components"]["schemas"][name] == json.loads(
                json.dumps(definition).replace("#/$defs/", "#/components/schemas/")
            )
        del standalone["$schema"], standalone["$id"]
        component = json.dumps(doc["components"]["schemas"][model.__name__])
        assert json.loads(component.replace("#/components/schemas/", "#/$defs/")) == standalone


def test_asyncapi_dead_letter_message() -> None:
    doc = load(generate.SCHEMAS_DIR / "asyncapi.json")
    (channel,) = [c for c in doc["channels"].values() if c["address"] == "referrals.dlq"]
    (ref,) = channel["messages"].values()
    message = resolve(doc, ref["$ref"])
    assert message["contentType"] == "application/octet-stream"
    assert message["payload"]["format"] == "binary"
    headers = resolve(doc, message["headers"]["$ref"])
    standalone = load(V1 / "dlq-headers.json")
    del standalone["$schema"], standalone["$id"]
    assert headers == standalone


# --- inbound: what billing may send is accepted, what it must not is rejected ----------


@pytest.mark.parametrize("model", INBOUND, ids=lambda m: m.EVENT_TYPE)
def test_example_payloads_parse_and_match_their_schema(model: type[Envelope]) -> None:
    payload = example(model)
    event = parse(model, payload)
    assert event.event_id == UUID(payload["event_id"])
    assert event.event_type == model.EVENT_TYPE
    schema = load(V1 / f"{model.EVENT_TYPE}.json")
    assert conforms(payload, schema, schema) == []


@pytest.mark.parametrize("model", INBOUND, ids=lambda m: m.EVENT_TYPE)
def test_unknown_fields_are_ignored_everywhere(model: type[Envelope]) -> None:
    payload = example(model)
    payload["trace_id"] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    payload["producer"] = {"service": "billing", "version": "2027.1.3"}
    payload["data"]["tax_cents"] = 1272
    payload["data"]["metadata"] = {"campaign": "spring"}
    if "customer" in payload["data"]:
        payload["data"]["customer"]["phone"] = "+1 415 555 0100"
        payload["data"]["customer"]["billing_address"] = {"country": "US"}

    event = parse(model, payload)

    assert event == parse(model, example(model))
    assert event.model_extra is None and event.data.model_extra is None
    dumped = event.model_dump()
    assert "trace_id" not in dumped and "producer" not in dumped
    assert "tax_cents" not in dumped["data"] and "metadata" not in dumped["data"]
    assert not hasattr(event, "trace_id") and not hasattr(event.data, "tax_cents")
    if model is SubscriptionCreated:
        assert "phone" not in dumped["data"]["customer"]
        assert event.data.customer.model_extra is None
    # The published schema allows them too (no additionalProperties: false).
    schema = load(V1 / f"{model.EVENT_TYPE}.json")
    assert conforms(payload, schema, schema) == []


@pytest.mark.parametrize("model", INBOUND, ids=lambda m: m.EVENT_TYPE)
@pytest.mark.parametrize(("version", "accepted"), [(1, True), (0, False), (2, False)])
def test_schema_version(model: type[Envelope], version: int, accepted: bool) -> None:
    payload = example(model) | {"schema_version": version}
    if accepted:
        assert parse(model, payload).schema_version == version
        return
    with pytest.raises(ValidationError) as caught:
        parse(model, payload)
    assert [e["loc"] for e in caught.value.errors()] == [("schema_version",)]
    if version > SUPPORTED_SCHEMA_VERSION:
        assert "newer than this reader supports" in str(caught.value)


def _missing_field_cases() -> list[Any]:
    cases = []
    for model in INBOUND:
        for name in required_fields(model):
            cases.append(pytest.param(model, (name,), id=f"{model.EVENT_TYPE}-{name}"))
        for name in required_fields(data_model(model)):
            cases.append(pytest.param(model, ("data", name), id=f"{model.EVENT_TYPE}-data.{name}"))
    return cases


@pytest.mark.parametrize(("model", "loc"), _missing_field_cases())
def test_missing_required_field_is_rejected(model: type[Envelope], loc: tuple[str, ...]) -> None:
    payload = example(model)
    parent = payload["data"] if len(loc) == 2 else payload
    del parent[loc[-1]]
    with pytest.raises(ValidationError) as caught:
        parse(model, payload)
    assert loc in [e["loc"] for e in caught.value.errors()]
    assert "missing" in {e["type"] for e in caught.value.errors()}


WRONG_TYPES: list[tuple[type[Envelope], tuple[str, ...], Any]] = [
    (InvoicePaid, ("data", "amount_paid_cents"), "15900"),
    (InvoicePaid, ("data", "amount_paid_cents"), 159.0),
    (InvoicePaid, ("data", "amount_paid_cents"), 159.5),
    (InvoicePaid, ("data", "amount_paid_cents"), True),
    (InvoicePaid, ("data", "amount_paid_cents"), None),
    (InvoicePaid, ("data", "amount_paid_cents"), -1),
    (InvoicePaid, ("data", "discount_cents"), "10000"),
    (InvoicePaid, ("data", "currency"), "usd"),
    (InvoicePaid, ("data", "account_id"), 81),
    (InvoicePaid, ("data", "invoice_id"), "   "),
    (SubscriptionCreated, ("data", "first_time_client"), "false"),
    (SubscriptionCreated, ("data", "first_time_client"), 0),
    (SubscriptionCreated, ("data", "plan_family"), ["virtual_receptionist"]),
    (SubscriptionCreated, ("data", "referral_code"), 73397),
    (SubscriptionCreated, ("data", "customer"), "dana@harborlaw.com"),
    (SubscriptionCancelled, ("data", "effective_at"), 1806047999),
    (SubscriptionCancelled, ("data", "effective_at"), "2027-03-31"),
    (InvoicePaid, ("schema_version",), "1"),
    (InvoicePaid, ("schema_version",), 1.5),
    (InvoicePaid, ("event_id",), "evt-123"),
    (InvoicePaid, ("event_type",), "subscription.created"),
    (InvoicePaid, ("occurred_at",), 1799939045),
    (InvoicePaid, ("occurred_at",), "1799939045"),
    (InvoicePaid, ("data",), []),
    (PayoutPaid, ("data", "amount_cents"), "100000"),
    (PayoutPaid, ("data", "amount_cents"), 1000.0),
    (PayoutPaid, ("data", "currency"), "usd"),
    (PayoutPaid, ("data", "attempt"), "1"),
    (PayoutPaid, ("data", "attempt"), 0),
    (PayoutPaid, ("data", "payout_id"), "payout-17"),
    (PayoutPaid, ("data", "paid_at"), "2027-04-12"),
    (PayoutPaid, ("data", "reference"), " "),
    (PayoutPaid, ("data", "reference"), "x" * 201),
    (PayoutFailed, ("data", "attempt"), 1.0),
    (PayoutFailed, ("data", "failed_at"), 1807000000),
    (PayoutFailed, ("data", "reason"), ""),
    (PayoutFailed, ("event_type",), "payout.paid"),
]


@pytest.mark.parametrize(
    ("model", "loc", "value"),
    [
        pytest.param(model, loc, value, id=f"{model.EVENT_TYPE}-{'.'.join(loc)}={value!r}")
        for model, loc, value in WRONG_TYPES
    ],
)
def test_wrong_type_is_rejected(model: type[Envelope], loc: tuple[str, ...], value: Any) -> None:
    payload = example(model)
    parent = payload["data"] if len(loc) == 2 else payload
    parent[loc[-1]] = value
    with pytest.raises(ValidationError) as caught:
        parse(model, payload)
    assert all(e["loc"][: len(loc)] == loc for e in caught.value.errors()), caught.value


@pytest.mark.parametrize("model", INBOUND, ids=lambda m: m.EVENT_TYPE)
@pytest.mark.parametrize(
    "occurred_at", ["2027-01-17T15:04:05", "2027-01-17 15:04:05", "2027-01-17"]
)
def test_occurred_at_without_offset_is_rejected(model: type[Envelope], occurred_at: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse(model, example(model) | {"occurred_at": occurred_at})
    assert [e["loc"] for e in caught.value.errors()] == [("occurred_at",)]


@pytest.mark.parametrize(
    ("occurred_at", "expected"),
    [
        ("2027-01-17T15:04:05Z", datetime(2027, 1, 17, 15, 4, 5, tzinfo=UTC)),
        ("2027-01-17T07:04:05-08:00", datetime(2027, 1, 17, 15, 4, 5, tzinfo=UTC)),
        ("2027-01-17T16:04:05.250+01:00", datetime(2027, 1, 17, 15, 4, 5, 250000, tzinfo=UTC)),
    ],
)
def test_occurred_at_with_offset_is_accepted(occurred_at: str, expected: datetime) -> None:
    event = parse(InvoicePaid, INVOICE_PAID | {"occurred_at": occurred_at})
    assert event.occurred_at == expected
    assert event.occurred_at.utcoffset() is not None


def test_effective_at_without_offset_is_rejected() -> None:
    payload = example(SubscriptionCancelled)
    payload["data"]["effective_at"] = "2027-03-31T23:59:59"
    with pytest.raises(ValidationError):
        parse(SubscriptionCancelled, payload)


@pytest.mark.parametrize("how", ["absent", "null"])
def test_cancellation_takes_effect_when_it_occurred_by_default(how: str) -> None:
    payload = example(SubscriptionCancelled)
    if how == "absent":
        del payload["data"]["effective_at"]
    else:
        payload["data"]["effective_at"] = None
    event = parse(SubscriptionCancelled, payload)
    assert isinstance(event, SubscriptionCancelled)
    assert event.data.effective_at == event.occurred_at
    assert event.data.effective_at == datetime(
        2027, 3, 2, 9, 30, tzinfo=timezone(-timedelta(hours=8))
    )


def test_explicit_effective_at_is_kept() -> None:
    event = parse(SubscriptionCancelled, example(SubscriptionCancelled))
    assert isinstance(event, SubscriptionCancelled)
    assert event.data.effective_at == datetime(2027, 4, 1, 6, 59, 59, tzinfo=UTC)
    assert event.data.reason == "switched_provider"


def test_first_time_client_defaults_to_true() -> None:
    payload = example(SubscriptionCreated)
    del payload["data"]["first_time_client"]
    event = parse(SubscriptionCreated, payload)
    assert isinstance(event, SubscriptionCreated)
    assert event.data.first_time_client is True

    payload["data"]["first_time_client"] = False
    event = parse(SubscriptionCreated, payload)
    assert isinstance(event, SubscriptionCreated)
    assert event.data.first_time_client is False


@pytest.mark.parametrize("how", ["null", "absent"])
def test_referral_code_and_customer_fields_are_nullable(how: str) -> None:
    payload = example(SubscriptionCreated)
    if how == "null":
        payload["data"]["referral_code"] = None
        payload["data"]["customer"] = dict.fromkeys(payload["data"]["customer"])
    else:
        del payload["data"]["referral_code"], payload["data"]["customer"]
    event = parse(SubscriptionCreated, payload)
    assert isinstance(event, SubscriptionCreated)
    assert event.data.referral_code is None
    customer = event.data.customer
    assert (customer.email, customer.organization_id, customer.payment_fingerprint) == (
        None,
        None,
        None,
    )
    schema = load(V1 / "subscription.created.json")
    assert conforms(payload, schema, schema) == []


# --- outbound: what we emit round-trips and matches what we publish --------------------


@pytest.mark.parametrize(
    "event",
    [PAYOUT_DUE, CODE_ASSIGNED, CODE_ROTATED, CREDIT_EARNED],
    ids=["payout.due", "referral_code.assigned", "rotated", "referral.credit.earned"],
)
def test_outbound_round_trip(event: Envelope) -> None:
    model = type(event)
    wire = event.model_dump_json()

    assert model.model_validate_json(wire) == event
    document = json.loads(wire)
    assert document["event_type"] == model.EVENT_TYPE
    assert document["schema_version"] == SUPPORTED_SCHEMA_VERSION

    schema = load(V1 / f"{model.EVENT_TYPE}.json")
    assert conforms(document, schema, schema) == []
    # Exactly the declared fields are on the wire, every one of them present.
    assert list(document) == schema["required"]
    data_schema = resolve(schema, schema["properties"]["data"]["$ref"])
    assert list(document["data"]) == data_schema["required"]


_ZONES = st.sampled_from(
    [
        UTC,
        timezone(timedelta(hours=-7)),
        timezone(timedelta(hours=5, minutes=30)),
        timezone(timedelta(hours=-3, minutes=-30)),
        ZoneInfo("America/Los_Angeles"),
        ZoneInfo("UTC"),
    ]
)
_INSTANTS = st.builds(
    lambda naive, tz: naive.replace(tzinfo=tz),
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)),
    _ZONES,
)
_TEXT = st.text(min_size=1, max_size=20)  # any account id billing may use: quotes, emoji...


@settings(max_examples=200, deadline=None)
@given(
    ids=st.tuples(st.uuids(), st.uuids()),
    occurred_at=_INSTANTS,
    first_payment_at=_INSTANTS,
    accounts=st.tuples(_TEXT, _TEXT, _TEXT),
    code=st.sampled_from(["7K3M-9QXD"]) | _TEXT,
    family=st.sampled_from(["virtual_receptionist", "voice_assistant"]),
    amount=st.integers(min_value=1, max_value=10**12),
    dates=st.tuples(st.dates(), st.dates()),
    attempt=st.integers(min_value=1, max_value=1000),
)
def test_payout_due_json_is_the_models_wire_form(
    ids: tuple[UUID, UUID],
    occurred_at: datetime,
    first_payment_at: datetime,
    accounts: tuple[str, str, str],
    code: str,
    family: str,
    amount: int,
    dates: tuple[date, date],
    attempt: int,
) -> None:
    """The fast encoder (scheduler and re-issue) writes exactly the bytes the model writes."""
    payout_id, referral_id = ids
    referrer, payee, referee = accounts
    data = {
        "payout_id": payout_id,
        "referral_id": referral_id,
        "referrer_account_id": referrer,
        "payee": payee,
        "referee_account_id": referee,
        "referral_code": code,
        "plan_family": family,
        "amount_cents": amount,
        "currency": "USD",
        "first_payment_at": first_payment_at,
        "eligible_on": dates[0],
        "pay_by": dates[1],
        "attempt": attempt,
    }
    event_id = attempt_event_id(payout_id, attempt)
    model = PayoutDue(event_id=event_id, occurred_at=occurred_at, data=PayoutDueData(**data))

    fast = payout_due_json(occurred_at=occurred_at, event_id=event_id, **data)
    # ids as the database driver returns them: a UUID subclass
    from_db = {
        **data,
        "payout_id": _DriverUUID(int=payout_id.int),
        "referral_id": _DriverUUID(int=referral_id.int),
    }

    assert fast == model.model_dump_json().encode()
    assert payout_due_json(occurred_at=occurred_at, event_id=event_id, **from_db) == fast
    assert PayoutDue.model_validate_json(fast) == model


@settings(max_examples=100, deadline=None)
@given(
    occurred_at=_INSTANTS,
    family=st.sampled_from(["virtual_receptionist", "voice_assistant"]),
    dates=st.tuples(st.dates(), st.dates()),
    events=st.lists(
        st.tuples(st.uuids(), st.uuids(), _TEXT, st.none() | _TEXT, _TEXT, _INSTANTS),
        min_size=1,
        max_size=4,
    ),
)
def test_one_encoder_writes_every_event_of_its_ruling_as_the_model_does(
    occurred_at: datetime,
    family: str,
    dates: tuple[date, date],
    events: list[tuple[UUID, UUID, str, str | None, str, datetime]],
) -> None:
    """The scheduler builds one encoder per ruling and encodes each referral's event with it."""
    ruling = {
        "plan_family": family,
        "amount_cents": 100_000,
        "currency": "USD",
        "eligible_on": dates[0],
        "pay_by": dates[1],
    }
    encoder = PayoutDueEncoder(occurred_at=occurred_at, **ruling)
    for payout_id, referral_id, referrer, payee, referee, first_payment_at in events:
        own = {
            "payout_id": _DriverUUID(int=payout_id.int),
            "referral_id": _DriverUUID(int=referral_id.int),
            "referrer_account_id": referrer,
            "payee": payee or referrer,
            "referee_account_id": referee,
            "referral_code": "7K3M-9QXD",
            "first_payment_at": first_payment_at,
        }
        model = PayoutDue(
            event_id=payout_id, occurred_at=occurred_at, data=PayoutDueData(**own, **ruling)
        )
        assert encoder.encode(**own) == model.model_dump_json().encode()
        # The scheduler passes the payout id as its text.
        assert encoder.encode(**(own | {"payout_id": str(payout_id)})) == encoder.encode(**own)


def test_payout_due_json_writes_an_offset_with_seconds_as_the_model_does() -> None:
    """pydantic-core cuts an offset's seconds (so the instant does not read back); the encoder
    must still write the model's bytes, whatever they are."""
    odd = timezone(timedelta(seconds=3661))
    data = PAYOUT_DUE.data.model_dump(exclude={"program"}) | {
        "first_payment_at": datetime(2027, 1, 17, 15, 4, 5, 120, tzinfo=odd)
    }
    occurred_at = datetime(2027, 4, 1, tzinfo=odd)
    model = PayoutDue(event_id=data["payout_id"], occurred_at=occurred_at, data=data)
    assert payout_due_json(occurred_at=occurred_at, **data) == model.model_dump_json().encode()


class _DriverUUID(UUID):
    """Stands in for ``asyncpg.pgproto.pgproto.UUID``."""


def test_payout_due_wire_form() -> None:
    data = json.loads(PAYOUT_DUE.model_dump_json())["data"]
    assert data["amount_cents"] == 100000 and isinstance(data["amount_cents"], int)
    assert data["program"] == "cash"
    assert (data["eligible_on"], data["pay_by"]) == ("2027-04-01", "2027-04-21")
    assert data["first_payment_at"] == "2027-01-17T15:04:05Z"
    assert data["payout_id"] == "0e6f1c2d-3b4a-5968-8776-a5b4c3d2e1f0"
    assert data["attempt"] == 1


def test_payout_due_of_the_first_attempt_defaults_its_event_id_to_the_payout_id() -> None:
    data = PAYOUT_DUE.data.model_dump(exclude={"program"})
    wire = payout_due_json(occurred_at=PAYOUT_DUE.occurred_at, **data)
    assert json.loads(wire)["event_id"] == str(data["payout_id"])
    assert json.loads(wire)["data"]["attempt"] == 1


def test_a_payout_due_without_attempt_is_attempt_one() -> None:
    """``attempt`` came within version 1: what was published before it still reads."""
    before = json.loads(PAYOUT_DUE.model_dump_json())
    del before["data"]["attempt"]
    assert before["schema_version"] == 1
    event = PayoutDue.model_validate_json(json.dumps(before))
    assert event.data.attempt == 1
    assert event == PAYOUT_DUE


def test_each_attempt_has_its_own_stable_event_id() -> None:
    payout_id = PAYOUT_DUE.data.payout_id
    ids = [attempt_event_id(payout_id, n) for n in range(1, 5)]
    assert ids[0] == payout_id
    assert len(set(ids)) == 4
    assert ids == [attempt_event_id(payout_id, n) for n in range(1, 5)]
    with pytest.raises(ValueError):
        attempt_event_id(payout_id, 0)

"""Write the JSON Schema files and the AsyncAPI document from the models (docs/rules.md).

    python -m referral_events.generate            # rewrite schemas/ in place
    python -m referral_events.generate --check    # exit 1 if what is committed is stale

Everything written is a pure function of the models in this package and of the
channel table below: no clock, no environment, no app wiring. Output is
deterministic (sorted keys, 2-space indent, trailing newline), so a diff in the
committed files is a diff in the contract.

Inbound schemas are generated in pydantic's ``validation`` mode: they describe
what this project *accepts* (fields with a default may be omitted by billing).
Outbound schemas are generated in ``serialization`` mode with every field
required: they describe what this project *emits*, and it always writes every
field (``null`` included), so a consumer may rely on each key being present.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode
from pydantic_core import core_schema

from referral_events.envelope import SUPPORTED_SCHEMA_VERSION, Envelope
from referral_events.finance import PayoutFailed, PayoutPaid
from referral_events.inbound import InvoicePaid, SubscriptionCancelled, SubscriptionCreated
from referral_events.outbound import (
    DLQ_HEADERS,
    DeadLetterReason,
    PayoutDue,
    ReferralCodeAssigned,
    ReferralCreditEarned,
)

JsonObject = dict[str, Any]

#: The directory that holds this package, ``jsonschema/`` and ``asyncapi.json``.
SCHEMAS_DIR = Path(__file__).resolve().parent.parent
SCHEMA_BASE_URI = "https://schemas.example.com/referrals"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
KAFKA_BINDING_VERSION = "0.5.0"
STALE_MESSAGE = "schemas are stale: run `make schemas`"

VERSION_DIR = PurePosixPath("jsonschema") / f"v{SUPPORTED_SCHEMA_VERSION}"
DLQ_HEADERS_FILE = VERSION_DIR / "dlq-headers.json"
ASYNCAPI_FILE = PurePosixPath("asyncapi.json")


@dataclass(frozen=True)
class Channel:
    """One Kafka topic of the contract and the kinds of message it carries."""

    name: str  # AsyncAPI id of the channel and (prefixed) its operation
    topic: str  # default topic name; deployments may override it
    action: Literal["receive", "send"]
    model: type[Envelope] | None  # None: the dead-letter topic carries raw bytes
    key: str  # what the Kafka message key holds
    summary: str
    #: Further kinds of message on the same topic (finance's status topic carries two).
    more_models: tuple[type[Envelope], ...] = ()
    #: Who publishes a received channel's events.
    publisher: str = "billing"

    @property
    def models(self) -> tuple[type[Envelope], ...]:
        """Every model the topic carries (none for the dead-letter topic)."""
        return () if self.model is None else (self.model, *self.more_models)


CHANNELS: tuple[Channel, ...] = (
    Channel(
        "subscriptionCreated",
        "billing.subscription.created",
        "receive",
        SubscriptionCreated,
        "The subscriber's account id (`data.account_id`).",
        "Billing created a subscription; carries the referral code used at sign-up.",
    ),
    Channel(
        "invoicePaid",
        "billing.invoice.paid",
        "receive",
        InvoicePaid,
        "The paying account's id (`data.account_id`).",
        "Billing collected an invoice; the first non-zero one is the referee's first payment.",
    ),
    Channel(
        "subscriptionCancelled",
        "billing.subscription.cancelled",
        "receive",
        SubscriptionCancelled,
        "The subscriber's account id (`data.account_id`).",
        "Billing cancelled a subscription; service ends at `data.effective_at`.",
    ),
    Channel(
        "payoutStatus",
        "finance.payout.status",
        "receive",
        PayoutPaid,
        "The referrer's account id (the key of the `payout.due` it answers).",
        "Finance paid a `payout.due` (`payout.paid`) or could not (`payout.failed`); "
        "`data.payout_id` + `data.attempt` name the `payout.due`.",
        more_models=(PayoutFailed,),
        publisher="finance",
    ),
    Channel(
        "payoutDue",
        "referrals.payout.due",
        "send",
        PayoutDue,
        "The referrer's account id (`data.referrer_account_id`).",
        "Cash is due to a referrer; `data.payout_id` is stable across redeliveries.",
    ),
    Channel(
        "referralCodeAssigned",
        "referrals.code.assigned",
        "send",
        ReferralCodeAssigned,
        "The account's id (`data.account_id`).",
        "An account received a referral code (first seen, or rotated).",
    ),
    Channel(
        "referralCreditEarned",
        "referrals.credit.earned",
        "send",
        ReferralCreditEarned,
        "The referrer's account id (`data.referrer_account_id`).",
        "Legacy program: a referee paid an invoice and the referrer earned account credit.",
    ),
    Channel(
        "deadLetter",
        "referrals.dlq",
        "send",
        None,
        "The original message's key, unchanged (absent if it had none).",
        "A consumed message that could not be parsed or validated, byte for byte.",
    ),
)


class _WireJsonSchema(GenerateJsonSchema):
    """In serialization mode, every emitted field is required.

    Outbound events are written with ``model_dump_json()``: defaults and ``None``
    values are always present on the wire, so the schema says so.
    """

    def field_is_required(
        self,
        field: core_schema.ModelField | core_schema.DataclassField | core_schema.TypedDictField,
        total: bool,
    ) -> bool:
        if self.mode == "serialization":
            return field.get("serialization_exclude_if") is None
        return super().field_is_required(field, total)


def _mode(channel: Channel) -> JsonSchemaMode:
    return "validation" if channel.action == "receive" else "serialization"


def _event_type(model: type[Envelope]) -> str:
    return model.EVENT_TYPE


def _event_schema(channel: Channel, model: type[Envelope], ref_template: str) -> JsonObject:
    """The JSON Schema of one event, with what pydantic cannot see filled in."""
    schema = model.model_json_schema(
        mode=_mode(channel), ref_template=ref_template, schema_generator=_WireJsonSchema
    )
    event_type = _event_type(model)
    direction = (
        f"Published by {channel.publisher}"
        if channel.action == "receive"
        else "Published by referrals"
    )
    schema["title"] = event_type
    schema["description"] = (
        f"{channel.summary} {direction} on topic `{channel.topic}`; "
        f"Kafka key: {channel.key[0].lower()}{channel.key[1:]} "
        "Readers ignore unknown fields; `event_id` is the idempotency key."
    )
    # The envelope's field validator rejects versions newer than this reader knows;
    # JSON Schema generation cannot see validators, so the bound is written here.
    version = schema["properties"]["schema_version"]
    version["minimum"] = 1
    version["maximum"] = SUPPORTED_SCHEMA_VERSION
    version["description"] = (
        "Version of this event's schema. A reader rejects versions newer than it knows."
    )
    return schema


def _json_schema_file(name: str, schema: JsonObject) -> JsonObject:
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": f"{SCHEMA_BASE_URI}/{VERSION_DIR.name}/{name}.json",
        **schema,
    }


def dlq_headers_schema() -> JsonObject:
    """JSON Schema of the headers on every dead-lettered message (values are strings)."""
    properties: JsonObject = {}
    for header, meaning in DLQ_HEADERS.items():
        properties[header] = {"type": "string", "description": meaning}
    properties["dlq.reason"]["enum"] = [reason.value for reason in DeadLetterReason]
    return {
        "title": "dead-letter headers",
        "description": (
            "Kafka headers on every message of the dead-letter topic. The value is the "
            "original message's bytes and the key its original key."
        ),
        "type": "object",
        "properties": properties,
        "required": list(DLQ_HEADERS),
    }


def asyncapi_document() -> JsonObject:
    """The AsyncAPI 3.0.0 document of every topic this project reads or writes."""
    schemas: JsonObject = {}
    messages: JsonObject = {}
    channels: JsonObject = {}
    operations: JsonObject = {}

    def add_schema(name: str, schema: JsonObject) -> None:
        if name in schemas and schemas[name] != schema:
            raise ValueError(f"two different schemas are both named {name!r}")
        schemas[name] = schema

    for channel in CHANNELS:
        key = {"type": "string", "description": channel.key}
        bindings = {"kafka": {"key": key, "bindingVersion": KAFKA_BINDING_VERSION}}
        carried: dict[str, JsonObject] = {}
        if channel.model is None:
            add_schema("DeadLetterHeaders", dlq_headers_schema())
            carried["DeadLetter"] = {
                "bindings": bindings,
                "summary": channel.summary,
                "name": "dead_letter",
                "title": "Dead letter",
                "contentType": "application/octet-stream",
                "headers": {"$ref": "#/components/schemas/DeadLetterHeaders"},
                "payload": {
                    "type": "string",
                    "format": "binary",
                    "description": "The original message's value, byte for byte.",
                },
            }
        for model in channel.models:
            schema = _event_schema(channel, model, "#/components/schemas/{model}")
            for name, definition in schema.pop("$defs", {}).items():
                add_schema(name, definition)
            add_schema(model.__name__, schema)
            carried[model.__name__] = {
                "bindings": bindings,
                "summary": channel.summary,
                "name": _event_type(model),
                "title": _event_type(model),
                "contentType": "application/json",
                "payload": {"$ref": f"#/components/schemas/{model.__name__}"},
            }
        messages |= carried
        channels[channel.name] = {
            "address": channel.topic,
            "description": f"Default topic name `{channel.topic}`; deployments may override it.",
            "messages": {name: {"$ref": f"#/components/messages/{name}"} for name in carried},
        }
        operation_name = channel.action + channel.name[0].upper() + channel.name[1:]
        operations[operation_name] = {
            "action": channel.action,
            "channel": {"$ref": f"#/channels/{channel.name}"},
            "messages": [
                {"$ref": f"#/channels/{channel.name}/messages/{name}"} for name in carried
            ],
            "summary": channel.summary,
        }

    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Referral rewards events",
            "version": f"{SUPPORTED_SCHEMA_VERSION}.0.0",
            "description": (
                "Billing events and finance's payout status in, referral payouts, codes and "
                "credits out. JSON, UTF-8, "
                "one event per Kafka message. Every event has the same envelope; "
                "`event_id` is the idempotency key and delivery is at least once. "
                "Readers ignore unknown fields; a newer `schema_version`, a missing "
                "required field or a wrong type sends the message to the dead-letter topic. "
                "Generated from the pydantic models by `python -m referral_events.generate`."
            ),
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }


def _dumps(document: JsonObject) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def render() -> dict[PurePosixPath, str]:
    """Every generated file: path relative to ``schemas/`` -> its exact text."""
    files: dict[PurePosixPath, str] = {}
    for channel in CHANNELS:
        for model in channel.models:
            name = _event_type(model)
            schema = _event_schema(channel, model, "#/$defs/{model}")
            files[VERSION_DIR / f"{name}.json"] = _dumps(_json_schema_file(name, schema))
    files[DLQ_HEADERS_FILE] = _dumps(_json_schema_file(DLQ_HEADERS_FILE.stem, dlq_headers_schema()))
    files[ASYNCAPI_FILE] = _dumps(asyncapi_document())
    return files


def _orphans(root: Path, expected: dict[PurePosixPath, str]) -> list[PurePosixPath]:
    """Files in a generated directory that the generator no longer writes."""
    directories = {path.parent for path in expected if path.parent != PurePosixPath(".")}
    found: list[PurePosixPath] = []
    for directory in sorted(directories):
        on_disk = root / directory
        if on_disk.is_dir():
            found += [directory / p.name for p in sorted(on_disk.glob("*.json"))]
    return [path for path in found if path not in expected]


def check(root: Path = SCHEMAS_DIR) -> list[str]:
    """What differs between the committed files under ``root`` and a fresh render.

    Returns one line per problem (``stale: …``, ``missing: …``, ``unexpected: …``);
    an empty list means everything is up to date.
    """
    expected = render()
    problems: list[str] = []
    for path, text in expected.items():
        target = root / path
        if not target.is_file():
            problems.append(f"missing: {path}")
        elif target.read_bytes() != text.encode():
            problems.append(f"stale: {path}")
    problems += [f"unexpected: {path}" for path in _orphans(root, expected)]
    return problems


def write(root: Path = SCHEMAS_DIR) -> list[str]:
    """Bring the files under ``root`` up to date; returns what changed."""
    expected = render()
    changed: list[str] = []
    for path, text in expected.items():
        target = root / path
        if target.is_file() and target.read_bytes() == text.encode():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(text.encode())
        changed.append(f"wrote: {path}")
    for path in _orphans(root, expected):
        (root / path).unlink()
        changed.append(f"removed: {path}")
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: write the files, or with ``--check`` only compare them."""
    parser = argparse.ArgumentParser(
        prog="python -m referral_events.generate",
        description="Write the JSON Schema files and the AsyncAPI document from the models.",
    )
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the committed files are stale"
    )
    parser.add_argument(
        "--root", type=Path, default=SCHEMAS_DIR, help=f"output directory (default {SCHEMAS_DIR})"
    )
    args = parser.parse_args(argv)
    root: Path = args.root
    if args.check:
        problems = check(root)
        if problems:
            print(STALE_MESSAGE, file=sys.stderr)
            for problem in problems:
                print(f"  {problem}", file=sys.stderr)
            return 1
        return 0
    for change in write(root):
        print(change)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

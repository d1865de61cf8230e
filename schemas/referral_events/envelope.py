"""The envelope every event shares: id, type, version, business time, data."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, ClassVar
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, field_validator

SUPPORTED_SCHEMA_VERSION = 1

_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})", re.ASCII
)


def rfc3339(value: object) -> object:
    """Accept only an RFC 3339 string (or a datetime) for a business time.

    Pydantic would otherwise also take a number, or a string of digits, as Unix
    time: a wrong type on the wire, which the contract (docs/rules.md) makes a bad event.
    """
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and _RFC3339.fullmatch(value):
        return value
    raise ValueError("must be an RFC 3339 date-time with an offset, e.g. 2027-01-17T15:04:05Z")


#: Business time on the wire: RFC 3339 with an offset (``Z`` or ``±hh:mm``).
BusinessTime = Annotated[AwareDatetime, BeforeValidator(rfc3339)]


class UnsupportedSchemaVersion(ValueError):
    """The event carries a ``schema_version`` this reader does not know."""


class Envelope(BaseModel):
    """Fields common to every event. ``event_id`` is the idempotency key."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    #: The event type this model carries; subclasses pin it with a Literal.
    EVENT_TYPE: ClassVar[str] = ""

    event_id: UUID
    event_type: str
    # strict: a string or a float is a wrong type, not something to coerce.
    schema_version: int = Field(ge=1, strict=True)
    occurred_at: BusinessTime = Field(description="Business time, RFC 3339 with an offset.")
    data: Any

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value > SUPPORTED_SCHEMA_VERSION:
            raise ValueError(
                f"schema_version {value} is newer than this reader supports "
                f"({SUPPORTED_SCHEMA_VERSION})"
            )
        return value


class Data(BaseModel):
    """Base of every ``data`` payload: unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)


def nonblank(value: str) -> str:
    """Reject identifiers that are empty or only whitespace."""
    if not value.strip():
        raise ValueError("must not be blank")
    return value


def storable_identifier(value: str) -> str:
    """An identifier the rules read: not blank, and without a NUL (Postgres cannot store one)."""
    if "\x00" in value:
        raise ValueError("contains a NUL character (\\u0000), which cannot be stored")
    return nonblank(value)


def json_bytes(model: BaseModel, **extra: Any) -> bytes:
    """Serialise an outbound model to the wire form (UTF-8 JSON)."""
    return model.model_dump_json(**extra).encode()

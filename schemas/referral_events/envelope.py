"""The envelope every event shares: id, type, version, business time, data."""

from __future__ import annotations

from typing import Any, ClassVar
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

SUPPORTED_SCHEMA_VERSION = 1


class UnsupportedSchemaVersion(ValueError):
    """The event carries a ``schema_version`` this reader does not know."""


class Envelope(BaseModel):
    """Fields common to every event. ``event_id`` is the idempotency key."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    #: The event type this model carries; subclasses pin it with a Literal.
    EVENT_TYPE: ClassVar[str] = ""

    event_id: UUID
    event_type: str
    schema_version: int = Field(ge=1)
    occurred_at: AwareDatetime = Field(description="Business time, RFC 3339 with an offset.")
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


def json_bytes(model: BaseModel, **extra: Any) -> bytes:
    """Serialise an outbound model to the wire form (UTF-8 JSON)."""
    return model.model_dump_json(**extra).encode()

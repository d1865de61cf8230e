"""Events this project publishes, and the dead-letter header contract."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Literal
from uuid import UUID

import pydantic_core
from pydantic import AwareDatetime, Field

from referral_events.envelope import Data, Envelope


class PayoutDueData(Data):
    payout_id: UUID = Field(
        description="Deterministic per referral: a redelivery carries the same id."
    )
    referral_id: UUID
    program: Literal["cash"] = "cash"
    referrer_account_id: str
    payee: str
    referee_account_id: str
    referral_code: str
    plan_family: str
    amount_cents: int = Field(gt=0)
    currency: str
    first_payment_at: AwareDatetime
    eligible_on: dt.date
    pay_by: dt.date
    attempt: int = Field(
        default=1,
        ge=1,
        description="1 when the scheduler decides the payout, then 2, 3, ... each time support "
        "re-issues it after a failure. Finance deduplicates on `payout_id` + `attempt`. Added "
        "within version 1: a message without it is attempt 1.",
    )


class ReferralCodeAssignedData(Data):
    account_id: str
    code: str = Field(description="Display form XXXX-XXXX, Crockford base32.")
    link: str
    replaces: str | None = None


class ReferralCreditEarnedData(Data):
    referrer_account_id: str
    referee_account_id: str
    invoice_id: str
    amount_cents: int = Field(gt=0)
    currency: str


class PayoutDue(Envelope):
    EVENT_TYPE = "payout.due"
    event_type: Literal["payout.due"] = "payout.due"
    schema_version: int = 1
    data: PayoutDueData


def payout_due_json(
    *,
    payout_id: UUID,
    referral_id: UUID,
    occurred_at: dt.datetime,
    referrer_account_id: str,
    payee: str,
    referee_account_id: str,
    referral_code: str,
    plan_family: str,
    amount_cents: int,
    currency: str,
    first_payment_at: dt.datetime,
    eligible_on: dt.date,
    pay_by: dt.date,
    attempt: int = 1,
    event_id: UUID | None = None,
) -> bytes:
    """A ``payout.due`` event on the wire, without building the model.

    ``event_id`` defaults to the ``payout_id`` (attempt 1); a re-issue passes its
    own (``referral_program.payouts.attempt_event_id``), so that a reader that
    deduplicates on ``event_id`` still sees each attempt once.

    Byte for byte what ``PayoutDue(...).model_dump_json()`` writes for the same
    values (same serializer, same field order), without the model's cost: a
    scheduler pass writes 10^5 of these. Nothing is validated here, so the
    caller must pass what :class:`PayoutDue` would accept (aware datetimes,
    ``amount_cents`` > 0); the scheduler's decision core guarantees it, and
    ``tests/unit/test_schemas.py`` pins the equality with the model.
    """
    payout_id_json, referral_id_json = _uuid_json(payout_id), _uuid_json(referral_id)
    return pydantic_core.to_json(
        {
            "event_id": payout_id_json if event_id is None else _uuid_json(event_id),
            "event_type": PayoutDue.EVENT_TYPE,
            "schema_version": 1,
            "occurred_at": occurred_at,
            "data": {
                "payout_id": payout_id_json,
                "referral_id": referral_id_json,
                "program": "cash",
                "referrer_account_id": referrer_account_id,
                "payee": payee,
                "referee_account_id": referee_account_id,
                "referral_code": referral_code,
                "plan_family": plan_family,
                "amount_cents": amount_cents,
                "currency": currency,
                "first_payment_at": first_payment_at,
                "eligible_on": eligible_on,
                "pay_by": pay_by,
                "attempt": attempt,
            },
        }
    )


def _uuid_json(value: UUID) -> UUID | str:
    # pydantic-core writes an exact UUID natively but a subclass (asyncpg returns its
    # own) through a slower fallback; both write the str() text.
    return value if type(value) is UUID else str(value)


class ReferralCodeAssigned(Envelope):
    EVENT_TYPE = "referral_code.assigned"
    event_type: Literal["referral_code.assigned"] = "referral_code.assigned"
    schema_version: int = 1
    data: ReferralCodeAssignedData


class ReferralCreditEarned(Envelope):
    EVENT_TYPE = "referral.credit.earned"
    event_type: Literal["referral.credit.earned"] = "referral.credit.earned"
    schema_version: int = 1
    data: ReferralCreditEarnedData


class DeadLetterReason(StrEnum):
    """Why a message went to the dead-letter topic (header ``dlq.reason``)."""

    UNPARSEABLE = "unparseable"
    INVALID = "invalid"
    UNSUPPORTED_SCHEMA_VERSION = "unsupported_schema_version"
    EVENT_TYPE_MISMATCH = "event_type_mismatch"
    OVERSIZED = "oversized"


#: Headers on every dead-lettered message; the value is the original bytes.
DLQ_HEADERS: dict[str, str] = {
    "dlq.reason": "one of DeadLetterReason",
    "dlq.detail": "human-readable cause, no personal data",
    "dlq.source.topic": "topic the message was consumed from",
    "dlq.source.partition": "its partition (decimal)",
    "dlq.source.offset": "its offset (decimal)",
    "dlq.consumer_group": "consumer group that rejected it",
    "dlq.failed_at": "RFC 3339 UTC time of rejection",
}

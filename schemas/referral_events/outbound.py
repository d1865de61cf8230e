"""Events this project publishes, and the dead-letter header contract."""

from __future__ import annotations

import datetime as dt
import re
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
    values (see :class:`PayoutDueEncoder`).
    """
    encoder = PayoutDueEncoder(
        occurred_at=occurred_at,
        plan_family=plan_family,
        amount_cents=amount_cents,
        currency=currency,
        eligible_on=eligible_on,
        pay_by=pay_by,
        attempt=attempt,
    )
    return encoder.encode(
        payout_id=payout_id,
        referral_id=referral_id,
        referrer_account_id=referrer_account_id,
        payee=payee,
        referee_account_id=referee_account_id,
        referral_code=referral_code,
        first_payment_at=first_payment_at,
        event_id=event_id,
    )


class PayoutDueEncoder:
    """``payout.due`` events that share their ruling, written without the model.

    The fields every event of one ruling shares (``occurred_at``, family, amount,
    currency, ``eligible_on``, ``pay_by``, ``attempt``) are serialised once, by
    pydantic-core; :meth:`encode` fills in the rest between them. The bytes are
    exactly what ``PayoutDue(...).model_dump_json()`` writes for the same values
    (same field order, same text of each value; ``tests/unit/test_schemas.py`` pins
    it), at a fraction of the cost: a scheduler pass writes 10^5 of them. Nothing
    is validated, so the caller must pass what :class:`PayoutDue` would accept
    (aware datetimes, ``amount_cents`` > 0); the scheduler's decision core
    guarantees it.
    """

    def __init__(
        self,
        *,
        occurred_at: dt.datetime,
        plan_family: str,
        amount_cents: int,
        currency: str,
        eligible_on: dt.date,
        pay_by: dt.date,
        attempt: int = 1,
    ) -> None:
        self._occurred_at = (
            '","event_type":"payout.due","schema_version":1,"occurred_at":'
            + _json(occurred_at)
            + ',"data":{"payout_id":"'
        )
        self._ruling = (
            ',"plan_family":'
            + _json(plan_family)
            + ',"amount_cents":'
            + _json(amount_cents)
            + ',"currency":'
            + _json(currency)
            + ',"first_payment_at":'
        )
        self._dates = (
            ',"eligible_on":'
            + _json(eligible_on)
            + ',"pay_by":'
            + _json(pay_by)
            + ',"attempt":'
            + _json(attempt)
            + "}}"
        )

    def encode(
        self,
        *,
        payout_id: UUID | str,
        referral_id: UUID,
        referrer_account_id: str,
        payee: str,
        referee_account_id: str,
        referral_code: str,
        first_payment_at: dt.datetime,
        event_id: UUID | None = None,
    ) -> bytes:
        """One event of this ruling (``event_id`` defaults to the ``payout_id``).

        ``payout_id`` may be given as its canonical text (lower case, with dashes).
        """
        payout = str(payout_id)  # a UUID's text never needs escaping
        return "".join(
            (
                '{"event_id":"',
                payout if event_id is None else str(event_id),
                self._occurred_at,
                payout,
                '","referral_id":"',
                str(referral_id),
                '","program":"cash","referrer_account_id":',
                _text_json(referrer_account_id),
                ',"payee":',
                _text_json(payee),
                ',"referee_account_id":',
                _text_json(referee_account_id),
                ',"referral_code":',
                _text_json(referral_code),
                self._ruling,
                _datetime_json(first_payment_at),
                self._dates,
            )
        ).encode()


def _json(value: object) -> str:
    return pydantic_core.to_json(value).decode()


# Characters JSON must escape; pydantic-core escapes exactly these in ASCII text.
_ESCAPED = re.compile(r'[\x00-\x1f"\\]')


def _text_json(value: str) -> str:
    if value.isascii() and _ESCAPED.search(value) is None:
        return f'"{value}"'
    return _json(value)  # escapes, and non-ASCII text as pydantic-core writes it


def _datetime_json(value: dt.datetime) -> str:
    # pydantic-core writes isoformat()'s text, with a zero offset as Z; an offset of
    # whole minutes is the usual case, anything else goes through pydantic-core.
    text = value.isoformat()
    if text.endswith("+00:00"):
        return f'"{text[:-6]}Z"'
    if text[-6] in "+-" and value.tzinfo is not None:
        return f'"{text}"'
    return _json(value)


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

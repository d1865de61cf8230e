"""Finance's reports in their wire form (payout.paid, payout.failed), for the demo and tests."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any
from uuid import UUID

from aiokafka import AIOKafkaProducer

Event = dict[str, Any]


def _envelope(event_type: str, at: datetime, data: Event, event_id: str | None) -> Event:
    return {
        "event_id": event_id or str(uuid.uuid4()),
        "event_type": event_type,
        "schema_version": 1,
        "occurred_at": at.isoformat(),
        "data": data,
    }


def payout_paid(
    payout_id: UUID | str,
    attempt: int,
    paid_at: datetime,
    amount_cents: int,
    *,
    reference: str,
    currency: str = "USD",
    event_id: str | None = None,
) -> Event:
    return _envelope(
        "payout.paid",
        paid_at,
        {
            "payout_id": str(payout_id),
            "attempt": attempt,
            "paid_at": paid_at.isoformat(),
            "amount_cents": amount_cents,
            "currency": currency,
            "reference": reference,
        },
        event_id,
    )


def payout_failed(
    payout_id: UUID | str,
    attempt: int,
    failed_at: datetime,
    reason: str,
    *,
    event_id: str | None = None,
) -> Event:
    return _envelope(
        "payout.failed",
        failed_at,
        {
            "payout_id": str(payout_id),
            "attempt": attempt,
            "failed_at": failed_at.isoformat(),
            "reason": reason,
        },
        event_id,
    )


async def publish_reports(
    producer: AIOKafkaProducer, topic: str, reports: Iterable[tuple[str, Event | bytes]]
) -> int:
    """Publish ``(referrer account, report)`` pairs as finance would (key = the referrer),
    waiting for every ack; a report given as bytes is sent as it is (broken ones, in tests)."""
    futures = []
    for key, report in reports:
        value = report if isinstance(report, bytes) else json.dumps(report).encode()
        futures.append(await producer.send(topic, value, key=key.encode()))
    for future in futures:
        await future
    return len(futures)

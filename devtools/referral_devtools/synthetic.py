"""Realistic billing events in their wire form (docs/rules.md), for the demo, bench and tests."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaProducer

from referral_runtime.settings import Topics

Event = dict[str, Any]


def _envelope(event_type: str, at: datetime, data: dict[str, Any], event_id: str | None) -> Event:
    return {
        "event_id": event_id or str(uuid.uuid4()),
        "event_type": event_type,
        "schema_version": 1,
        "occurred_at": at.isoformat(),
        "data": data,
    }


def subscription_created(
    account_id: str,
    subscription_id: str,
    plan_family: str,
    at: datetime,
    *,
    code: str | None = None,
    first_time_client: bool = True,
    email: str | None = None,
    organization_id: str | None = None,
    payment_fingerprint: str | None = None,
    plan_id: str | None = None,
    currency: str = "USD",
    event_id: str | None = None,
) -> Event:
    return _envelope(
        "subscription.created",
        at,
        {
            "account_id": account_id,
            "subscription_id": subscription_id,
            "plan_family": plan_family,
            "plan_id": plan_id or f"{plan_family}-monthly",
            "referral_code": code,
            "first_time_client": first_time_client,
            "currency": currency,
            "customer": {
                "email": email,
                "organization_id": organization_id,
                "payment_fingerprint": payment_fingerprint,
            },
        },
        event_id,
    )


def invoice_paid(
    account_id: str,
    subscription_id: str,
    invoice_id: str,
    amount_paid_cents: int,
    at: datetime,
    *,
    discount_cents: int = 0,
    currency: str = "USD",
    event_id: str | None = None,
) -> Event:
    return _envelope(
        "invoice.paid",
        at,
        {
            "account_id": account_id,
            "subscription_id": subscription_id,
            "invoice_id": invoice_id,
            "amount_paid_cents": amount_paid_cents,
            "discount_cents": discount_cents,
            "currency": currency,
        },
        event_id,
    )


def subscription_cancelled(
    account_id: str,
    subscription_id: str,
    at: datetime,
    *,
    effective_at: datetime | None = None,
    reason: str | None = None,
    event_id: str | None = None,
) -> Event:
    data: dict[str, Any] = {
        "account_id": account_id,
        "subscription_id": subscription_id,
        "reason": reason,
    }
    if effective_at is not None:
        data["effective_at"] = effective_at.isoformat()
    return _envelope("subscription.cancelled", at, data, event_id)


def topic_for(topics: Topics, event: Event) -> str:
    """The billing topic an event is published on."""
    by_type = {event_type: topic for topic, event_type in topics.billing.items()}
    return by_type[event["event_type"]]


async def publish(producer: AIOKafkaProducer, topics: Topics, events: Iterable[Event]) -> int:
    """Publish events as billing would (key = account), waiting for every ack."""
    futures = []
    for event in events:
        futures.append(
            await producer.send(
                topic_for(topics, event),
                json.dumps(event).encode(),
                key=event["data"]["account_id"].encode(),
            )
        )
    for future in futures:
        await future
    return len(futures)

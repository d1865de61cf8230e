"""Transactional outbox: rows written with the effects, published by a relay at least once.

Rows are claimed with ``FOR UPDATE SKIP LOCKED`` inside a transaction that
stays open until the broker acknowledged every message (``acks="all"``), so
replicas never publish the same row concurrently, and a crash between the
publish and the commit republishes the row with the same event id. Consumers
dedupe on that id (``payout_id`` for payouts).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry, Counter, Gauge

from referral_runtime.db import Conn
from referral_runtime.retry import Backoff, sleep_unless_stopped
from referral_runtime.settings import Settings

log = structlog.get_logger(__name__)

#: The backlog gauges (and the caller's own) are refreshed at least this often.
GAUGE_REFRESH_SECONDS = 5.0


@dataclass(frozen=True)
class OutboxMessage:
    """One message to publish: raw bytes, so dead letters keep the original payload."""

    topic: str
    key: bytes | None
    payload: bytes
    headers: dict[str, str] = field(default_factory=dict)


_INSERT = """
insert into outbox (topic, key, payload, headers)
select * from unnest($1::text[], $2::bytea[], $3::bytea[], $4::jsonb[])
"""


async def enqueue(conn: Conn, messages: Sequence[OutboxMessage]) -> None:
    """Add messages to the outbox in the caller's transaction (one statement)."""
    if not messages:
        return
    await conn.execute(
        _INSERT,
        [m.topic for m in messages],
        [m.key for m in messages],
        [m.payload for m in messages],
        [m.headers for m in messages],
    )


class OutboxMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.backlog = Gauge(
            "referrals_outbox_backlog", "Outbox rows not yet published", registry=registry
        )
        self.oldest_age = Gauge(
            "referrals_outbox_oldest_age_seconds",
            "Age of the oldest unpublished outbox row (0 when empty)",
            registry=registry,
        )
        self.published = Counter(
            "referrals_outbox_published", "Outbox rows published", ["topic"], registry=registry
        )
        self.failures = Counter(
            "referrals_outbox_publish_failures",
            "Outbox publish attempts that failed (rows stay and are retried)",
            ["topic"],
            registry=registry,
        )


_CLAIM = """
select id, topic, key, payload, headers from outbox
where published_at is null
order by id
limit $1
for update skip locked
"""


class OutboxRelay:
    """Publishes outbox rows in id order, in batches, at least once."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        producer: AIOKafkaProducer,
        metrics: OutboxMetrics,
        *,
        batch: int = 2000,
        poll_seconds: float = 0.2,
    ) -> None:
        self._pool = pool
        self._producer = producer
        self._metrics = metrics
        self._batch = batch
        self._poll = poll_seconds
        #: Whether the last attempt reached the database and the broker.
        self.db_ok = True
        self.broker_ok = True

    @classmethod
    def from_settings(
        cls, pool: asyncpg.Pool, producer: AIOKafkaProducer, metrics: OutboxMetrics, s: Settings
    ) -> OutboxRelay:
        """A relay with the configured batch size and poll interval."""
        return cls(
            pool, producer, metrics, batch=s.outbox_batch, poll_seconds=s.outbox_poll_ms / 1000
        )

    async def publish_pending(self) -> int:
        """Claim, publish and mark one batch; returns how many rows were published."""
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(_CLAIM, self._batch)
            if not rows:
                return 0
            await self._send(rows)
            await conn.execute(
                "update outbox o set published_at = now() from unnest($1::bigint[]) as p(id) where o.id = p.id",
                [r["id"] for r in rows],
            )
        for row in rows:
            self._metrics.published.labels(row["topic"]).inc()
        return len(rows)

    async def _send(self, rows: Sequence[asyncpg.Record]) -> None:
        futures = []
        for row in rows:
            headers = [(k, str(v).encode()) for k, v in _headers(row["headers"]).items()]
            try:
                futures.append(
                    await self._producer.send(
                        row["topic"], row["payload"], key=row["key"], headers=headers
                    )
                )
            except Exception:
                self._metrics.failures.labels(row["topic"]).inc()
                raise
        results = await asyncio.gather(*futures, return_exceptions=True)
        failed = [
            (row, r) for row, r in zip(rows, results, strict=True) if isinstance(r, Exception)
        ]
        for row, _ in failed:
            self._metrics.failures.labels(row["topic"]).inc()
        if failed:
            raise failed[0][1]

    async def refresh_backlog(self) -> None:
        """Update the backlog gauges from the table."""
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                """select count(*) as n,
                          coalesce(extract(epoch from now() - min(created_at)), 0) as age
                   from outbox where published_at is null"""
            )
        assert row is not None
        self._metrics.backlog.set(row["n"])
        self._metrics.oldest_age.set(float(row["age"]))

    async def drain(self) -> int:
        """Publish until the outbox is empty; returns the number published."""
        total = 0
        while n := await self.publish_pending():
            total += n
        await self.refresh_backlog()
        return total

    async def run(
        self,
        stopping: asyncio.Event,
        *,
        refresh: Callable[[], Awaitable[object]] | None = None,
        on_health: Callable[[], None] | None = None,
    ) -> None:
        """Relay until ``stopping`` is set; broker or database outages back off and retry.

        The backlog gauges, and ``refresh`` if given, are updated after every
        publish and at least every :data:`GAUGE_REFRESH_SECONDS`; ``on_health``
        is called after every attempt, with :attr:`db_ok` and :attr:`broker_ok` set.
        """
        backoff = Backoff(self._poll, 10.0)
        gauges_due = 0.0
        while not stopping.is_set():
            published = 0
            try:
                published = await self.publish_pending()
                if published or time.monotonic() >= gauges_due:
                    await self.refresh_backlog()
                    if refresh is not None:
                        await refresh()
                    gauges_due = time.monotonic() + GAUGE_REFRESH_SECONDS
                self.db_ok = self.broker_ok = True
                backoff.reset()
                delay = self._poll
            except Exception as exc:  # database or broker outage: back off, keep relaying
                if isinstance(exc, KafkaError):
                    self.broker_ok = False
                else:
                    self.db_ok = False
                delay = backoff.next_delay()
                log.warning(
                    "outbox_relay_failed",
                    error=type(exc).__name__,
                    detail=str(exc)[:200],
                    retry_in_s=round(delay, 2),
                )
            if on_health is not None:
                on_health()
            if published < self._batch:
                await sleep_unless_stopped(stopping, delay)


def _headers(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        loaded: dict[str, Any] = json.loads(value)
        return loaded
    return dict(value or {})


async def start_producer(settings: Settings) -> AIOKafkaProducer:
    """The configured producer, started; a failed start is undone before the error propagates."""
    producer = make_producer(settings.kafka_bootstrap_servers, settings.kafka_security())
    try:
        await producer.start()
    except BaseException:
        await producer.stop()
        raise
    return producer


def make_producer(bootstrap: str, security: dict[str, Any], **extra: Any) -> AIOKafkaProducer:
    """The producer for anything that carries money or state: ``acks="all"``."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=5,
        max_batch_size=256 * 1024,
        request_timeout_ms=30_000,
        **security,
        **extra,
    )

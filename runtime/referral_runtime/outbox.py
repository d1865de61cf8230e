"""Transactional outbox: rows written with the effects, published by a relay at least once.

Rows are claimed with ``FOR UPDATE SKIP LOCKED`` inside a transaction that
stays open until the broker acknowledged every message (``acks="all"``), so
replicas never publish the same row concurrently, and a crash between the
publish and the commit republishes the row with the same event id. Consumers
dedupe on that id (``payout_id`` for payouts).

No row holds up the ones behind it. A row the producer or the broker refuses
for good (too large, say: :data:`REFUSED_FOR_GOOD`) is set aside: the row
keeps its bytes and gets ``set_aside_at`` and ``set_aside_reason``, is never
claimed again nor deleted, and is counted; the rest of the batch is published.
A row refused together with others is first sent again on its own, so only
the culprit is set aside. Anything else (the broker down, a timeout, too few
replicas) is transient: the batch is not marked, and is retried as a whole.
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
from aiokafka.errors import (
    CorruptRecordException,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)
from prometheus_client import CollectorRegistry, Counter, Gauge

from referral_runtime.db import Conn
from referral_runtime.retry import Backoff, sleep_unless_stopped
from referral_runtime.settings import Settings

log = structlog.get_logger(__name__)

#: The backlog gauges (and the caller's own) are refreshed at least this often.
GAUGE_REFRESH_SECONDS = 5.0

#: Errors that refuse one message whatever is retried (the producer's own size check
#: raises the first of them before sending), by the reason label they are counted under.
REFUSED_FOR_GOOD: dict[type[KafkaError], str] = {
    MessageSizeTooLargeError: "too_large",
    RecordListTooLargeError: "too_large",
    RecordTooLargeError: "too_large",
    CorruptRecordException: "corrupt_record",
}
_REFUSED = tuple(REFUSED_FOR_GOOD)
#: ``outbox.set_aside_reason`` keeps this much of the error's text.
_REASON_CHARS = 500


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
        self.set_aside = Counter(
            "referrals_outbox_set_aside",
            "Outbox rows this relay set aside because the producer or the broker refused them "
            "for good (they stay in the table, unpublished), by topic and reason",
            ["topic", "reason"],
            registry=registry,
        )
        self.set_aside_rows = Gauge(
            "referrals_outbox_set_aside_rows",
            "Outbox rows set aside (refused for good, not published) that support has not "
            "dismissed, by topic",
            ["topic"],
            registry=registry,
        )


_CLAIM = """
select id, topic, key, payload, headers from outbox
where published_at is null and set_aside_at is null
order by id
limit $1
for update skip locked
"""

_MARK_PUBLISHED = """
update outbox o set published_at = now()
from unnest($1::bigint[]) as p(id) where o.id = p.id
"""

_SET_ASIDE = """
update outbox o set set_aside_at = now(), set_aside_reason = r.reason
from unnest($1::bigint[], $2::text[]) as r(id, reason) where o.id = r.id
"""

_BACKLOG = """
select count(*) as n, coalesce(extract(epoch from now() - min(created_at)), 0) as age
from outbox where published_at is null and set_aside_at is null
"""

# Rows support dismissed (handled, not to be published) no longer wait for anyone.
_SET_ASIDE_BY_TOPIC = """
select topic, count(*) as n from outbox
where set_aside_at is not null and dismissed_at is null
group by topic
"""


@dataclass(frozen=True)
class Refusal:
    """Why the producer or the broker refused one row for good."""

    reason: str  # the metric label: a value of REFUSED_FOR_GOOD
    detail: str  # the error, as stored in outbox.set_aside_reason

    @classmethod
    def of(cls, error: BaseException) -> Refusal:
        reason = next(r for kind, r in REFUSED_FOR_GOOD.items() if isinstance(error, kind))
        text = str(error)
        if type(error).__name__ not in text:
            text = f"{type(error).__name__}: {text}"
        return cls(reason, f"{reason}: {text}"[:_REASON_CHARS])


@dataclass(frozen=True)
class Relayed:
    """What one claimed batch came to."""

    published: int = 0
    set_aside: int = 0

    @property
    def handled(self) -> int:
        """Rows taken off the queue, either way."""
        return self.published + self.set_aside


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

    async def publish_pending(self) -> Relayed:
        """Claim one batch, publish it, mark it; rows refused for good are set aside.

        A transient failure propagates and leaves the whole batch to be retried.
        """
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(_CLAIM, self._batch)
            if not rows:
                return Relayed()
            refused = await self._send(rows)
            published = [r for r in rows if r["id"] not in refused]
            await conn.execute(_MARK_PUBLISHED, [r["id"] for r in published])
            if refused:
                await conn.execute(_SET_ASIDE, list(refused), [r.detail for r in refused.values()])
        for row in published:
            self._metrics.published.labels(row["topic"]).inc()
        for row in rows:
            if (refusal := refused.get(row["id"])) is not None:
                self._metrics.set_aside.labels(row["topic"], refusal.reason).inc()
                log.error(
                    "outbox_message_set_aside",
                    outbox_id=row["id"],
                    topic=row["topic"],
                    bytes=len(row["payload"]),
                    reason=refusal.reason,
                    detail=refusal.detail,
                )
        return Relayed(len(published), len(refused))

    async def _send(self, rows: Sequence[asyncpg.Record]) -> dict[int, Refusal]:
        """Publish ``rows`` (acknowledged by the broker); returns those refused for good, by id."""
        refused: dict[int, Refusal] = {}
        sent: list[tuple[asyncpg.Record, asyncio.Future[Any]]] = []
        for row in rows:
            try:
                sent.append((row, await self._send_one(row)))
            except _REFUSED as exc:  # the producer's own check: this message alone
                refused[row["id"]] = Refusal.of(exc)
            except Exception:
                self._metrics.failures.labels(row["topic"]).inc()
                raise
        results = await asyncio.gather(*(future for _, future in sent), return_exceptions=True)
        suspects = []
        transient: BaseException | None = None
        for (row, _), result in zip(sent, results, strict=True):
            if isinstance(result, _REFUSED):
                suspects.append(row)
            elif isinstance(result, BaseException):
                self._metrics.failures.labels(row["topic"]).inc()
                transient = transient or result
        if transient is not None:
            raise transient
        # The broker refuses a whole request: whoever shared it is sent again alone.
        for row in suspects:
            try:
                await (await self._send_one(row))
            except _REFUSED as exc:
                refused[row["id"]] = Refusal.of(exc)
            except Exception:
                self._metrics.failures.labels(row["topic"]).inc()
                raise
        return refused

    async def _send_one(self, row: asyncpg.Record) -> asyncio.Future[Any]:
        headers = [(k, str(v).encode()) for k, v in _headers(row["headers"]).items()]
        future: asyncio.Future[Any] = await self._producer.send(
            row["topic"], row["payload"], key=row["key"], headers=headers
        )
        return future

    async def refresh_backlog(self) -> None:
        """Update the backlog gauges (rows still to publish, rows set aside) from the table."""
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(_BACKLOG)
            set_aside = {r["topic"]: r["n"] for r in await conn.fetch(_SET_ASIDE_BY_TOPIC)}
        assert row is not None
        self._metrics.backlog.set(row["n"])
        self._metrics.oldest_age.set(float(row["age"]))
        gauge = self._metrics.set_aside_rows
        for labels in {s.labels["topic"] for s in _samples(gauge)} - set(set_aside):
            gauge.remove(labels)
        for topic, n in set_aside.items():
            gauge.labels(topic).set(n)

    async def drain(self) -> int:
        """Publish until nothing is left to publish; returns the number published."""
        total = 0
        while (relayed := await self.publish_pending()).handled:
            total += relayed.published
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
            handled = 0
            try:
                handled = (await self.publish_pending()).handled
                if handled or time.monotonic() >= gauges_due:
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
            if handled < self._batch:
                await sleep_unless_stopped(stopping, delay)


def _samples(gauge: Gauge) -> list[Any]:
    return [s for metric in gauge.collect() for s in metric.samples]


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

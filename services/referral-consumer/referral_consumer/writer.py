"""The imperative shell around one parsed batch: write it in one transaction, retry, measure."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import asyncpg
import structlog

from referral_consumer.ingest import DeadLetter
from referral_consumer.logfields import batch_fields, record_fields
from referral_consumer.metrics import ConsumerMetrics
from referral_consumer.parser import ParsedBatch
from referral_consumer.plan import BatchPlan
from referral_consumer.store import BatchResult, apply_batch
from referral_events import DeadLetterReason
from referral_runtime.db import TRANSIENT_DB_ERRORS
from referral_runtime.referral_state import Outbound
from referral_runtime.retry import Backoff, sleep_unless_stopped

log = structlog.get_logger(__name__)


class ShuttingDown(Exception):
    """The service is stopping while the batch waits for the database: nothing is committed."""


class BatchWriter:
    """Turns a parsed batch into committed effects; never returns before they are durable.

    A database outage is retried with capped exponential backoff (the batch is
    neither committed nor skipped). A batch the database rejects for a data
    reason is split until the offending event is isolated and dead-lettered,
    so one bad event cannot block its partition.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        topic_types: dict[str, str],
        out: Outbound,
        metrics: ConsumerMetrics,
        stopping: asyncio.Event,
        *,
        tz: ZoneInfo,
        randbits: Callable[[int], int] = secrets.randbits,
        max_backoff: float = 10.0,
        on_health: Callable[[], None] | None = None,
    ) -> None:
        self._pool = pool
        self._topic_types = topic_types
        self._out = out
        self._tz = tz
        self._metrics = metrics
        self._stopping = stopping
        self._randbits = randbits
        self._max_backoff = max_backoff
        self.db_healthy = True
        self._on_health = on_health or (lambda: None)

    async def apply(self, batch: ParsedBatch) -> BatchResult:
        """Write a parsed batch; returns once its transaction committed."""
        result = await self._apply_with_retry(batch.plan)
        self._observe(result, len(batch.records), time.perf_counter() - batch.started)
        return result

    async def _apply_with_retry(self, plan: BatchPlan) -> BatchResult:
        backoff = Backoff(0.1, self._max_backoff)
        attempt = 0
        while True:
            attempt += 1
            try:
                result = await self._apply_isolating(plan)
            except TRANSIENT_DB_ERRORS as exc:
                self.db_healthy = False
                self._on_health()
                self._metrics.db_retries.inc()
                delay = backoff.next_delay()
                log.warning(
                    "database_unavailable_retrying",
                    error=type(exc).__name__,
                    retry_in_s=round(delay, 2),
                    attempt=attempt,
                    **batch_fields(
                        [p.record for p in plan.events + plan.repeats]
                        + [d.record for d in plan.dead]
                    ),
                )
                if await sleep_unless_stopped(self._stopping, delay):
                    raise ShuttingDown from exc
                continue
            if not self.db_healthy:
                log.info("database_available_again")
            self.db_healthy = True
            self._on_health()
            return result

    async def _apply_isolating(self, plan: BatchPlan) -> BatchResult:
        try:
            return await self._apply_once(plan)
        except asyncpg.PostgresError as exc:
            if isinstance(exc, TRANSIENT_DB_ERRORS):
                raise
            parsed = plan.events + plan.repeats
            if len(parsed) <= 1:
                # The database refuses this very event (a value it cannot store):
                # it is bad input, so it is dead-lettered, never retried forever.
                rejected = [
                    DeadLetter(
                        p.record,
                        DeadLetterReason.INVALID,
                        f"rejected by the database: {exc.sqlstate} {type(exc).__name__}",
                    )
                    for p in parsed
                ]
                for p in parsed:
                    log.error(
                        "event_rejected_by_database",
                        sqlstate=exc.sqlstate,
                        **record_fields(p.record, str(p.event.event_id)),
                    )
                return await self._apply_once(BatchPlan.of([], plan.dead + rejected))
            half = len(parsed) // 2
            first = await self._apply_isolating(BatchPlan.of(parsed[:half], plan.dead))
            second = await self._apply_isolating(BatchPlan.of(parsed[half:]))
            return _merge(first, second)

    async def _apply_once(self, plan: BatchPlan) -> BatchResult:
        async with self._pool.acquire() as conn, conn.transaction():
            return await apply_batch(conn, plan, self._out, self._randbits, tz=self._tz)

    def _observe(self, result: BatchResult, size: int, seconds: float) -> None:
        m = self._metrics
        m.batch_size.observe(size)
        m.batch_duration.observe(seconds)
        for (topic, event_type), n in result.applied.items():
            m.events.labels(topic, event_type, "applied").inc(n)
        for (topic, event_type), n in result.duplicates.items():
            m.events.labels(topic, event_type, "duplicate").inc(n)
        for (topic, reason), n in result.dead_lettered.items():
            m.events.labels(topic, self._topic_types.get(topic, "unknown"), "dead_lettered").inc(n)
            m.dead_letters.labels(topic, reason).inc(n)
        for kind, n in result.unknown_codes.items():
            m.unknown_codes.labels(kind).inc(n)
        m.observe_references(result.unknown_references, result.foreign_currency)
        for (status, reason), n in result.attributions.items():
            m.attributions.labels(status, reason).inc(n)
        m.subscriptions_resent.inc(result.subscriptions_resent)
        for conflict in result.subscription_conflicts:
            m.subscription_conflicts.inc()
            log.warning(
                "subscription_conflict",
                subscription_id=conflict.subscription_id,
                differs=list(conflict.differs),
                **record_fields(conflict.parsed.record, str(conflict.parsed.event.event_id)),
            )
        for (event_type, field, action), n in result.free_text.items():
            m.free_text.labels(event_type, field, action).inc(n)
        now = datetime.now(UTC)
        for p in result.applied_events:
            m.event_age.observe(max(0.0, (now - p.event.occurred_at).total_seconds()))
            for amendment in p.amended:  # the field and what was done, never the text
                log.warning(
                    "free_text_amended",
                    field=amendment.field,
                    action=amendment.action,
                    **record_fields(p.record, str(p.event.event_id)),
                )
        for d in result.dead_letters:
            log.warning(
                "message_dead_lettered",
                reason=d.reason.value,
                detail=d.detail,
                **record_fields(d.record),
            )


def _merge(a: BatchResult, b: BatchResult) -> BatchResult:
    a.applied.update(b.applied)
    a.duplicates.update(b.duplicates)
    a.dead_lettered.update(b.dead_lettered)
    a.unknown_codes.update(b.unknown_codes)
    a.unknown_references.update(b.unknown_references)
    a.foreign_currency.update(b.foreign_currency)
    a.free_text.update(b.free_text)
    a.attributions.update(b.attributions)
    a.subscription_conflicts += b.subscription_conflicts
    a.subscriptions_resent += b.subscriptions_resent
    a.codes_assigned += b.codes_assigned
    a.credits += b.credits
    a.applied_events += b.applied_events
    a.dead_letters += b.dead_letters
    return a

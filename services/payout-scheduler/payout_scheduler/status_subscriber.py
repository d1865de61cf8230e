"""Finance's status topic, applied exactly once: one member of the scheduler replicas' group.

A FastStream batch subscriber on ``finance.payout.status`` in the consumer
group ``PAYOUT_STATUS_GROUP``: every scheduler replica is a member, and the
group shares the topic's partitions among them. The discipline is the
consumer's:

- ``AckPolicy.MANUAL``: FastStream commits nothing by itself;
- one database transaction per batch (:func:`status_store.apply_status_batch`),
  whose inbox (``payout_reports``, keyed by event id) makes a redelivery change
  nothing;
- the batch's offsets are committed explicitly, per partition, only after that
  transaction committed;
- a batch that fails is never committed past: the subscriber seeks back to its
  first offset on every partition it touched, and it is fetched again;
- a database outage is retried with backoff, the batch neither committed nor
  skipped; a message the database refuses is isolated and dead-lettered, so a
  partition is never blocked and bad input never stops the service.

Batches are handled one at a time; a rebalance waits for the batch in hand
(its commit included) before the partitions move.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from typing import Any

import asyncpg
import structlog
from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from faststream import AckPolicy
from faststream.kafka import KafkaBroker, KafkaMessage

from payout_scheduler.metrics import DEAD_LETTERED, StatusMetrics
from payout_scheduler.status_ingest import StatusReport, parse_status_records
from payout_scheduler.status_store import (
    DUPLICATE,
    StatusBatchResult,
    apply_status_batch,
    count_payouts,
)
from referral_events import DeadLetterReason
from referral_program.payouts import Outcome
from referral_program.table import PayoutStatus
from referral_runtime.db import TRANSIENT_DB_ERRORS
from referral_runtime.dead_letters import DeadLetter
from referral_runtime.records import (
    Record,
    batch_fields,
    first_offsets,
    next_offsets,
    record_fields,
    skip_decoding,
    tolerant_batch_parser,
)
from referral_runtime.retry import Backoff, sleep_unless_stopped
from referral_runtime.settings import Settings

log = structlog.get_logger(__name__)

#: Status messages per batch: finance reports a few thousand payouts a month at most.
MAX_BATCH = 500
#: The payout gauges are recomputed at least this often (and after each batch that
#: changed a payout), so an overdue payout shows within this long of midnight.
GAUGE_REFRESH_SECONDS = 30.0

#: How each outcome is logged: money out wrong is an error a person must act on.
_LOG_LEVEL = {
    Outcome.MISMATCHED: "error",
    Outcome.PAID_TWICE: "error",
    Outcome.PAID_SUPERSEDED_ATTEMPT: "warning",
    Outcome.UNKNOWN_PAYOUT: "warning",
    Outcome.UNKNOWN_ATTEMPT: "warning",
}


class ShuttingDown(Exception):
    """The service stops while the batch waits for the database: nothing is committed."""


class _Rebalances(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, subscriber: StatusSubscriber) -> None:
        self._subscriber = subscriber

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        # Finish the batch in hand (and its commit) while this member still owns it.
        async with self._subscriber.in_flight:
            pass
        for tp in revoked:
            with contextlib.suppress(KeyError):
                self._subscriber.metrics.lag.remove(str(tp.partition))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self._subscriber.metrics.assigned_partitions.set(len(assigned))
        log.info(
            "payout_status_partitions_assigned",
            partitions=sorted(f"{t.topic}:{t.partition}" for t in assigned),
        )


class StatusSubscriber:
    """Applies ``payout.paid`` / ``payout.failed`` to payouts; keeps the payout gauges."""

    def __init__(
        self,
        settings: Settings,
        metrics: StatusMetrics,
        stopping: asyncio.Event,
        *,
        today: Callable[[], date],
        max_backoff: float = 30.0,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.stopping = stopping
        self._today = today
        self._max_backoff = max_backoff
        self.pool: asyncpg.Pool | None = None
        #: Held while a batch is written and committed (a rebalance waits for it).
        self.in_flight = asyncio.Lock()
        self.subscribed = False
        #: Whether the last batch transaction reached the database.
        self.db_healthy = True
        self._changed = asyncio.Event()
        self._broker_started = False
        self.broker = KafkaBroker(
            settings.kafka_bootstrap_servers,
            graceful_timeout=8.0,
            logger=None,
            security=settings.faststream_security(),
        )
        self.broker.subscriber(
            settings.topics.payout_status,
            batch=True,
            max_records=MAX_BATCH,
            batch_timeout_ms=settings.consumer_batch_timeout_ms,
            group_id=settings.payout_status_group,
            auto_offset_reset="earliest",
            ack_policy=AckPolicy.MANUAL,
            listener=_Rebalances(self),
            session_timeout_ms=settings.consumer_session_timeout_ms,
            fetch_max_wait_ms=settings.consumer_fetch_max_wait_ms,
            heartbeat_interval_ms=max(100, settings.consumer_session_timeout_ms // 3),
            parser=tolerant_batch_parser,
            decoder=skip_decoding,
            title="on_payout_statuses",
        )(self.on_payout_statuses)

    def ready(self) -> bool:
        """Subscribed, and the last batch reached the database."""
        return self.subscribed and self.db_healthy

    async def start(self, pool: asyncpg.Pool) -> bool:
        """Join the group (FastStream's broker and subscriber); undone before a retry."""
        self.pool = pool
        try:
            await self.broker.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await self.broker.stop()
            raise
        self._broker_started = True
        self.subscribed = True
        log.info("payout_status_subscribed", topic=self.settings.topics.payout_status)
        return True

    async def stop(self) -> None:
        """Finish the batch in hand (its commit included), then leave the group."""
        self.subscribed = False
        if self._broker_started:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(6):
                    async with self.in_flight:
                        pass
            with contextlib.suppress(Exception):
                await self.broker.stop()
            self._broker_started = False

    async def on_payout_statuses(self, msg: KafkaMessage) -> None:
        """One fetched batch: applied in one transaction, then its offsets committed."""
        records = msg.raw_message
        if isinstance(records, tuple) and records:
            async with self.in_flight:
                await self.handle(records, msg.consumer)

    async def handle(self, records: Sequence[Record], consumer: Any) -> None:
        """Apply ``records`` and commit their offsets; on failure seek back to them."""
        started = time.perf_counter()
        reports, dead = parse_status_records(records, self.settings.max_message_bytes)
        try:
            result = await self._apply_with_retry(reports, dead)
        except ShuttingDown:
            return  # nothing committed: the next owner reads from the last commit
        except Exception as exc:
            log.error(
                "payout_status_batch_failed_will_retry",
                error=type(exc).__name__,
                **batch_fields(records),
                exc_info=True,
            )
            self._rewind(consumer, records)
            await sleep_unless_stopped(self.stopping, 1.0)
            return
        try:
            await consumer.commit(next_offsets(records))
        except (CommitFailedError, KafkaError) as exc:
            # The effects are durable; the next owner reads these records as duplicates.
            self.metrics.commit_failures.inc()
            log.warning(
                "payout_status_commit_failed", error=type(exc).__name__, **batch_fields(records)
            )
        self._observe(result, time.perf_counter() - started)
        await self._update_lag(consumer)

    async def _apply_with_retry(
        self, reports: Sequence[StatusReport], dead: Sequence[DeadLetter]
    ) -> StatusBatchResult:
        backoff = Backoff(0.1, self._max_backoff)
        while True:
            try:
                result = await self._apply_isolating(reports, dead)
            except TRANSIENT_DB_ERRORS as exc:
                self.db_healthy = False
                self.metrics.db_retries.inc()
                delay = backoff.next_delay()
                log.warning(
                    "payout_status_database_unavailable_retrying",
                    error=type(exc).__name__,
                    retry_in_s=round(delay, 2),
                )
                if await sleep_unless_stopped(self.stopping, delay):
                    raise ShuttingDown from exc
                continue
            self.db_healthy = True
            return result

    async def _apply_isolating(
        self, reports: Sequence[StatusReport], dead: Sequence[DeadLetter]
    ) -> StatusBatchResult:
        """Apply; a batch the database refuses for a data reason is halved until the one
        report it refuses is isolated and dead-lettered."""
        try:
            return await self._apply_once(reports, dead)
        except asyncpg.PostgresError as exc:
            if isinstance(exc, TRANSIENT_DB_ERRORS):
                raise
            if len(reports) <= 1:
                rejected = [
                    DeadLetter(
                        r.record,
                        DeadLetterReason.INVALID,
                        f"rejected by the database: {exc.sqlstate} {type(exc).__name__}",
                    )
                    for r in reports
                ]
                return await self._apply_once([], [*dead, *rejected])
            half = len(reports) // 2
            first = await self._apply_isolating(reports[:half], dead)
            second = await self._apply_isolating(reports[half:], [])
            first.applied += second.applied
            first.dead_letters += second.dead_letters
            return first

    async def _apply_once(
        self, reports: Sequence[StatusReport], dead: Sequence[DeadLetter]
    ) -> StatusBatchResult:
        assert self.pool is not None
        async with self.pool.acquire() as conn, conn.transaction():
            return await apply_status_batch(
                conn,
                reports,
                dead,
                dlq_topic=self.settings.topics.dlq,
                consumer_group=self.settings.payout_status_group,
                now=datetime.now(UTC),
            )

    def _rewind(self, consumer: Any, records: Sequence[Record]) -> None:
        assigned = consumer.assignment()
        for tp, offset in first_offsets(records).items():
            if tp in assigned:
                consumer.seek(tp, offset)

    def _observe(self, result: StatusBatchResult, seconds: float) -> None:
        m = self.metrics
        m.batch_duration.observe(seconds)
        for (event_type, outcome), n in result.outcomes().items():
            m.events.labels(event_type, outcome).inc(n)
        for d in result.dead_letters:
            m.events.labels("unknown", DEAD_LETTERED).inc()
            m.dead_letters.labels(d.reason.value).inc()
            log.warning(
                "payout_status_dead_lettered",
                reason=d.reason.value,
                detail=d.detail,
                **record_fields(d.record),
            )
        for applied in result.applied:
            if applied.outcome == DUPLICATE:
                continue
            data = applied.report.event.data
            getattr(log, _LOG_LEVEL.get(Outcome(applied.outcome), "info"))(
                "payout_status_applied",
                event_type=applied.report.event.event_type,
                payout_id=str(data.payout_id),
                attempt=data.attempt,
                outcome=applied.outcome,
                status=applied.status,
                **record_fields(applied.report.record, str(applied.report.event.event_id)),
            )
            self._changed.set()

    async def _update_lag(self, consumer: Any) -> None:
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is None:
                continue
            with contextlib.suppress(Exception):
                position = await consumer.position(tp)
                self.metrics.lag.labels(str(tp.partition)).set(max(0, high - position))

    async def refresh_gauges(self) -> None:
        """Recompute the payout gauges from the table (the same on every replica)."""
        assert self.pool is not None
        async with self.pool.acquire() as conn:
            counts = await count_payouts(conn, self._today())
        for status in PayoutStatus:  # every status, zero when no payout has it
            self.metrics.payouts.labels(status.value).set(counts.payouts.get(status, 0))
            self.metrics.payouts_cents.labels(status.value).set(counts.cents.get(status, 0))
        self.metrics.overdue.set(counts.overdue)

    async def keep_gauges(self) -> None:
        """Refresh the gauges every :data:`GAUGE_REFRESH_SECONDS` and soon after a batch that
        changed a payout, until stopping; a database error only delays the next refresh."""
        while not self.stopping.is_set():
            self._changed.clear()
            try:
                await self.refresh_gauges()
            except Exception as exc:
                log.warning("payout_gauges_refresh_failed", error=type(exc).__name__)
            # At most one refresh a second, however many batches arrive.
            if await sleep_unless_stopped(self.stopping, 1.0):
                return
            changed = asyncio.create_task(self._changed.wait())
            stopped = asyncio.create_task(self.stopping.wait())
            try:
                await asyncio.wait(
                    {changed, stopped},
                    timeout=GAUGE_REFRESH_SECONDS,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                changed.cancel()
                stopped.cancel()

"""FastStream wiring of the referral consumer: one batch subscriber on the billing topics.

Run it with ``referral-consumer`` (uvicorn + this ASGI app), or
``faststream run --factory referral_consumer.app:create_app``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import asyncpg
import structlog
from aiokafka import AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from faststream import AckPolicy
from faststream.asgi import AsgiFastStream, AsgiResponse, get
from faststream.kafka import KafkaBroker, KafkaMessage
from prometheus_client import CollectorRegistry, make_asgi_app

from referral_consumer import progress
from referral_consumer.metrics import ConsumerMetrics
from referral_consumer.parser import BatchParser
from referral_consumer.pipeline import BatchPipeline
from referral_consumer.writer import BatchWriter
from referral_runtime.db import open_pool
from referral_runtime.health import DependencyProbe
from referral_runtime.logs import configure_logging
from referral_runtime.outbox import OutboxRelay, start_producer
from referral_runtime.records import skip_decoding, tolerant_batch_parser
from referral_runtime.referral_state import Outbound
from referral_runtime.retry import Backoff, retry_until_stopped
from referral_runtime.settings import Settings

log = structlog.get_logger(__name__)

#: The longest wait between two attempts to reach a dependency that is down.
_MAX_BACKOFF_SECONDS = 30.0


class _Rebalances(ConsumerRebalanceListener):  # type: ignore[misc]
    """Finishes the batch in flight before partitions move; keeps the per-partition gauges
    to the partitions this member owns, and starts their stall clocks on assignment."""

    def __init__(self, service: ConsumerService) -> None:
        self._service = service
        self._metrics = service.metrics

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        # Commit the in-flight batch while this member still owns its partitions.
        if self._service.pipeline is not None:
            await self._service.pipeline.drain()
            self._service.pipeline.resume()
        self._metrics.rebalances.inc()
        progress.forget(revoked, self._service.progress, self._metrics)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self._metrics.assigned_partitions.set(len(assigned))
        self._service.progress.assign(assigned, time.monotonic())
        log.info(
            "partitions_assigned", partitions=sorted(f"{t.topic}:{t.partition}" for t in assigned)
        )


class ConsumerService:
    """Everything the consumer process owns, built once at start-up."""

    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.metrics = ConsumerMetrics(self.registry)
        self.stopping = asyncio.Event()
        self.pool: asyncpg.Pool | None = None
        self.writer: BatchWriter | None = None
        self.pipeline: BatchPipeline | None = None
        self.relay: OutboxRelay | None = None
        self._relay_task: asyncio.Task[None] | None = None
        self._producer: AIOKafkaProducer | None = None
        self._start_task: asyncio.Task[None] | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._progress_task: asyncio.Task[None] | None = None
        self._progress_due = asyncio.Event()
        #: The stall clock of every owned partition (referrals_consumer_partition_stalled_seconds).
        self.progress = progress.PartitionProgress()
        self._broker_started = False
        self.subscribed = False
        #: Set once the subscriber runs (tests and the harness wait for it).
        self.started = asyncio.Event()
        self.probe = DependencyProbe(
            lambda: self.pool,
            lambda: self._producer,
            interval=settings.health_probe_seconds,
        )
        self.broker = KafkaBroker(
            settings.kafka_bootstrap_servers,
            graceful_timeout=8.0,
            logger=None,
            security=settings.faststream_security(),
        )
        topics = settings.topics
        self.subscriber = self.broker.subscriber(
            *topics.billing.keys(),
            batch=True,
            max_records=settings.consumer_max_batch,
            batch_timeout_ms=settings.consumer_batch_timeout_ms,
            group_id=settings.consumer_group,
            # Partition p of every billing topic goes to the same member: billing keys
            # events by account, so one replica writes all of an account's facts and
            # replicas meet only on the referrers they read (see referral_state).
            partition_assignment_strategy=(RangePartitionAssignor,),
            auto_offset_reset="earliest",
            ack_policy=AckPolicy.MANUAL,
            listener=_Rebalances(self),
            max_partition_fetch_bytes=4 * 1024 * 1024,
            session_timeout_ms=settings.consumer_session_timeout_ms,
            fetch_max_wait_ms=settings.consumer_fetch_max_wait_ms,
            heartbeat_interval_ms=max(100, settings.consumer_session_timeout_ms // 3),
            parser=tolerant_batch_parser,
            decoder=skip_decoding,
            title="on_billing_events",
        )
        self.subscriber(self.on_billing_events)

    async def on_billing_events(self, msg: KafkaMessage) -> None:
        """Hand the batch to the pipeline: it commits offsets after the effects are durable."""
        assert self.pipeline is not None
        records = msg.raw_message
        if isinstance(records, tuple) and records:
            await self.pipeline.submit(records, msg.consumer)

    async def start(self) -> None:
        """Start in the background and return at once: the HTTP probes are served meanwhile.

        The database, the producer and the subscriber are connected with backoff and
        jitter until each answers, in that order (nothing is consumed before a batch
        can be written); :meth:`ready` is false until all of them are up.
        """
        self._start_task = asyncio.create_task(self._start_with_retries(), name="consumer-start")
        self._probe_task = asyncio.create_task(
            self.probe.run(self.stopping, self._set_ready), name="consumer-probe"
        )

    async def _start_with_retries(self) -> None:
        s = self.settings
        pool = await retry_until_stopped(
            "database_connect", partial(open_pool, s), self.stopping, _backoff()
        )
        if pool is None:
            return
        self.pool = pool
        self.writer = BatchWriter(
            pool,
            s.topics.billing,
            Outbound.from_settings(s),
            self.metrics,
            self.stopping,
            tz=s.tz,
            on_health=self._set_ready,
        )
        parser = BatchParser(
            s.topics.billing,
            max_message_bytes=s.max_message_bytes,
            program_currency=s.program_currency,
        )
        self.pipeline = BatchPipeline(
            parser,
            self.writer,
            self.metrics,
            overlap=s.consumer_overlap,
            in_flight=s.consumer_transactions_in_flight,
            on_commit=self._progress_due.set,
        )
        producer = await retry_until_stopped(
            "broker_connect", partial(start_producer, s), self.stopping, _backoff()
        )
        if producer is None:
            return
        self._producer = producer
        self.relay = OutboxRelay.from_settings(pool, producer, self.metrics.outbox, s)
        self._relay_task = asyncio.create_task(
            self.relay.run(self.stopping, on_health=self._set_ready), name="outbox-relay"
        )
        if not await retry_until_stopped(
            "subscriber_start", self._start_broker, self.stopping, _backoff()
        ):
            return
        self.subscribed = True
        self._progress_task = asyncio.create_task(
            self._watch_partitions(), name="partition-progress"
        )
        await self.probe.check()
        self._set_ready()
        self.started.set()
        log.info("consumer_started", topics=list(s.topics.billing))

    async def _watch_partitions(self) -> None:
        """Refresh the per-partition lag and stall gauges after every commit and on a timer,
        whether batches arrive or not: a partition that stops being applied must show it,
        not go quiet."""
        while not self.stopping.is_set():
            self._progress_due.clear()
            consumer, pipeline = self.subscriber.consumer, self.pipeline
            if consumer is not None and pipeline is not None:
                try:
                    await progress.refresh(
                        consumer,
                        self.progress,
                        pipeline.unapplied_from(),
                        self.metrics,
                        time.monotonic,
                    )
                except Exception as exc:  # never let a gauge take the consumer down
                    log.warning("partition_progress_failed", error=type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress_due.wait(), progress.REFRESH_SECONDS)

    async def _start_broker(self) -> bool:
        """FastStream's broker and subscriber; a failed start is undone before the retry."""
        try:
            await self.broker.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await self.broker.stop()
            raise
        self._broker_started = True
        return True

    async def stop(self) -> None:
        """SIGTERM: finish the batch in hand (its commit included), then release everything."""
        await self.begin_shutdown()
        for task in (self._start_task, self._probe_task, self._progress_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._broker_started:
            with contextlib.suppress(Exception):
                await self.broker.stop()
        await self.close_resources()

    async def begin_shutdown(self) -> None:
        """Finish the batch in flight (its commit included) before the broker stops."""
        self.subscribed = False
        self.metrics.ready.set(0)
        if self.pipeline is not None:
            try:
                await asyncio.wait_for(self.pipeline.drain(), timeout=6)
            except TimeoutError:
                log.warning("shutdown_abandoning_batch_in_flight")
        # Aborts database retries; an unfinished batch is simply not committed.
        self.stopping.set()
        if self.pipeline is not None:
            await self.pipeline.drain()

    async def close_resources(self) -> None:
        if self._relay_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._relay_task
        if self.relay is not None:
            # Publish what the last batches queued, so a clean stop leaves no backlog.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.relay.drain(), timeout=5)
        if self._producer is not None:
            await self._producer.stop()
        if self.pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.pool.close(), timeout=5)
        log.info("consumer_stopped")

    def ready(self) -> bool:
        """Subscribed, and the database and the broker answer (probe, writer and relay agree)."""
        relay, writer = self.relay, self.writer
        return (
            self.subscribed
            and not self.stopping.is_set()
            and self.probe.db_ok
            and self.probe.broker_ok
            and writer is not None
            and writer.db_healthy
            and relay is not None
            and relay.db_ok
            and relay.broker_ok
        )

    def _set_ready(self) -> None:
        self.metrics.ready.set(1 if self.ready() else 0)


def _backoff() -> Backoff:
    return Backoff(0.5, _MAX_BACKOFF_SECONDS)


class ConsumerAsgi(AsgiFastStream):
    """The consumer's ASGI app, with its own lifespan.

    FastStream's lifespan starts the broker and fails the application's startup
    when Kafka (or, through a startup hook, Postgres) is unreachable. Here the
    lifespan only starts :meth:`ConsumerService.start`, which connects in the
    background with retries, so the probes answer (503) during an outage; on
    shutdown it finishes the batch in hand, commits, and stops the broker.
    """

    service: ConsumerService

    @contextlib.asynccontextmanager
    async def start_lifespan_context(
        self, run_extra_options: dict[str, Any] | None = None
    ) -> AsyncIterator[None]:
        await self.service.start()
        try:
            yield
        finally:
            await self.service.stop()

    async def not_found(self, scope: Any, receive: Any, send: Any) -> None:
        """A plain 404 for a path nothing serves. FastStream's own answers "Application
        doesn't support regular HTTP protocol", which sends whoever probes the wrong path
        looking for a protocol problem."""
        if scope["type"] != "http":
            await super().not_found(scope, receive, send)
            return
        response = AsgiResponse(
            b"not found", status_code=404, headers={"content-type": "text/plain; charset=utf-8"}
        )
        await response(scope, receive, send)


def create_app(settings: Settings | None = None) -> AsgiFastStream:
    """The ASGI app: broker + /healthz, /readyz and /metrics (the read API is referral-web's).

    Logging is configured here too, so ``faststream run --factory`` logs like the
    console script (JSON, redaction, ``LOG_LEVEL``).
    """
    from referral_runtime.settings import load_settings

    settings = settings or load_settings()
    configure_logging(settings.log_level, settings.log_format)
    service = ConsumerService(settings)

    @get
    async def healthz(scope: Any) -> AsgiResponse:
        return AsgiResponse(b"ok", status_code=200)

    @get
    async def readyz(scope: Any) -> AsgiResponse:
        if service.ready():
            return AsgiResponse(b"ready", status_code=200)
        return AsgiResponse(b"not ready", status_code=503)

    app = ConsumerAsgi(
        service.broker,
        asgi_routes=[
            ("/healthz", healthz),
            ("/readyz", readyz),
            ("/metrics", make_asgi_app(service.registry)),
        ],
        logger=None,
    )
    app.service = service
    return app

"""The long-running scheduler and ``tick``: decision passes, the outbox relay, finance's
status reports, their health.

Database and broker outages never stop the process: each loop backs off and
retries, and readiness says not ready meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import date, datetime
from functools import partial

import asyncpg
import structlog
from aiokafka import AIOKafkaProducer

from payout_scheduler.completeness import broker_offsets
from payout_scheduler.metrics import SchedulerMetrics
from payout_scheduler.passes import (
    PassResult,
    catch_up,
    decide_on_complete_facts,
    refresh_due_soon,
    refresh_overdue,
)
from payout_scheduler.status_subscriber import StatusSubscriber
from referral_program import business_days
from referral_runtime.db import TRANSIENT_DB_ERRORS, create_pool, open_pool
from referral_runtime.health import DependencyProbe
from referral_runtime.outbox import OutboxRelay, start_producer
from referral_runtime.retry import Backoff, retry_until_stopped, sleep_unless_stopped
from referral_runtime.settings import Settings

log = structlog.get_logger(__name__)

_MAX_BACKOFF_SECONDS = 60.0


@dataclass
class TickResult:
    """A ``payout-scheduler tick``: the pass, then how much of the outbox it published."""

    decision_pass: PassResult
    published: int
    backlog: int


async def tick(settings: Settings, as_of: date, metrics: SchedulerMetrics) -> TickResult:
    """One pass as of ``as_of`` on complete facts, then publish the outbox until it is empty.

    The pass first waits for the consumer group to apply every billing event
    published when it began; if it does not in time, nothing is decided
    (``decision_pass.held_back``) and the outbox is published all the same.
    The pass commits before anything is published: if the broker becomes
    unreachable the decisions stand and their messages wait in the outbox (the
    error propagates after the pass).
    """
    business_days.load_holidays(as_of.year)
    pool = await create_pool(settings.database_url, size=2)
    try:
        async with broker_offsets(settings) as offsets:
            decision_pass = await decide_on_complete_facts(pool, settings, as_of, metrics, offsets)
        producer = await start_producer(settings)
        try:
            relay = OutboxRelay.from_settings(pool, producer, metrics.outbox, settings)
            published = await relay.drain()
        finally:
            await producer.stop()
        backlog = int(metrics.registry.get_sample_value("referrals_outbox_backlog") or 0)
    finally:
        await pool.close()
    return TickResult(decision_pass, published, backlog)


class SchedulerService:
    """The long-running scheduler: decision passes, the relay and their health, built once.

    Database and broker outages never stop the process: each loop backs off and
    retries, and :meth:`ready` says not ready meanwhile.
    """

    def __init__(self, settings: Settings, metrics: SchedulerMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or SchedulerMetrics()
        self.stopping = asyncio.Event()
        self.pool: asyncpg.Pool | None = None
        self.db_ok = False  # the decision loop's last pass reached the database
        self.relay: OutboxRelay | None = None
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None
        self._probe_task: asyncio.Task[None] | None = None
        #: Finance's payout.paid / payout.failed, applied by this replica's share of the group.
        self.statuses = StatusSubscriber(
            settings, self.metrics.status, self.stopping, today=self.today
        )
        #: Database and broker as answered every ``HEALTH_PROBE_SECONDS``, also while idle.
        self.probe = DependencyProbe(
            lambda: self.pool,
            lambda: self._producer,
            interval=settings.health_probe_seconds,
        )

    def today(self) -> date:
        """The current date in the program time zone (the shell reads the clock, not the core)."""
        return datetime.now(self.settings.tz).date()

    async def start(self) -> None:
        """Start the background work; returns at once (connections are made with retries)."""
        business_days.load_holidays(self.today().year)
        self._task = asyncio.create_task(self._run(), name="payout-scheduler")
        self._probe_task = asyncio.create_task(
            self.probe.run(self.stopping, self._set_ready), name="payout-scheduler-probe"
        )

    async def stop(self, timeout: float = 20.0) -> None:
        """Finish the chunk in hand, publish what is queued (briefly), release everything."""
        self.stopping.set()
        self._set_ready()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout)
            except TimeoutError:
                log.warning("scheduler_stop_timed_out")
            except Exception:
                log.exception("scheduler_task_failed")
        if self._probe_task is not None:
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe_task
        log.info("scheduler_stopped")

    def alive(self) -> bool:
        """False when the background work ended without being asked to (a bug)."""
        return self.stopping.is_set() or self._task is None or not self._task.done()

    def ready(self) -> bool:
        relay = self.relay
        return (
            not self.stopping.is_set()
            and self.db_ok
            and self.probe.db_ok
            and self.probe.broker_ok
            and relay is not None
            and relay.db_ok
            and relay.broker_ok
            and self.statuses.ready()
        )

    def _set_ready(self) -> None:
        self.metrics.ready.set(1 if self.ready() else 0)

    async def _run(self) -> None:
        pool = await retry_until_stopped(
            "database_connect",
            partial(open_pool, self.settings),
            self.stopping,
            Backoff(0.5, _MAX_BACKOFF_SECONDS),
        )
        if pool is None:
            return
        self.pool = pool
        try:
            await asyncio.gather(
                self._decision_loop(pool), self._relay_loop(pool), self._status_loop(pool)
            )
        finally:
            await pool.close()

    async def _decision_loop(self, pool: asyncpg.Pool) -> None:
        s = self.settings
        backoff = Backoff(1.0, _MAX_BACKOFF_SECONDS)
        while not self.stopping.is_set():
            try:
                passes = await catch_up(pool, s, self.today(), self.metrics, stopping=self.stopping)
                await refresh_due_soon(pool, s, self.today(), self.metrics)
                await refresh_overdue(pool, s, self.today(), self.metrics)
                self.db_ok = True
                backoff.reset()
                wait = float(s.scheduler_interval_seconds)
                if passes and passes[-1].held_back:  # tried again soon, not an hour later
                    wait = min(wait, s.scheduler_held_back_retry_seconds)
            except Exception as exc:
                self.metrics.pass_failures.inc()
                if isinstance(exc, TRANSIENT_DB_ERRORS):
                    self.db_ok = False
                    log.warning("decision_pass_failed", error=type(exc).__name__)
                else:
                    log.exception("decision_pass_failed", error=type(exc).__name__)
                wait = backoff.next_delay()
            self._set_ready()
            await sleep_unless_stopped(self.stopping, wait)

    async def _relay_loop(self, pool: asyncpg.Pool) -> None:
        """Publish the outbox continuously; on stop, publish what is queued and return."""
        s = self.settings
        producer = await retry_until_stopped(
            "broker_connect",
            partial(start_producer, s),
            self.stopping,
            Backoff(0.5, _MAX_BACKOFF_SECONDS),
        )
        if producer is None:
            return
        self._producer = producer
        self.relay = OutboxRelay.from_settings(pool, producer, self.metrics.outbox, s)
        self._set_ready()
        try:
            await self.relay.run(
                self.stopping,
                refresh=lambda: refresh_due_soon(pool, s, self.today(), self.metrics),
                on_health=self._set_ready,
            )
            # What the last pass queued goes out now, if the broker takes it.
            with contextlib.suppress(Exception):
                await self.relay.drain()
        finally:
            self._producer = None
            await producer.stop()

    async def _status_loop(self, pool: asyncpg.Pool) -> None:
        """Join the status topic's group and keep the payout gauges until stopping."""
        joined = await retry_until_stopped(
            "payout_status_subscribe",
            partial(self.statuses.start, pool),
            self.stopping,
            Backoff(0.5, _MAX_BACKOFF_SECONDS),
        )
        try:
            if joined:
                self._set_ready()
                await self.statuses.keep_gauges()
        finally:
            await self.statuses.stop()

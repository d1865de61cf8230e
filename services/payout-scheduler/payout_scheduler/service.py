"""The scheduler's imperative shell: decision passes, catch-up, the outbox relay, the process.

A pass walks the decidable referrals in ``referral_id`` order, one chunk per
transaction: lock the chunk (``SKIP LOCKED``, so replicas share the work and
never decide a referral twice), decide it with the pure core, write the
``payouts`` rows and the ``payout.due`` outbox rows, commit. The relay
publishes the outbox afterwards, at least once, with ``event_id`` =
``payout_id``. A crash anywhere loses nothing: committed chunks are decided and
their messages wait in the outbox; uncommitted ones are decided by the next pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import time
from collections import Counter
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import TypeVar
from uuid import UUID

import asyncpg
import structlog
import uvicorn
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from payout_scheduler import store
from payout_scheduler.metrics import SchedulerMetrics
from referral_program.business_days import business_day_horizon
from referral_program.decisions import Decision, decidable_before, decide
from referral_program.table import Outcome, format_money
from referral_runtime.db import TRANSIENT_DB_ERRORS, create_pool
from referral_runtime.outbox import OutboxRelay, make_producer
from referral_runtime.settings import Settings

log = structlog.get_logger(__name__)
T = TypeVar("T")

#: A scheduler down for longer catches up with at most this many daily passes; the
#: first of them decides everything decidable by its date, so nothing is skipped.
MAX_CATCH_UP_DAYS = 366
#: ``referrals_scheduler_due_soon`` counts payouts whose ``pay_by`` is this many
#: business days away or closer.
DUE_SOON_BUSINESS_DAYS = 3
#: Chunks decided concurrently by one pass (one pool connection each).
PASS_WORKERS = 2
#: Candidate ids are read this many chunks at a time.
CHUNKS_PER_PAGE = 10
_GAUGE_REFRESH_SECONDS = 5.0
_MAX_BACKOFF_SECONDS = 60.0


@dataclass
class PassResult:
    """What one decision pass recorded (decisions that were already recorded are not counted)."""

    as_of: date
    decided: Counter[tuple[str, str]] = field(default_factory=Counter)  # (outcome, reason)
    cash_due_cents: Counter[str] = field(default_factory=Counter)  # plan family -> cents
    chunks: int = 0
    seconds: float = 0.0
    completed: bool = False  # False when stopped before the last chunk

    @property
    def total(self) -> int:
        return sum(self.decided.values())

    def count(self, outcome: str) -> int:
        return sum(n for (o, _), n in self.decided.items() if o == outcome)

    @property
    def cash_total_cents(self) -> int:
        return sum(self.cash_due_cents.values())

    def summary(self) -> str:
        """One human paragraph: what was decided as of the day, and the cash due."""
        cash = ", ".join(
            f"{family} {format_money(cents)}"
            for family, cents in sorted(self.cash_due_cents.items())
        )
        reasons = ", ".join(
            f"{outcome}/{reason} {n}"
            for (outcome, reason), n in sorted(self.decided.items())
            if outcome != Outcome.DUE
        )
        return (
            f"as of {self.as_of:%Y-%m-%d}: decided {self.total} referrals in "
            f"{self.seconds:.2f}s: {self.count(Outcome.DUE)} due, {self.count(Outcome.FORFEITED)} forfeited, "
            f"{self.count(Outcome.INELIGIBLE)} ineligible"
            + (f" ({reasons})" if reasons else "")
            + f"; cash due {format_money(self.cash_total_cents)}"
            + (f" ({cash})" if cash else "")
            + "."
        )


async def run_pass(
    pool: asyncpg.Pool,
    settings: Settings,
    as_of: date,
    metrics: SchedulerMetrics,
    *,
    stopping: asyncio.Event | None = None,
    workers: int = PASS_WORKERS,
) -> PassResult:
    """Decide every referral decidable on ``as_of`` that no replica has decided; record the pass.

    One transaction per chunk of ``settings.scheduler_batch`` referrals;
    ``workers`` chunks are in flight at once (on as many pool connections), so
    the database writes one chunk while Python decides the next. Returns the
    decisions this call recorded. Database errors propagate; chunks committed
    before the error stay decided, and the next pass carries on from there.
    """
    with _no_cycle_collection():
        return await _run_pass(pool, settings, as_of, metrics, stopping, workers)


async def _run_pass(
    pool: asyncpg.Pool,
    settings: Settings,
    as_of: date,
    metrics: SchedulerMetrics,
    stopping: asyncio.Event | None,
    workers: int,
) -> PassResult:
    started = time.perf_counter()
    result = PassResult(as_of)
    bound = decidable_before(as_of, settings.tz, settings.payout_settle_days)
    chunks = _candidate_chunks(pool, bound, settings.scheduler_batch)
    feeding = asyncio.Lock()

    async def worker() -> None:
        while stopping is None or not stopping.is_set():
            async with feeding:
                ids = await anext(chunks, None)
            if ids is None:
                return
            recorded = await _decide_chunk(pool, settings, as_of, bound, ids)
            result.chunks += 1
            _count(recorded, result, metrics)

    tasks = [asyncio.create_task(worker()) for _ in range(max(1, workers))]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    finally:
        await chunks.aclose()
    result.completed = stopping is None or not stopping.is_set()
    result.seconds = time.perf_counter() - started
    if result.completed:
        async with pool.acquire() as conn:
            await store.record_pass(conn, as_of, result.total)
        metrics.pass_duration.observe(result.seconds)
        metrics.last_success.set(time.time())
    log.info(
        "decision_pass_finished" if result.completed else "decision_pass_stopped",
        as_of=as_of.isoformat(),
        decided=result.total,
        due=result.count(Outcome.DUE),
        cash_due_cents=result.cash_total_cents,
        chunks=result.chunks,
        seconds=round(result.seconds, 3),
    )
    return result


_gc_holders = 0
_gc_was_enabled = True


@contextlib.contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """Suspend the cycle collector while a pass runs (process-wide, back after the last pass).

    A pass allocates millions of short-lived objects and creates no garbage
    cycles: reference counting frees each chunk's objects when the chunk is
    done. Each collection only re-walks the chunk in hand. With the default
    thresholds that was a third of the pass's CPU; with a 20,000-object
    threshold, still ~60 collections and 0.2-0.3 s of a 5 s pass. Cycles made
    meanwhile elsewhere in the process (the relay, the HTTP server) wait for
    the collector until the pass ends.
    """
    global _gc_holders, _gc_was_enabled
    if _gc_holders == 0:
        _gc_was_enabled = gc.isenabled()
        gc.disable()
    _gc_holders += 1
    try:
        yield
    finally:
        _gc_holders -= 1
        if _gc_holders == 0 and _gc_was_enabled:
            gc.enable()


async def _candidate_chunks(
    pool: asyncpg.Pool, bound: datetime, batch: int
) -> AsyncGenerator[list[UUID], None]:
    """Undecided candidate ids in ``referral_id`` order (keyset pages), ``batch`` at a time."""
    after = store.FIRST_KEY
    page_size = batch * CHUNKS_PER_PAGE
    while True:
        async with pool.acquire() as conn:
            page = await store.decidable_ids(conn, bound, after, page_size)
        for start in range(0, len(page), batch):
            yield page[start : start + batch]
        if len(page) < page_size:
            return
        after = page[-1]


async def _decide_chunk(
    pool: asyncpg.Pool, settings: Settings, as_of: date, bound: datetime, ids: list[UUID]
) -> list[Decision]:
    """One transaction: lock the chunk, decide it, write payouts and outbox rows."""
    tz = settings.tz
    async with pool.acquire() as conn, conn.transaction():
        facts = await store.lock_decidable(conn, ids, bound)
        if not facts:
            return []
        decided = [
            (f, d)
            for f in facts
            if (d := decide(f, as_of, tz, settings.payout_settle_days)) is not None
        ]
        recorded = await store.record_decisions(
            conn, decided, as_of, settings.topics.payout_due, tz
        )
    return [d for _, d in decided if d.referral_id in recorded]


def _count(recorded: list[Decision], result: PassResult, metrics: SchedulerMetrics) -> None:
    decided: Counter[tuple[str, str]] = Counter()
    cash: Counter[str] = Counter()
    for d in recorded:
        decided[(d.outcome, d.reason or "")] += 1
        if d.outcome == Outcome.DUE and d.plan_family is not None:
            cash[d.plan_family] += d.amount_cents
    for (outcome, reason), n in decided.items():
        metrics.decisions.labels(outcome, reason).inc(n)
    for family, cents in cash.items():
        metrics.cash_due_cents.labels(family).inc(cents)
    result.decided.update(decided)
    result.cash_due_cents.update(cash)


async def catch_up(
    pool: asyncpg.Pool,
    settings: Settings,
    today: date,
    metrics: SchedulerMetrics,
    *,
    stopping: asyncio.Event | None = None,
) -> list[PassResult]:
    """Run a pass for each day after the last recorded pass up to ``today`` (at least today).

    Decisions do not depend on the pass date, so the pass as of ``today`` alone
    would decide everything decidable; the daily passes keep ``scheduler_passes``
    a complete record of the days, and each decides what became decidable that day.
    """
    async with pool.acquire() as conn:
        last = await store.last_pass(conn)
    first = today
    if last is not None and last < today:
        first = max(last + timedelta(days=1), today - timedelta(days=MAX_CATCH_UP_DAYS - 1))
    results = []
    day = first
    while day <= today and (stopping is None or not stopping.is_set()):
        results.append(await run_pass(pool, settings, day, metrics, stopping=stopping))
        day += timedelta(days=1)
    return results


async def refresh_due_soon(
    pool: asyncpg.Pool, settings: Settings, today: date, metrics: SchedulerMetrics
) -> int:
    """Set ``referrals_scheduler_due_soon`` from the unpublished ``payout.due`` outbox rows."""
    horizon = business_day_horizon(today, DUE_SOON_BUSINESS_DAYS)
    async with pool.acquire() as conn:
        count = await store.count_due_soon(conn, settings.topics.payout_due, horizon)
    metrics.due_soon.set(count)
    return count


@dataclass
class TickResult:
    """A ``payout-scheduler tick``: the pass, then how much of the outbox it published."""

    decision_pass: PassResult
    published: int
    backlog: int


async def tick(settings: Settings, as_of: date, metrics: SchedulerMetrics) -> TickResult:
    """One pass as of ``as_of``, then publish the outbox until it is empty.

    The pass commits before anything is published: if the broker is unreachable
    the decisions stand and their messages wait in the outbox (the error
    propagates after the pass).
    """
    pool = await create_pool(settings.database_url, size=2)
    try:
        decision_pass = await run_pass(pool, settings, as_of, metrics)
        producer = make_producer(settings.kafka_bootstrap_servers, settings.kafka_security())
        await producer.start()
        try:
            relay = OutboxRelay(pool, producer, metrics.outbox, batch=settings.outbox_batch)
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
        self.db_ok = False
        self.broker_ok = False
        self._task: asyncio.Task[None] | None = None

    def today(self) -> date:
        """The current date in the program time zone (the shell reads the clock, not the core)."""
        return datetime.now(self.settings.tz).date()

    async def start(self) -> None:
        """Start the background work; returns at once (connections are made with retries)."""
        self._task = asyncio.create_task(self._run(), name="payout-scheduler")

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
        log.info("scheduler_stopped")

    def alive(self) -> bool:
        """False when the background work ended without being asked to (a bug)."""
        return self.stopping.is_set() or self._task is None or not self._task.done()

    def ready(self) -> bool:
        return not self.stopping.is_set() and self.db_ok and self.broker_ok

    def _set_ready(self) -> None:
        self.metrics.ready.set(1 if self.ready() else 0)

    async def _run(self) -> None:
        pool = await self._retry("database_connect", self._connect)
        if pool is None:
            return
        self.pool = pool
        try:
            await asyncio.gather(self._decision_loop(pool), self._relay_loop(pool))
        finally:
            await pool.close()

    async def _connect(self) -> asyncpg.Pool:
        pool: asyncpg.Pool = await create_pool(
            self.settings.database_url, size=self.settings.db_pool_size
        )
        return pool

    async def _start_producer(self) -> AIOKafkaProducer:
        s = self.settings
        producer = make_producer(s.kafka_bootstrap_servers, s.kafka_security())
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        return producer

    async def _retry(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T | None:
        """``attempt()`` until it succeeds, backing off; None if the service stops first."""
        delay = 0.5
        while not self.stopping.is_set():
            try:
                return await attempt()
            except Exception as exc:
                log.warning(f"{what}_failed", error=type(exc).__name__, retry_in_s=delay)
                await self._sleep(delay)
                delay = min(delay * 2, _MAX_BACKOFF_SECONDS)
        return None

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), timeout=seconds)

    async def _decision_loop(self, pool: asyncpg.Pool) -> None:
        s = self.settings
        delay = 1.0
        while not self.stopping.is_set():
            try:
                await catch_up(pool, s, self.today(), self.metrics, stopping=self.stopping)
                await refresh_due_soon(pool, s, self.today(), self.metrics)
                self.db_ok = True
                wait, delay = float(s.scheduler_interval_seconds), 1.0
            except Exception as exc:
                self.metrics.pass_failures.inc()
                if isinstance(exc, TRANSIENT_DB_ERRORS):
                    self.db_ok = False
                    log.warning("decision_pass_failed", error=type(exc).__name__)
                else:
                    log.exception("decision_pass_failed", error=type(exc).__name__)
                wait, delay = delay, min(delay * 2, _MAX_BACKOFF_SECONDS)
            self._set_ready()
            await self._sleep(wait)

    async def _relay_loop(self, pool: asyncpg.Pool) -> None:
        """Publish the outbox continuously; on stop, publish what is queued and return."""
        s = self.settings
        producer = await self._retry("broker_connect", self._start_producer)
        if producer is None:
            return
        self.broker_ok = True
        self._set_ready()
        relay = OutboxRelay(pool, producer, self.metrics.outbox, batch=s.outbox_batch)
        poll = s.outbox_poll_ms / 1000
        delay = poll
        gauges_due = 0.0
        try:
            while True:
                published = 0
                try:
                    published = await relay.publish_pending()
                    self.db_ok = self.broker_ok = True
                    if published or time.monotonic() >= gauges_due:
                        await relay.refresh_backlog()
                        await refresh_due_soon(pool, s, self.today(), self.metrics)
                        gauges_due = time.monotonic() + _GAUGE_REFRESH_SECONDS
                    delay = poll
                except Exception as exc:
                    if isinstance(exc, KafkaError):
                        self.broker_ok = False
                    else:
                        self.db_ok = False
                    log.warning("outbox_relay_failed", error=type(exc).__name__)
                    delay = min(delay * 2, 10.0)
                self._set_ready()
                if self.stopping.is_set():
                    if published == 0:
                        break  # what the last pass queued is out (or cannot go out now)
                elif published < s.outbox_batch:
                    await self._sleep(delay)
        finally:
            await producer.stop()


async def run_forever(settings: Settings) -> None:
    """Serve ``/healthz``, ``/readyz`` and ``/metrics`` and run the scheduler until SIGTERM."""
    from payout_scheduler.app import create_app

    service = SchedulerService(settings)
    config = uvicorn.Config(
        create_app(service),
        host="0.0.0.0",
        port=settings.http_port,
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    # uvicorn re-raises the signal it caught once shut down; a no-op handler
    # turns that into a normal return (exit status 0).
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    await uvicorn.Server(config).serve()

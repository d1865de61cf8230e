"""The decision pass: every referral decidable on a day, decided once, in chunks.

Production passes (the scheduler's loop through :func:`catch_up`, and
``payout-scheduler tick``) go through :func:`decide_on_complete_facts`: it
waits until the consumer group has applied every billing event published when
the pass began (:mod:`payout_scheduler.completeness`), and decides nothing
when it has not in time (the pass is held back). :func:`run_pass` is the pass
itself, for callers that know the database already holds every fact (the
benchmark, tests on state written straight to the database).

A pass walks the decidable referrals in ``referral_id`` order, one chunk per
transaction: lock the chunk (``SKIP LOCKED``, so replicas share the work and
never decide a referral twice), decide it with the pure core, write the
``payouts`` rows and the ``payout.due`` outbox rows, commit. A crash anywhere
loses nothing: committed chunks are decided and their messages wait in the
outbox; uncommitted ones are decided by the next pass.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from uuid import UUID

import asyncpg
import structlog

from payout_scheduler import store
from payout_scheduler.collector import no_cycle_collection
from payout_scheduler.completeness import (
    FactsCheck,
    OffsetsReader,
    broker_offsets,
    wait_for_complete_facts,
)
from payout_scheduler.metrics import SchedulerMetrics
from referral_program.business_days import business_day_horizon
from referral_program.decisions import Ruling, decidable_before, decide_rows
from referral_program.table import Outcome, format_money
from referral_runtime.db import Conn
from referral_runtime.settings import Settings

log = structlog.get_logger(__name__)

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


@dataclass
class PassResult:
    """What one decision pass recorded (decisions that were already recorded are not counted)."""

    as_of: date
    decided: Counter[tuple[str, str]] = field(default_factory=Counter)  # (outcome, reason)
    cash_due_cents: Counter[str] = field(default_factory=Counter)  # plan family -> cents
    chunks: int = 0
    seconds: float = 0.0
    completed: bool = False  # False when stopped before the last chunk, or held back
    currency: str = "USD"  # the program currency, for the summary
    #: How the wait for complete facts ended (None: the pass was run without it).
    facts: FactsCheck | None = None
    consumer_group: str = ""

    @property
    def held_back(self) -> bool:
        """The consumer group had not applied every billing event in time: nothing decided."""
        return self.facts is not None and self.facts.held_back

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
        if self.facts is not None and self.held_back:
            return (
                f"as of {self.as_of:%Y-%m-%d}: held back, nothing decided: consumer group "
                f"{self.consumer_group} had not applied {self.facts.unapplied} billing "
                f"message(s) published before the pass began ({self.facts.partitions_behind} "
                f"partition(s) behind) after waiting {self.facts.waited_seconds:.1f}s."
            )
        cash = ", ".join(
            f"{family} {format_money(cents, self.currency)}"
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
            + f"; cash due {format_money(self.cash_total_cents, self.currency)}"
            + (f" ({cash})" if cash else "")
            + "."
        )


async def decide_on_complete_facts(
    pool: asyncpg.Pool,
    settings: Settings,
    as_of: date,
    metrics: SchedulerMetrics,
    offsets: OffsetsReader,
    *,
    stopping: asyncio.Event | None = None,
) -> PassResult:
    """A decision pass on complete facts only: wait for the consumer group, then decide.

    Waits at most ``settings.scheduler_facts_wait_seconds`` for the group
    ``settings.consumer_group`` to commit every message that the billing
    topics held when the call began. If it does not, the pass is held back:
    nothing is decided, the hold is recorded (``scheduler_held_back``, the
    metrics) and the result says so (:attr:`PassResult.held_back`). Broker
    errors propagate, and nothing is decided then either.
    """
    check = await wait_for_complete_facts(
        offsets,
        list(settings.topics.billing),
        settings.consumer_group,
        settings.scheduler_facts_wait_seconds,
        stopping=stopping,
    )
    metrics.facts_wait.observe(check.waited_seconds)
    metrics.unapplied_billing_events.set(check.unapplied)
    undecided = PassResult(
        as_of, currency=settings.program_currency, facts=check,
        consumer_group=settings.consumer_group,
    )  # fmt: skip
    if check.stopped:
        return undecided
    if check.held_back:
        async with pool.acquire() as conn:
            since = await store.record_held_back(conn, check.waited_seconds, check.unapplied)
        metrics.passes_held_back.inc()
        metrics.held_back.set(1)
        metrics.held_back_since.set(since.timestamp())
        log.warning(
            "decision_pass_held_back",
            as_of=as_of.isoformat(),
            consumer_group=settings.consumer_group,
            unapplied=check.unapplied,
            partitions_behind=check.partitions_behind,
            waited_s=round(check.waited_seconds, 3),
            held_back_since=since.isoformat(),
        )
        return undecided
    async with pool.acquire() as conn:
        await store.clear_held_back(conn)
    metrics.held_back.set(0)
    metrics.held_back_since.set(0)
    result = await run_pass(pool, settings, as_of, metrics, stopping=stopping)
    result.facts = check
    result.consumer_group = settings.consumer_group
    return result


async def refresh_held_back(conn: Conn, metrics: SchedulerMetrics) -> None:
    """Set the held-back gauges from the database, as the last pass of any process left them."""
    since = await store.held_back_since(conn)
    metrics.held_back.set(0 if since is None else 1)
    metrics.held_back_since.set(0 if since is None else since.timestamp())


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

    Decides with whatever facts the database holds: production calls it only
    through :func:`decide_on_complete_facts`. One transaction per chunk of ``settings.scheduler_batch`` referrals;
    ``workers`` chunks are in flight at once (on as many pool connections), so
    the database writes one chunk while Python decides the next. Returns the
    decisions this call recorded. Database errors propagate; chunks committed
    before the error stay decided, and the next pass carries on from there.
    """
    with no_cycle_collection():
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
    result = PassResult(as_of, currency=settings.program_currency)
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
) -> Counter[Ruling]:
    """One transaction: lock the chunk, decide it, write payouts and outbox rows.

    Returns how many decisions of each ruling it recorded."""
    tz, settle_days, currency = settings.tz, settings.payout_settle_days, settings.program_currency
    async with pool.acquire() as conn, conn.transaction():
        facts = await store.lock_decidable(conn, ids, bound)
        decided = decide_rows(facts, as_of, tz, settle_days, currency=currency)
        recorded = await store.record_decisions(
            conn, facts, decided, as_of, settings.topics.payout_due, tz
        )
    if len(recorded) == len(decided.row):  # the usual: no replica recorded one first
        rulings = Counter(decided.ruling)
    else:
        rulings = Counter(
            ruling
            for row, ruling in zip(decided.row, decided.ruling, strict=True)
            if facts.referral_id[row] in recorded
        )
    return Counter({decided.rulings[ruling]: n for ruling, n in rulings.items()})


def _count(recorded: Counter[Ruling], result: PassResult, metrics: SchedulerMetrics) -> None:
    decided: Counter[tuple[str, str]] = Counter()
    cash: Counter[str] = Counter()
    for ruling, n in recorded.items():
        decided[(ruling.outcome, ruling.reason or "")] += n
        if ruling.outcome == Outcome.DUE and ruling.plan_family is not None:
            cash[ruling.plan_family] += ruling.amount_cents * n
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
    Every pass waits for complete facts (:func:`decide_on_complete_facts`); the
    first one held back ends the catch-up (it is the last result), and the
    next call starts again from its day.
    """
    async with pool.acquire() as conn:
        last = await store.last_pass(conn)
        await refresh_held_back(conn, metrics)
    first = today
    if last is not None and last < today:
        first = max(last + timedelta(days=1), today - timedelta(days=MAX_CATCH_UP_DAYS - 1))
    results: list[PassResult] = []
    day = first
    async with broker_offsets(settings) as offsets:
        while day <= today and (stopping is None or not stopping.is_set()):
            result = await decide_on_complete_facts(
                pool, settings, day, metrics, offsets, stopping=stopping
            )
            results.append(result)
            if not result.completed:
                break
            day += timedelta(days=1)
    return results


async def refresh_overdue(
    pool: asyncpg.Pool, settings: Settings, today: date, metrics: SchedulerMetrics
) -> int:
    """Set ``referrals_scheduler_overdue_undecided``: referrals that should have been decided
    ``settings.payout_grace_days`` ago or earlier and are not."""
    late = settings.payout_settle_days + settings.payout_grace_days
    async with pool.acquire() as conn:
        count = await store.count_undecided(conn, decidable_before(today, settings.tz, late))
    metrics.overdue_undecided.set(count)
    return count


async def refresh_due_soon(
    pool: asyncpg.Pool, settings: Settings, today: date, metrics: SchedulerMetrics
) -> int:
    """Set ``referrals_scheduler_due_soon`` from the unpublished ``payout.due`` outbox rows."""
    horizon = business_day_horizon(today, DUE_SOON_BUSINESS_DAYS)
    async with pool.acquire() as conn:
        count = await store.count_due_soon(conn, settings.topics.payout_due, horizon)
    metrics.due_soon.set(count)
    return count

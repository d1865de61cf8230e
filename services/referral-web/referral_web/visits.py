"""Landing visits, counted in memory and written as one upsert every few seconds.

A visit is a code and a day (program time zone) and nothing else: no address,
no browser, no time of day, so there is nothing personal to keep. Writing each
visit would make a public page a lever on the database; instead each replica
adds its counts with one statement per ``VISIT_FLUSH_SECONDS``. Counts not yet
written when a replica is killed (not stopped: a stop writes them) are lost,
which a visit counter can afford; a failed write keeps them for the next one.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import date

import asyncpg
import structlog

from referral_runtime.db import TRANSIENT_DB_ERRORS
from referral_runtime.retry import sleep_unless_stopped
from referral_web.metrics import WebMetrics
from referral_web.store import add_visits

log = structlog.get_logger(__name__)

#: A flush that fails for these keeps its counts for the next one.
_FLUSH_ERRORS: tuple[type[BaseException], ...] = (*TRANSIENT_DB_ERRORS, asyncpg.PostgresError)
#: Distinct (code, day) pairs held between two flushes at most; more are dropped and counted.
MAX_BUFFERED_CODES = 20_000


class VisitBuffer:
    """Visit counts per (code, day) not yet written; bounded in the codes it holds."""

    def __init__(self, max_codes: int = MAX_BUFFERED_CODES) -> None:
        self._counts: Counter[tuple[str, date]] = Counter()
        self._max_codes = max_codes

    def count(self, code: str, day: date) -> bool:
        """Count one visit; ``False`` (not counted) when a new code would exceed the bound."""
        key = (code, day)
        if key not in self._counts and len(self._counts) >= self._max_codes:
            return False
        self._counts[key] += 1
        return True

    def take(self) -> dict[tuple[str, date], int]:
        """Everything counted so far; the buffer starts again from empty."""
        taken, self._counts = dict(self._counts), Counter()
        return taken

    def put_back(self, counts: Mapping[tuple[str, date], int]) -> None:
        """Return counts whose write failed, added to what was counted meanwhile."""
        self._counts.update(counts)

    @property
    def visits(self) -> int:
        return sum(self._counts.values())


async def flush(pool: asyncpg.Pool, buffer: VisitBuffer, metrics: WebMetrics) -> int:
    """Write what the buffer holds; returns the visits written (0 and kept on failure)."""
    counts = buffer.take()
    if not counts:
        return 0
    try:
        async with pool.acquire() as conn:
            await add_visits(conn, counts)
    except _FLUSH_ERRORS as exc:
        buffer.put_back(counts)
        metrics.visit_flush_failures.inc()
        log.warning("visit_flush_failed", error=type(exc).__name__, codes=len(counts))
        return 0
    finally:
        metrics.visits_buffered.set(buffer.visits)
    written = sum(counts.values())
    metrics.visits_flushed.inc(written)
    return written


async def run_flusher(
    pool: Callable[[], asyncpg.Pool | None],
    buffer: VisitBuffer,
    metrics: WebMetrics,
    stopping: asyncio.Event,
    interval: float,
) -> None:
    """Flush every ``interval`` seconds until ``stopping``, then once more."""
    while not await sleep_unless_stopped(stopping, interval):
        if (current := pool()) is not None:
            await flush(current, buffer, metrics)
    if (current := pool()) is not None:
        await flush(current, buffer, metrics)

"""Readiness that reflects both dependencies, also while the service is idle.

A :class:`DependencyProbe` runs ``select 1`` on the pool and a metadata request
through the producer's client every few seconds. Work loops only notice an
outage when they touch the dependency; the probe notices it within one period.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg
import structlog
from aiokafka import AIOKafkaProducer

from referral_runtime.retry import sleep_unless_stopped

log = structlog.get_logger(__name__)


class DependencyProbe:
    """The last answer of the database and of the broker (``False`` until one arrives)."""

    def __init__(
        self,
        pool: Callable[[], asyncpg.Pool | None],
        producer: Callable[[], AIOKafkaProducer | None],
        *,
        interval: float = 5.0,
        timeout: float | None = None,
    ) -> None:
        self._pool = pool
        self._producer = producer
        self.interval = interval
        self.timeout = timeout if timeout is not None else max(0.5, min(interval, 5.0))
        self.db_ok = False
        self.broker_ok = False

    async def check_database(self) -> bool:
        pool = self._pool()
        if pool is None:
            return False
        try:
            async with asyncio.timeout(self.timeout):
                async with pool.acquire() as conn:
                    await conn.fetchval("select 1")
        except Exception:
            return False
        return True

    async def check_broker(self) -> bool:
        producer = self._producer()
        if producer is None:
            return False
        try:
            async with asyncio.timeout(self.timeout):
                # A real round trip to a broker (not the cached metadata).
                await producer.client.fetch_all_metadata()
        except Exception:
            return False
        return True

    async def check(self) -> None:
        """Probe both dependencies (concurrently) and log every change."""
        db_ok, broker_ok = await asyncio.gather(self.check_database(), self.check_broker())
        for name, before, now in (
            ("database", self.db_ok, db_ok),
            ("broker", self.broker_ok, broker_ok),
        ):
            if before and not now:
                log.warning("dependency_unavailable", dependency=name)
            elif now and not before:
                log.info("dependency_available", dependency=name)
        self.db_ok, self.broker_ok = db_ok, broker_ok

    async def run(self, stopping: asyncio.Event, on_change: Callable[[], None]) -> None:
        """Probe every :attr:`interval` until ``stopping``; ``on_change`` after each round."""
        while not stopping.is_set():
            await self.check()
            on_change()
            await sleep_unless_stopped(stopping, self.interval)

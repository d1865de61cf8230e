"""One retry policy for outages: capped exponential backoff with jitter, cut short by shutdown.

Every loop that waits for the database or the broker to come back uses it, so
replicas that lost a dependency together do not retry in lockstep.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

log = structlog.get_logger(__name__)
T = TypeVar("T")


class Backoff:
    """Delays that double from ``initial`` up to ``cap``, each spread by ``±jitter``."""

    def __init__(
        self,
        initial: float,
        cap: float,
        *,
        jitter: float = 0.2,
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> None:
        if not 0 < initial <= cap:
            raise ValueError(f"need 0 < initial <= cap, got {initial}, {cap}")
        self.initial = initial
        self.cap = cap
        self._jitter = jitter
        self._uniform = uniform
        self._next = initial

    def next_delay(self) -> float:
        """The delay before the next attempt; the one after it is twice as long (capped)."""
        delay = self._next
        self._next = min(delay * 2, self.cap)
        return delay * self._uniform(1 - self._jitter, 1 + self._jitter)

    def reset(self) -> None:
        """The dependency is back: the next outage starts again from ``initial``."""
        self._next = self.initial


async def sleep_unless_stopped(stopping: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds``, or less if ``stopping`` is set; returns whether it is set."""
    try:
        await asyncio.wait_for(stopping.wait(), timeout=seconds)
    except TimeoutError:
        return False
    return True


async def retry_until_stopped(
    what: str,
    attempt: Callable[[], Awaitable[T]],
    stopping: asyncio.Event,
    backoff: Backoff,
) -> T | None:
    """``await attempt()`` until it succeeds; ``None`` if ``stopping`` is set first.

    Each failure is logged as ``<what>_failed`` with the error's type and the delay.
    """
    while not stopping.is_set():
        try:
            return await attempt()
        except Exception as exc:
            delay = backoff.next_delay()
            log.warning(f"{what}_failed", error=type(exc).__name__, retry_in_s=round(delay, 2))
            await sleep_unless_stopped(stopping, delay)
    return None

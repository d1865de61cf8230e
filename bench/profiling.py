"""py-spy attached to the consumer during a measured drain, and a summary of its profile."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bench.stack import BIN


class PySpy:
    """``py-spy record -r RATE -f raw --pid PID`` until :meth:`stop`."""

    def __init__(self, pid: int, out: Path, rate: int = 200) -> None:
        self.out = out
        self.log = out.with_suffix(".log")
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    str(BIN / "py-spy"),
                    "record",
                    "-r",
                    str(rate),
                    "-f",
                    "raw",
                    "-o",
                    str(out),
                    "--pid",
                    str(pid),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(60)
        if self.proc.poll() is None:
            self.proc.kill()


def _short(frame: str) -> str:
    """``fn (path/to/site-packages/pkg/mod.py:12)`` -> ``fn (pkg/mod.py)``."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "services/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})"


_IDLE_LEAVES = ("select (", "epoll", "Condition.wait", "Queue.get", "wait (threading", "sleep (")


def summarise(raw: Path, top: int = 20, within: str | None = None) -> dict[str, Any]:
    """Self and inclusive shares of the busy samples by function, and by library.

    Samples whose innermost frame is a wait (the event loop's select, an idle worker
    thread) count as idle. ``within``: only stacks through a frame containing it.
    """
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    libraries: Counter[str] = Counter()
    busy = idle = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_short(f) for f in stack.split(";") if f]
        if not frames or (within is not None and not any(within in f for f in frames)):
            continue
        leaf = frames[-1]
        if leaf.startswith(_IDLE_LEAVES) or "selectors.py" in leaf:
            idle += n
            continue
        busy += n
        own[leaf] += n
        for f in set(frames):
            inclusive[f] += n
        libraries[_library(frames)] += n

    def share(c: Counter[str]) -> list[tuple[str, float]]:
        return [(k, round(100 * v / max(busy, 1), 1)) for k, v in c.most_common(top)]

    return {
        "busy_samples": busy,
        "idle_samples": idle,
        "self_pct_of_busy": share(own),
        "inclusive_pct_of_busy": share(inclusive),
        "by_library_pct_of_busy": share(libraries),
    }


_LIBRARIES = (
    ("pydantic", "pydantic"),
    ("asyncpg", "asyncpg"),
    ("aiokafka", "aiokafka"),
    ("faststream", "faststream"),
    ("structlog", "structlog"),
    ("prometheus_client", "prometheus_client"),
    ("json/", "json"),
    ("uuid.py", "uuid"),
    ("referral_consumer/core", "referral_consumer.core"),
    ("referral_consumer", "referral_consumer"),
    ("referrals/", "referrals (common)"),
    ("asyncio", "asyncio"),
)


def _library(frames: list[str]) -> str:
    """Attribute a sample to the innermost frame that belongs to a known library."""
    for frame in reversed(frames):
        for marker, name in _LIBRARIES:
            if marker in frame:
                return name
    return "other"


@contextlib.asynccontextmanager
async def profiled(
    pid: int, out: Path | None, server_uri: str, database: str
) -> AsyncIterator[PgActivity | None]:
    """py-spy on ``pid`` into ``out`` and :class:`PgActivity` on ``database`` for the block.

    Yields the activity sampler (for its summary afterwards), or None and does
    nothing when ``out`` is None (an unprofiled run).
    """
    if out is None:
        yield None
        return
    spy = PySpy(pid, out)
    activity = PgActivity(server_uri, database)
    sampling = asyncio.create_task(activity.run())
    try:
        yield activity
    finally:
        spy.stop()
        sampling.cancel()
        await asyncio.gather(sampling, return_exceptions=True)


class PgActivity:
    """Samples ``pg_stat_activity`` for one database every ``interval``: what the
    consumer's connections are doing (py-spy cannot see where an asyncio task waits).

    ``active: <statement>`` = Postgres executing it; ``idle in transaction after
    <statement>`` = the transaction is open and Postgres waits for the client (Python
    decoding that result, building the next statement; or, for the outbox relay, the
    broker's acks). Shares are of samples, i.e. of wall time, per state.
    """

    def __init__(self, server_uri: str, database: str, interval: float = 0.01) -> None:
        self.server_uri = server_uri
        self.database = database
        self.interval = interval
        self.states: Counter[str] = Counter()
        self.samples = 0

    async def run(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.server_uri)
        try:
            while True:
                rows = await conn.fetch(
                    """select state, query from pg_stat_activity
                       where datname = $1 and pid <> pg_backend_pid()
                         and backend_type = 'client backend'""",
                    self.database,
                )
                self.samples += 1
                for r in rows:
                    if r["state"] != "idle":
                        self.states[_state(r["state"], r["query"])] += 1
                await asyncio.sleep(self.interval)
        except asyncio.CancelledError:
            pass
        finally:
            await conn.close()

    def summary(self, top: int = 15) -> dict[str, Any]:
        n = max(self.samples, 1)
        return {
            "samples": self.samples,
            "interval_ms": self.interval * 1000,
            "connection_share_pct": [
                (k, round(100 * v / n, 1)) for k, v in self.states.most_common(top)
            ],
        }


def _state(state: str | None, query: str | None) -> str:
    """``active: <statement>`` or ``idle in transaction after <statement>``."""
    label = "active" if state == "active" else f"{state} after"
    return f"{label}: {_statement(query)}"


def _statement(query: str | None) -> str:
    """A statement by its verb and first table, not its parameters."""
    words = " ".join((query or "").split())
    lower = words.lower()
    if lower.startswith("with "):
        return words[:48]
    if lower.startswith("select pg_advisory"):
        return "select pg_advisory_xact_lock"
    for verb, marker in (("insert", " into "), ("update", "update "), ("select", " from ")):
        if lower.startswith(verb) and marker in lower:
            table = lower.partition(marker)[2].split()[0][:40]
            if table.startswith("unnest") and " join " in lower:  # which lookup it is
                table = f"unnest(...) join {lower.partition(' join ')[2].split()[0]}"
            return f"{verb} {table}"
    return words[:48]

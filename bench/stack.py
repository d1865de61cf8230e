"""The bench's own embedded stack and the plumbing every part shares: per-configuration
databases and topics, fast publishing, watching a group's commits, the consumer process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import DefaultPartitioner

from referral_devtools import devstack
from referral_runtime.settings import Topics

PARTITIONS = 4
BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent


class BenchFailure(RuntimeError):
    """A correctness check failed: the benchmark's figures are not a result."""


@dataclass
class Stack:
    root: Path
    server_uri: str
    bootstrap: str
    broker: subprocess.Popen[bytes]
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def log(self, name: str) -> Path:
        return self.root / f"{name}.log"

    def check_broker(self) -> None:
        """Raise if the embedded broker exited (it keeps its data in memory only)."""
        code = self.broker.poll()
        if code is not None:
            tail = self.log("broker").read_text(errors="replace").splitlines()[-10:]
            raise BenchFailure(
                f"the embedded broker (pid {self.broker.pid}) exited with status {code} "
                "mid-run; its log:\n  " + "\n  ".join(tail)
            )


@contextlib.contextmanager
def embedded_stack(keep: bool = False) -> Any:
    """PostgreSQL + Tansu in a fresh temp dir, torn down even on failure."""
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.mkdtemp(prefix="xdg-"))
    root = Path(tempfile.mkdtemp(prefix="referrals-bench-"))
    broker = None
    stack = None
    try:
        server_uri = devstack.start_postgres(root / "pgdata")
        broker, bootstrap = devstack.start_broker(root / "broker.log")
        stack = Stack(root, server_uri, bootstrap, broker)
        yield stack
    finally:
        for child in stack.children if stack else []:
            if child.poll() is None:
                child.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(5)
        if broker is not None:
            broker.terminate()
            try:
                broker.wait(5)
            except subprocess.TimeoutExpired:
                broker.kill()
        devstack.stop_postgres(root / "pgdata")
        if keep:
            print(f"(kept {root})", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


@dataclass
class Config:
    """One configuration's private database, topics and consumer group."""

    name: str
    database_url: str
    topics: Topics
    group: str

    @property
    def billing(self) -> list[str]:
        """Topic of each message kind (stream.CREATED, PAID, CANCELLED)."""
        t = self.topics
        return [t.subscription_created, t.invoice_paid, t.subscription_cancelled]


async def new_config(stack: Stack, name: str, *, migrated: bool = True) -> Config:
    admin = await asyncpg.connect(stack.server_uri)
    try:
        await admin.execute(f'drop database if exists "{name}" with (force)')
    finally:
        await admin.close()
    url = await devstack.create_database(stack.server_uri, name, migrated=migrated)
    defaults = Topics()
    topics = Topics(**{f: f"{name}.{getattr(defaults, f)}" for f in Topics.model_fields})
    await devstack.create_topics(stack.bootstrap, topics.all, PARTITIONS)
    return Config(name, url, topics, f"{name}-group")


async def drop_config(stack: Stack, config: Config) -> None:
    """Free the broker's memory and the database once a configuration is measured."""
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.bootstrap)
    with contextlib.suppress(Exception):
        await admin.start()
        await admin.delete_topics(config.topics.all)
    with contextlib.suppress(Exception):
        await admin.close()
    conn = await asyncpg.connect(stack.server_uri)
    try:
        await conn.execute(f'drop database if exists "{config.name}" with (force)')
    finally:
        await conn.close()


# -- publishing --------------------------------------------------------------


class Published:
    """How many messages each partition holds (Tansu's ListOffsets is unreliable, so the
    bench counts what it wrote; offsets are contiguous from 0 on fresh topics)."""

    def __init__(self) -> None:
        self.counts: Counter[TopicPartition] = Counter()

    def offsets(self) -> dict[TopicPartition, int]:
        return dict(self.counts)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


_partitioner = DefaultPartitioner()
_ALL = list(range(PARTITIONS))


def partition_of(key: bytes) -> int:
    """The partition the default producer would choose (murmur2 of the key)."""
    return int(_partitioner(key, _ALL, _ALL))


async def publish_backlog(
    bootstrap: str,
    topics: Sequence[str],
    messages: Iterable[tuple[int, bytes, bytes]],
    published: Published,
) -> float:
    """Publish (kind, key, value) messages in batches, as fast as the broker takes them;
    returns the seconds it took. ``topics[kind]`` is the topic of a kind."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=20,
        max_batch_size=1024 * 1024,
        max_request_size=8 * 1024 * 1024,
    )
    await producer.start()
    started = time.perf_counter()
    try:
        batches: dict[tuple[str, int], Any] = {}
        pending: list[asyncio.Future[Any]] = []
        for kind, key, value in messages:
            topic = topics[kind]
            part = partition_of(key)
            batch = batches.get((topic, part))
            if batch is None:
                batch = batches[(topic, part)] = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None) is None:
                pending.append(await producer.send_batch(batch, topic, partition=part))
                batch = batches[(topic, part)] = producer.create_batch()
                if batch.append(key=key, value=value, timestamp=None) is None:
                    raise BenchFailure(f"a message of {len(value)} bytes fits in no batch")
            published.counts[TopicPartition(topic, part)] += 1
            if len(pending) >= 64:
                await asyncio.gather(*pending)
                pending.clear()
        for (topic, part), batch in batches.items():
            if batch.record_count():
                pending.append(await producer.send_batch(batch, topic, partition=part))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.perf_counter() - started


# -- watching commits ----------------------------------------------------------


class CommitWatcher:
    """Polls a consumer group's committed offsets (OffsetFetch, without joining the group)."""

    def __init__(self, stack: Stack, group: str, partitions: Iterable[TopicPartition]) -> None:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=stack.bootstrap, group_id=group, enable_auto_commit=False
        )
        self._tps = list(partitions)
        self._stack = stack

    async def __aenter__(self) -> CommitWatcher:
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def committed(self) -> dict[TopicPartition, int]:
        """Committed offset per partition, 0 where none; fails loudly if the broker is gone
        (aiokafka would retry forever)."""
        self._stack.check_broker()
        try:
            return await asyncio.wait_for(self._fetch(), timeout=15)
        except TimeoutError:
            self._stack.check_broker()
            raise BenchFailure("the broker did not answer an OffsetFetch within 15 s") from None

    async def _fetch(self) -> dict[TopicPartition, int]:
        """One OffsetFetch request for all partitions (aiokafka's coordinator; the public
        ``committed()`` sends one request per partition)."""
        coordinator = getattr(self._consumer, "_coordinator", None)
        if coordinator is not None:
            fetched = await coordinator.fetch_committed_offsets(set(self._tps))
            return {tp: max(m.offset, 0) if (m := fetched.get(tp)) else 0 for tp in self._tps}
        values = await asyncio.gather(*(self._consumer.committed(tp) for tp in self._tps))
        return {tp: v or 0 for tp, v in zip(self._tps, values, strict=True)}

    async def total(self) -> int:
        return sum((await self.committed()).values())


@dataclass
class Drain:
    """A backlog drained by a group: first commit seen -> last commit seen."""

    events: int  # messages in the backlog
    spawned_at: float
    first_commit_at: float
    first_commit_events: int  # messages the first observed commit covered
    last_commit_at: float
    poll_seconds: float
    samples: list[tuple[float, int]] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return self.last_commit_at - self.first_commit_at

    @property
    def rate(self) -> float:
        """Messages committed after the first commit, per second between first and last."""
        return (self.events - self.first_commit_events) / max(self.seconds, 1e-9)

    @property
    def startup(self) -> float:
        return self.first_commit_at - self.spawned_at

    def as_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "seconds": round(self.seconds, 3),
            "events_per_s": round(self.rate, 1),
            "startup_s": round(self.startup, 3),
            "first_commit_events": self.first_commit_events,
            "poll_ms": round(self.poll_seconds * 1000),
        }


async def watch_drain(
    watcher: CommitWatcher,
    start: dict[TopicPartition, int],
    end: dict[TopicPartition, int],
    spawned_at: float,
    *,
    poll: float = 0.02,
    timeout: float = 900,
    alive: Any = None,
) -> Drain:
    """Poll until the group committed ``end`` on every partition (from ``start``)."""
    base = sum(start.get(tp, 0) for tp in end)
    target = sum(end.values()) - base
    first_at = first_n = None
    samples: list[tuple[float, int]] = []
    deadline = time.monotonic() + timeout
    while True:
        t = time.monotonic()
        committed = await watcher.committed()
        done = sum(min(committed.get(tp, 0), end[tp]) for tp in end) - base
        done = max(done, 0)
        if first_at is None and done > 0:
            first_at, first_n = t, done
        if not samples or samples[-1][1] != done:
            samples.append((t, done))
        if all(committed.get(tp, 0) >= n for tp, n in end.items()):
            assert first_at is not None and first_n is not None
            return Drain(target, spawned_at, first_at, first_n, t, poll, samples)
        if t > deadline:
            raise BenchFailure(f"the backlog was not drained within {timeout}s: {done}/{target}")
        if alive is not None and not alive():
            raise BenchFailure(f"the process under test exited before draining ({done}/{target})")
        await asyncio.sleep(poll)


# -- the consumer as a real service process -----------------------------------


def service_env(
    stack: Stack, config: Config, http_port: int, extra: dict[str, str]
) -> dict[str, str]:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": stack.bootstrap,
        "DATABASE_URL": config.database_url,
        "CONSUMER_GROUP": config.group,
        "HTTP_PORT": str(http_port),
        "REFERRALS_ENV_FILE": "/nonexistent",
        "LOG_FORMAT": "json",
    }
    for f in Topics.model_fields:
        env[f"TOPIC_{f.upper()}"] = getattr(config.topics, f)
    env.update(extra)
    return env


class ConsumerProcess:
    """``referral-consumer`` spawned with a configuration's environment."""

    def __init__(self, stack: Stack, config: Config, extra_env: dict[str, str]) -> None:
        self.stack = stack
        self.config = config
        self.extra_env = extra_env
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.spawned_at = 0.0
        self.log = stack.log(f"{config.name}-consumer")

    def start(self) -> ConsumerProcess:
        self.port = devstack.free_port()
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(BIN / "referral-consumer")],
                env=service_env(self.stack, self.config, self.port, self.extra_env),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.spawned_at = time.monotonic()
        self.stack.children.append(self.proc)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def wait_ready(self, timeout: float = 60) -> float:
        """Seconds until /readyz answers 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise BenchFailure(
                    f"referral-consumer exited early; see {self.log}:\n{self.tail()}"
                )
            with contextlib.suppress(OSError):
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.write(b"GET /readyz HTTP/1.0\r\nHost: x\r\n\r\n")
                await writer.drain()
                status = await reader.readline()
                writer.close()
                if b" 200 " in status:
                    return time.monotonic() - self.spawned_at
            await asyncio.sleep(0.05)
        raise BenchFailure(f"referral-consumer not ready within {timeout}s; see {self.log}")

    def rss(self) -> int:
        """Resident memory of the process and its children, bytes."""
        try:
            p = psutil.Process(self.pid)
            procs = [p, *p.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0
        total = 0
        for q in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += q.memory_info().rss
        return total

    async def stop(self, timeout: float = 30) -> int:
        """SIGTERM (finish the batch, commit, exit); SIGKILL after ``timeout``."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(self.proc.wait, timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = await asyncio.to_thread(self.proc.wait)
        with contextlib.suppress(ValueError):
            self.stack.children.remove(self.proc)
        return code

    async def metrics(self) -> dict[str, Any]:
        """The consumer's own batch histograms from ``/metrics`` (one scrape, at the end)."""
        from prometheus_client.parser import text_string_to_metric_families

        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        await writer.drain()
        raw = await reader.read()
        writer.close()
        text = raw.partition(b"\r\n\r\n")[2].decode()
        out: dict[str, Any] = {}
        for family in text_string_to_metric_families(text):
            if family.name not in (
                "referrals_consumer_batch_size",
                "referrals_consumer_batch_duration_seconds",
            ):
                continue
            buckets = [
                (s.labels["le"], s.value) for s in family.samples if s.name.endswith("_bucket")
            ]
            count = next(s.value for s in family.samples if s.name.endswith("_count"))
            total = next(s.value for s in family.samples if s.name.endswith("_sum"))
            out[family.name] = {
                "count": int(count),
                "mean": round(total / count, 4) if count else None,
                "p50_le": _bucket_quantile(buckets, count, 0.5),
                "p99_le": _bucket_quantile(buckets, count, 0.99),
            }
        return out

    def tail(self, lines: int = 15) -> str:
        """The log's last lines, without the (expected) dead-letter warnings."""
        with contextlib.suppress(OSError):
            kept = [
                line[:300]
                for line in self.log.read_text(errors="replace").splitlines()
                if "message_dead_lettered" not in line
            ]
            return "\n".join(kept[-lines:])
        return "(no log)"


def _bucket_quantile(buckets: list[tuple[str, float]], count: float, q: float) -> str | None:
    """The upper bound of the histogram bucket holding quantile ``q``."""
    for le, cumulative in buckets:
        if count and cumulative >= q * count:
            return le
    return None


async def exited(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait until ``proc`` has exited *without reaping it*, so its CPU times stay readable."""
    deadline = time.monotonic() + timeout
    ps = psutil.Process(proc.pid)
    while time.monotonic() < deadline:
        try:
            if ps.status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        await asyncio.sleep(0.05)
    raise BenchFailure(f"process {proc.args!r} did not exit within {timeout}s")


def spawn_module(
    stack: Stack,
    args: list[str],
    log_name: str,
    *,
    capture: bool = False,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """``python -m ARGS`` from the repository root; stderr to the stack's log ``log_name``."""
    with stack.log(log_name).open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", *args],
            stdout=subprocess.PIPE if capture else log,
            stderr=log,
            cwd=REPO,
            env=env,
        )
    stack.children.append(proc)
    return proc


async def json_result(
    stack: Stack, proc: subprocess.Popen[bytes], log_name: str, *, timeout: float = 600
) -> dict[str, Any]:
    """Wait for a :func:`spawn_module` child run with ``capture=True``; its result is the
    last line of its stdout, as JSON. A non-zero exit raises with the end of its log."""
    out, _ = await asyncio.to_thread(proc.communicate, None, timeout)
    stack.children.remove(proc)
    if proc.returncode != 0:
        tail = stack.log(log_name).read_text(errors="replace").splitlines()[-20:]
        raise BenchFailure(
            f"{log_name} exited with {proc.returncode}; the end of {stack.log(log_name)}:\n"
            + "\n".join(tail)
        )
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


def _tree_cpu(pid: int, children: bool = True) -> float:
    """User + system CPU seconds of a process (and its live children)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *(root.children(recursive=True) if children else [])]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            t = p.cpu_times()
            total += t.user + t.system
    if children:  # children that already exited and were reaped (e.g. Postgres backends)
        with contextlib.suppress(psutil.NoSuchProcess):
            t = root.cpu_times()
            total += t.children_user + t.children_system
    return total


class CpuMeter:
    """CPU seconds used by each process tree of the stack between start and stop
    (on a 2-core machine: which process the cores went to)."""

    def __init__(self, stack: Stack, **pids: int) -> None:
        postmaster = int((stack.root / "pgdata" / "postmaster.pid").read_text().split()[0])
        self._pids = {**pids, "postgres": postmaster, "broker": stack.broker.pid,
                      "bench": os.getpid()}  # fmt: skip
        self._start: dict[str, float] = {}
        self._t0 = 0.0

    def start(self) -> CpuMeter:
        self._t0 = time.monotonic()
        self._start = {k: self._cpu(k, pid) for k, pid in self._pids.items()}
        return self

    @staticmethod
    def _cpu(name: str, pid: int) -> float:
        # the bench's own children are measured on their own; a backend is one process
        return _tree_cpu(pid, children=name != "bench" and not name.endswith("_backend"))

    def stop(self) -> dict[str, Any]:
        wall = time.monotonic() - self._t0
        used = {k: self._cpu(k, pid) - self._start[k] for k, pid in self._pids.items()}
        return {
            "wall_s": round(wall, 2),
            "cpu_s": {k: round(v, 2) for k, v in used.items()},
            "cores_busy": {k: round(v / wall, 2) for k, v in used.items()} if wall else {},
        }


class LockWaits:
    """Samples how many backends of one database wait on a lock (``pg_stat_activity``).

    ``Lock`` waits are heavyweight ones: rows and advisory locks, what one batch
    transaction can make another wait for. The integral over the samples is the
    time backends spent waiting, summed over backends.
    """

    INTERVAL = 0.01

    def __init__(self, stack: Stack, database: str) -> None:
        self._uri = stack.server_uri
        self._database = database
        self._task: asyncio.Task[None] | None = None
        self.samples = 0
        self.waiting_samples = 0
        self.wait_s = 0.0
        self.max_waiting = 0

    async def __aenter__(self) -> LockWaits:
        conn = await asyncpg.connect(self._uri)
        self._task = asyncio.create_task(self._sample(conn))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _sample(self, conn: asyncpg.Connection) -> None:
        try:
            last = time.monotonic()
            while True:
                waiting = await conn.fetchval(
                    """select count(*) from pg_stat_activity
                       where datname = $1 and wait_event_type = 'Lock'""",
                    self._database,
                )
                now = time.monotonic()
                self.samples += 1
                self.waiting_samples += bool(waiting)
                self.wait_s += waiting * (now - last)
                self.max_waiting = max(self.max_waiting, waiting)
                last = now
                await asyncio.sleep(self.INTERVAL)
        finally:
            await conn.close()

    def summary(self, batches: int) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "share_of_samples_waiting": round(self.waiting_samples / self.samples, 3)
            if self.samples
            else None,
            "max_backends_waiting": self.max_waiting,
            "wait_s": round(self.wait_s, 3),
            "batches": batches,
            "ms_per_batch": round(self.wait_s * 1000 / batches, 2) if batches else 0.0,
        }


@contextlib.asynccontextmanager
async def db(url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(url)
    try:
        yield conn
    finally:
        await conn.close()

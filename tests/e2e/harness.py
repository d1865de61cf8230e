"""Running the real services against the embedded stack, in-process or as subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import secrets
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from referral_consumer import writer
from referral_consumer.app import ConsumerService
from referral_consumer.ingest import Parsed, parse_record
from referral_consumer.plan import BatchPlan
from referral_consumer.store import apply_batch
from referral_devtools import devstack
from referral_devtools import synthetic as bill
from referral_runtime.referral_state import Outbound
from referral_runtime.settings import Settings
from tests.conftest import kafka_client_options, settings_env, wait_for
from tests.e2e.fault_proxy import FaultProxy

_offsets = itertools.count()


@dataclass(frozen=True)
class _Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def batch_plan(settings: Settings, *events: dict[str, Any]) -> BatchPlan:
    """Billing events as the consumer plans one batch of them (no broker needed)."""
    parsed = []
    for event in events:
        record = _Record(
            bill.topic_for(settings.topics, event),
            0,
            next(_offsets),
            event["data"]["account_id"].encode(),
            json.dumps(event).encode(),
        )
        result = parse_record(record, settings.topics.billing, settings.max_message_bytes)
        assert isinstance(result, Parsed), result
        parsed.append(result)
    return BatchPlan.of(parsed)


async def apply_plan(conn: asyncpg.Connection, settings: Settings, plan: BatchPlan) -> None:
    """Apply a planned batch in one transaction, as the consumer's writer does."""
    async with conn.transaction():
        await apply_batch(
            conn, plan, Outbound.from_settings(settings), secrets.randbits, tz=settings.tz
        )


@contextlib.asynccontextmanager
async def running_consumer(
    settings: Settings, *, wait_started: bool = True
) -> AsyncIterator[ConsumerService]:
    """The consumer service in this event loop (same start/stop path as the ASGI app).

    With ``wait_started`` (the default) it is subscribed when the block begins; without,
    the block begins at once, while the service still waits for its dependencies."""
    service = ConsumerService(settings)
    await service.start()
    try:
        if wait_started:
            await asyncio.wait_for(service.started.wait(), timeout=60)
        yield service
    finally:
        await service.stop()


@contextlib.asynccontextmanager
async def broker_behind_proxy(root: Path) -> AsyncIterator[tuple[FaultProxy, str]]:
    """A Tansu of its own behind a :class:`FaultProxy`, advertising the proxy's address, so
    every connection of every client goes through the proxy; yields it and the bootstrap."""
    broker_port = devstack.free_port()
    proxy = FaultProxy(broker_port)
    await proxy.start()
    broker, _ = devstack.start_broker(root / "broker.log", broker_port, advertised_port=proxy.port)
    try:
        yield proxy, f"127.0.0.1:{proxy.port}"
    finally:
        await proxy.close()
        broker.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            broker.wait(5)
        broker.kill()


@contextlib.asynccontextmanager
async def producer(settings: Settings) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers, acks="all", **kafka_client_options()
    )
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


@dataclass
class Received:
    key: bytes | None
    value: bytes
    headers: dict[str, str]
    partition: int
    offset: int

    def json(self) -> Any:
        return json.loads(self.value)


async def read_topic(
    settings: Settings, topic: str, *, expect: int, timeout: float = 30
) -> list[Received]:
    """Everything on ``topic`` from the beginning, waiting until ``expect`` messages arrived
    (and briefly after, so extra messages — duplicates — are seen too)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        **kafka_client_options(),
    )
    await consumer.start()
    out: list[Received] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        quiet_until = None
        while loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for r in records:
                    out.append(
                        Received(
                            r.key,
                            r.value or b"",
                            {k: v.decode() for k, v in r.headers},
                            r.partition,
                            r.offset,
                        )
                    )
            if len(out) >= expect:
                quiet_until = quiet_until or loop.time() + 0.5
                if loop.time() >= quiet_until:
                    break
    finally:
        await consumer.stop()
    return out


async def committed_offsets(settings: Settings, group: str, topic: str) -> dict[int, int]:
    """``group``'s committed offset per partition of ``topic`` (a partition it never
    committed is absent)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=group,
        enable_auto_commit=False,
        **kafka_client_options(),
    )
    await consumer.start()
    try:
        await consumer.topics()
        found = {}
        for p in consumer.partitions_for_topic(topic) or set():
            offset = await consumer.committed(TopicPartition(topic, p))
            if offset is not None:
                found[p] = offset
        return found
    finally:
        await consumer.stop()


def spawn(
    command: list[str], settings: Settings, log: Path, **extra_env: str
) -> subprocess.Popen[bytes]:
    """Start a console script of this project as a real process."""
    env = {**os.environ, **settings_env(settings), "HTTP_PORT": "0", **extra_env}
    bindir = Path(sys.executable).parent
    return subprocess.Popen(
        [str(bindir / command[0]), *command[1:]],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def run_referrals(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """`referrals ARGS` as a real process, to the end (no REFERRALS_ACTOR: pass --actor)."""
    env = {**os.environ, **settings_env(settings)}
    env.pop("REFERRALS_ACTOR", None)
    script = str(Path(sys.executable).parent / "referrals")
    return subprocess.run(
        [script, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def terminate(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    return proc.wait(timeout)


def http_status(port: int, path: str) -> int:
    """The HTTP status a service on ``port`` answers for ``path``; 0 when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


async def spawn_both_unready(
    settings: Settings, tmp_path: Path
) -> tuple[dict[str, subprocess.Popen[bytes]], dict[str, int]]:
    """Both services, started while a dependency is down: they must serve /healthz, stay up
    and answer /readyz 503 (checked after several failed connection attempts)."""
    ports = {name: devstack.free_port() for name in ("referral-consumer", "payout-scheduler")}
    procs = {
        name: spawn([name], settings, tmp_path / f"{name}.log", HTTP_PORT=str(port),
                    HEALTH_PROBE_SECONDS="0.5")
        for name, port in ports.items()
    }  # fmt: skip
    try:
        for port in ports.values():

            async def serving(port: int = port) -> bool:
                return await asyncio.to_thread(http_status, port, "/healthz") == 200

            await wait_for(serving, timeout=30)
        await asyncio.sleep(2)  # several connection attempts fail meanwhile
        for name, port in ports.items():
            assert procs[name].poll() is None, (tmp_path / f"{name}.log").read_text()
            assert await asyncio.to_thread(http_status, port, "/healthz") == 200
            assert await asyncio.to_thread(http_status, port, "/readyz") == 503, name
    except BaseException:
        for proc in procs.values():
            proc.kill()
        raise
    return procs, ports


async def active_code(db: asyncpg.Connection, account: str) -> str:
    """The account's active referral code (stored form)."""
    code = await db.fetchval(
        "select code from referral_codes where account_id = $1 and status = 'active'", account
    )
    assert code, f"{account} has no active code"
    return str(code)


async def inbox_reaches(db: asyncpg.Connection, n: int, timeout: float = 60) -> None:
    """Wait until ``n`` events were applied."""

    async def applied() -> bool:
        return bool(await db.fetchval("select count(*) from inbox") >= n)

    await wait_for(applied, timeout=timeout)


async def referral_status(db: asyncpg.Connection, referee: str) -> tuple[str, str | None]:
    """The referee's referral status and reason."""
    row = await db.fetchrow(
        "select status, reason from referrals where referee_account_id = $1", referee
    )
    assert row is not None, f"{referee} was not referred"
    return row["status"], row["reason"]


async def consumed_reaches(db: asyncpg.Connection, n: int, timeout: float = 60) -> None:
    """Wait until ``n`` distinct messages were consumed: applied or dead-lettered."""

    async def consumed() -> bool:
        return bool(
            await db.fetchval(
                "select (select count(*) from inbox) + (select count(*) from dead_letters)"
            )
            >= n
        )

    await wait_for(consumed, timeout=timeout)


def fresh_logger(monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer's logger as structlog is configured now: its module logger was bound, and
    cached, by whichever test used it first (possibly with logging turned down)."""
    monkeypatch.setattr(writer, "log", structlog.get_logger(writer.__name__))

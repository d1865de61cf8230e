"""Shared fixtures: the embedded stack once per session, a database and topics per test."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import inspect
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from hypothesis import settings as hypothesis_settings

from referral_devtools import devstack
from referral_runtime.db import connect
from referral_runtime.settings import Settings, Topics

os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.mkdtemp(prefix="xdg-"))

# No per-example deadline anywhere: on a busy 2-core CI machine one slow example (a
# collector pause, a neighbour's burst) would fail a property that holds.
hypothesis_settings.register_profile("no-deadline", deadline=None)
hypothesis_settings.load_profile("no-deadline")


@dataclass
class Created:
    """The databases and topics the tests made on a stack that outlives the session."""

    databases: set[str] = field(default_factory=set)
    topics: set[str] = field(default_factory=set)


@dataclass
class Stack:
    server_uri: str
    bootstrap: str
    root: Path
    #: Whether what the tests create there must be removed again (TEST_STACK=external).
    outlives_tests: bool = False
    created: Created = field(default_factory=Created)


#: Which stack the e2e suite runs against: ``embedded`` (default: embedded Postgres and
#: Tansu), ``external`` (``KAFKA_BOOTSTRAP_SERVERS`` and ``DATABASE_URL`` given by the user,
#: with the services' Kafka security settings; every test creates its own topics and database
#: there, and removes them) or ``containers`` (Apache Kafka in KRaft mode and PostgreSQL
#: through testcontainers; needs a Docker engine).
TEST_STACK = os.environ.get("TEST_STACK", "embedded")
#: The replication factor of the topics the tests create (a cluster may refuse fewer
#: replicas than its min.insync.replicas, or its policies may require more).
TEST_REPLICATION_FACTOR = int(os.environ.get("TEST_REPLICATION_FACTOR", "1"))


@functools.cache
def kafka_client_options() -> dict[str, object]:
    """aiokafka options of every Kafka client the tests make: the services' own security
    settings, from the same variables (``KAFKA_SECURITY_PROTOCOL``, ``KAFKA_SASL_*``,
    ``KAFKA_SSL_*``; PLAINTEXT when unset)."""
    unused = Settings(kafka_bootstrap_servers="unused:9092", database_url="postgresql://unused/x")
    return unused.kafka_security()


async def create_database(stack: Stack, name: str, *, migrated: bool = True) -> str:
    """A database on the stack's server, recorded so that it is removed after the run."""
    stack.created.databases.add(name)
    return await devstack.create_database(stack.server_uri, name, migrated=migrated)


async def create_topics(stack: Stack, names: list[str], partitions: int = 4) -> None:
    """Topics on the stack's broker, recorded so that they are removed after the run."""
    stack.created.topics.update(names)
    await devstack.create_topics(
        stack.bootstrap,
        names,
        partitions,
        replication_factor=TEST_REPLICATION_FACTOR,
        **kafka_client_options(),
    )


async def remove_created(
    stack: Stack, *, databases: set[str] | None = None, topics: set[str] | None = None
) -> None:
    """Drop what the tests created on a stack that outlives them (all of it by default)."""
    if not stack.outlives_tests:
        return  # thrown away with the stack
    databases = set(stack.created.databases if databases is None else databases)
    topics = set(stack.created.topics if topics is None else topics)
    if topics:
        await devstack.delete_topics(stack.bootstrap, sorted(topics), **kafka_client_options())
    if databases:
        admin = await asyncpg.connect(stack.server_uri)
        try:
            for name in sorted(databases):
                await admin.execute(f'drop database if exists "{name}" with (force)')
        finally:
            await admin.close()
    stack.created.databases -= databases
    stack.created.topics -= topics


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    """PostgreSQL and a Kafka broker for the whole session (see :data:`TEST_STACK`)."""
    if TEST_STACK == "external":
        external = _external_stack()
        try:
            yield external
        finally:
            asyncio.run(remove_created(external))  # what a test's own teardown left
    elif TEST_STACK == "containers":
        yield from _container_stack()
    elif TEST_STACK == "embedded":
        yield from _embedded_stack()
    else:
        pytest.exit(f"TEST_STACK={TEST_STACK!r}: expected embedded, external or containers", 2)


def _embedded_stack() -> Iterator[Stack]:
    """The same code as `referrals dev up`."""
    root = Path(tempfile.mkdtemp(prefix="referrals-test-"))
    server_uri = devstack.start_postgres(root / "pgdata")
    broker, bootstrap = devstack.start_broker(root / "broker.log")
    try:
        yield Stack(server_uri, bootstrap, root)
    finally:
        broker.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            broker.wait(5)
        broker.kill()
        devstack.stop_postgres(root / "pgdata")
        shutil.rmtree(root, ignore_errors=True)


def _external_stack() -> Stack:
    """The user's broker and server: ``DATABASE_URL`` must be allowed to create databases."""
    missing = [v for v in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL") if not os.environ.get(v)]
    if missing:
        pytest.exit(f"TEST_STACK=external needs {' and '.join(missing)}", 2)
    return Stack(
        os.environ["DATABASE_URL"],
        os.environ["KAFKA_BOOTSTRAP_SERVERS"],
        Path(tempfile.mkdtemp(prefix="referrals-test-")),
        outlives_tests=True,
    )


def _container_stack() -> Iterator[Stack]:
    """Apache Kafka (KRaft) and PostgreSQL containers; no Docker engine is an error, not a pass."""
    try:
        import docker  # testcontainers' own client
        from testcontainers.community.postgres import PostgresContainer
        from testcontainers.core.container import DockerContainer
        from testcontainers.core.waiting_utils import wait_for_logs
    except ImportError:
        pytest.exit("TEST_STACK=containers needs testcontainers (in the dev lock: make install)", 2)
    try:
        docker.from_env().ping()
    except Exception as exc:
        pytest.exit(f"TEST_STACK=containers: no Docker engine is reachable here ({exc})", 2)
    postgres_image = os.environ.get("TEST_POSTGRES_IMAGE", "postgres:17.6-bookworm")
    with (
        PostgresContainer(postgres_image, driver=None) as postgres,
        _apache_kafka(DockerContainer) as (kafka, bootstrap),
    ):
        wait_for_logs(kafka, "Kafka Server started", timeout=180)
        yield Stack(
            postgres.get_connection_url(),
            bootstrap,
            Path(tempfile.mkdtemp(prefix="referrals-test-")),
        )


@contextlib.contextmanager
def _apache_kafka(container_class: Any) -> Iterator[tuple[Any, str]]:
    """Apache Kafka's own image, one KRaft node, listening and advertised on one host port.

    (testcontainers' ``KafkaContainer`` drives Confluent's image; Apache's needs only
    its environment.) The port is the same inside and outside, so the address the
    broker advertises is the one clients reach.
    """
    port = devstack.free_port()
    image = os.environ.get("TEST_KAFKA_IMAGE", "apache/kafka:3.9.0")
    env = {
        "KAFKA_NODE_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_LISTENERS": f"PLAINTEXT://:{port},CONTROLLER://:9093",
        "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://localhost:{port}",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9093",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
    }
    container = container_class(image).with_bind_ports(port, port)
    for key, value in env.items():
        container = container.with_env(key, value)
    with container as kafka:
        yield kafka, f"localhost:{port}"


def _slug(request: pytest.FixtureRequest) -> str:
    digest = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:10]
    return f"t{digest}"


@pytest.fixture
async def database_url(stack: Stack, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """A fresh, migrated database for this test. Its name is the test's and a random part,
    so that a database of someone else's (another run on a shared server) is never dropped."""
    name = f"{_slug(request)}_{os.urandom(3).hex()}"
    url = await create_database(stack, name)
    yield url
    await remove_created(stack, databases={name})


@pytest.fixture
async def topics(stack: Stack, request: pytest.FixtureRequest) -> AsyncIterator[Topics]:
    """Topic names private to this test, created with 4 partitions."""
    prefix = _slug(request) + "-" + os.urandom(3).hex()
    names = Topics()
    private = Topics(**{f: f"{prefix}.{getattr(names, f)}" for f in Topics.model_fields})
    await create_topics(stack, private.all, partitions=4)
    yield private
    await remove_created(stack, topics=set(private.all))


@pytest.fixture
def settings(
    stack: Stack, database_url: str, topics: Topics, request: pytest.FixtureRequest
) -> Settings:
    return Settings(
        kafka_bootstrap_servers=stack.bootstrap,
        database_url=database_url,
        consumer_group=f"{_slug(request)}-{os.urandom(3).hex()}",
        payout_status_group=f"{_slug(request)}-status-{os.urandom(3).hex()}",
        topics=topics,
        outbox_poll_ms=50,
        consumer_batch_timeout_ms=50,
        consumer_session_timeout_ms=3000,
        log_level="INFO",
    )


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment a service subprocess needs to run with ``settings``."""
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "DATABASE_URL": settings.database_url,
        "CONSUMER_GROUP": settings.consumer_group,
        "PAYOUT_STATUS_GROUP": settings.payout_status_group,
        "OUTBOX_POLL_MS": str(settings.outbox_poll_ms),
        "CONSUMER_BATCH_TIMEOUT_MS": str(settings.consumer_batch_timeout_ms),
        "CONSUMER_SESSION_TIMEOUT_MS": str(settings.consumer_session_timeout_ms),
        "PAYOUT_SETTLE_DAYS": str(settings.payout_settle_days),
        "REFERRALS_ENV_FILE": "/nonexistent",
    }
    for name in Topics.model_fields:
        env[f"TOPIC_{name.upper()}"] = getattr(settings.topics, name)
    return env


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(database_url)
    yield conn
    await conn.close()


async def wait_for(predicate, timeout: float = 30.0, interval: float = 0.05):  # type: ignore[no-untyped-def]
    """Poll a predicate (sync, async, or a lambda returning a coroutine) until it is truthy."""
    deadline = asyncio.get_running_loop().time() + timeout
    name = getattr(predicate, "__name__", "predicate")
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {name}")
        await asyncio.sleep(interval)

"""`TEST_STACK=external`: the suite against a Kafka and a PostgreSQL that outlive it.

It takes the services' Kafka security settings and a replication factor for the
topics it creates, and leaves the cluster and the server as it found them. Here a
few end-to-end tests run in a nested pytest against this session's embedded
stack, as if it were someone else's.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from referral_devtools import devstack
from tests.conftest import TEST_STACK, Stack, kafka_client_options

ROOT = Path(__file__).resolve().parents[2]
NESTED = [
    # A database made by a test itself (removed when the session ends)...
    "tests/e2e/test_migrations.py::test_migrate_command",
    # ...and the database and topics of the fixtures (removed when the test ends).
    "tests/e2e/test_consumer_e2e.py::test_code_assigned_once_per_account",
]


async def _databases(stack: Stack) -> set[str]:
    conn = await asyncpg.connect(stack.server_uri)
    try:
        rows = await conn.fetch("select datname from pg_database where not datistemplate")
    finally:
        await conn.close()
    return {row["datname"] for row in rows}


async def _topics(stack: Stack) -> set[str]:
    admin = devstack.AIOKafkaAdminClient(bootstrap_servers=stack.bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


@pytest.mark.skipif(TEST_STACK != "embedded", reason="drives a nested external run itself")
async def test_the_external_lane_removes_the_databases_and_topics_it_created(
    stack: Stack, tmp_path: Path
) -> None:
    databases, topics = await _databases(stack), await _topics(stack)
    env = {
        **os.environ,
        "TEST_STACK": "external",
        "KAFKA_BOOTSTRAP_SERVERS": stack.bootstrap,
        "DATABASE_URL": stack.server_uri,
        "KAFKA_SECURITY_PROTOCOL": "PLAINTEXT",
        "TEST_REPLICATION_FACTOR": "1",
    }
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *NESTED],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout.splitlines()[-1]
    assert await _databases(stack) == databases
    assert await _topics(stack) == topics


def test_every_kafka_client_of_the_tests_takes_the_services_security_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in {
        "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": "lane",
        "KAFKA_SASL_PASSWORD": "s3cret",
    }.items():
        monkeypatch.setenv(name, value)
    kafka_client_options.cache_clear()
    try:
        assert kafka_client_options() == {
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_plain_username": "lane",
            "sasl_plain_password": "s3cret",
        }
    finally:
        monkeypatch.undo()
        kafka_client_options.cache_clear()
    assert kafka_client_options() == {"security_protocol": "PLAINTEXT"}

"""`referrals migrate`: idempotent, and safe when two processes run it at once."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg

from referral_runtime.migrate import available_migrations, migrate
from tests.conftest import Stack, create_database


async def test_concurrent_migrations_apply_each_file_once(stack: Stack) -> None:
    url = await create_database(stack, f"m{uuid.uuid4().hex[:8]}", migrated=False)
    conns = [await asyncpg.connect(url) for _ in range(3)]
    try:
        applied = await asyncio.gather(*(migrate(c) for c in conns))
        versions = [m.version for m in available_migrations()]
        assert sorted(v for run in applied for v in run) == versions  # each once, by one of them
        rows = await conns[0].fetch("select version from schema_migrations order by version")
        assert [r["version"] for r in rows] == versions
        assert await migrate(conns[0]) == []  # idempotent
    finally:
        for c in conns:
            await c.close()


async def test_migrate_command(stack: Stack, tmp_path: Path) -> None:
    url = await create_database(stack, f"m{uuid.uuid4().hex[:8]}", migrated=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAFKA_")}
    env |= {"DATABASE_URL": url, "REFERRALS_ENV_FILE": "/nonexistent"}  # no broker needed
    script = str(Path(sys.executable).parent / "referrals")
    first = await asyncio.to_thread(_run, [script, "migrate"], env)
    assert first.returncode == 0, first.stderr
    assert "applied migrations" in first.stdout
    again = await asyncio.to_thread(_run, [script, "migrate"], env)
    assert again.returncode == 0 and "up to date" in again.stdout


def _run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


def test_bad_configuration_names_the_variable(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "REFERRALS_ENV_FILE": "/nonexistent",
           "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "DATABASE_URL": "postgresql://x/y",
           "PROGRAM_TIMEZONE": "Mars/Olympus", "PAYOUT_SETTLE_DAYS": "-3", "LOG_FORMAT": "xml"}  # fmt: skip
    script = str(Path(sys.executable).parent / "referral-consumer")
    result = _run([script], env)
    assert result.returncode == 2
    assert "PROGRAM_TIMEZONE: Value error, unknown IANA time zone 'Mars/Olympus'" in result.stderr
    assert "PAYOUT_SETTLE_DAYS" in result.stderr
    assert "LOG_FORMAT" in result.stderr
    missing = _run([script], {"PATH": os.environ["PATH"], "REFERRALS_ENV_FILE": "/nonexistent"})
    assert missing.returncode == 2
    assert "KAFKA_BOOTSTRAP_SERVERS: Field required" in missing.stderr
    assert "DATABASE_URL: Field required" in missing.stderr
    # Where the laptop stack is installed (here), the message says how to get its addresses.
    assert "run `referrals dev up` to write /nonexistent" in missing.stderr

"""`referrals dev up` / `down`: the embedded stack a laptop runs, and its failure messages."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import psutil
from aiokafka.admin import AIOKafkaAdminClient

from referral_devtools.devstack import read_env_file

SCRIPT = str(Path(sys.executable).parent / "referrals")


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SCRIPT, *args], env=env, capture_output=True, text=True, timeout=120)


def _postgres_running(pgdata: Path) -> bool:
    for proc in psutil.process_iter(["name", "cmdline"]):
        if proc.info["name"] == "postgres" and str(pgdata) in " ".join(proc.info["cmdline"] or []):
            return True
    return False


async def test_up_writes_env_and_down_stops_everything(tmp_path: Path) -> None:
    env = {**os.environ, "REFERRALS_ENV_FILE": str(tmp_path / "stack.env")}
    up = await asyncio.to_thread(_run, ["dev", "up", "--partitions", "2"], env)
    assert up.returncode == 0, up.stderr
    values = read_env_file(tmp_path / "stack.env")
    try:
        conn = await asyncpg.connect(values["DATABASE_URL"])
        assert await conn.fetchval("select count(*) from schema_migrations") >= 1
        await conn.close()
        admin = AIOKafkaAdminClient(bootstrap_servers=values["KAFKA_BOOTSTRAP_SERVERS"])
        await admin.start()
        assert "billing.invoice.paid" in await admin.list_topics()
        await admin.close()
        again = await asyncio.to_thread(_run, ["dev", "up"], env)  # idempotent
        assert again.returncode == 0 and values["KAFKA_BOOTSTRAP_SERVERS"] in again.stdout
    finally:
        down = await asyncio.to_thread(_run, ["dev", "down"], env)
    assert down.returncode == 0, down.stderr
    assert not psutil.pid_exists(int(values["REFERRALS_BROKER_PID"])) or (
        psutil.Process(int(values["REFERRALS_BROKER_PID"])).status() == psutil.STATUS_ZOMBIE
    )
    assert not _postgres_running(tmp_path / "pgdata")
    assert not (tmp_path / "stack.env").exists()


async def test_a_broker_that_fails_to_start_is_reported(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "REFERRALS_ENV_FILE": str(tmp_path / "stack.env"),
        "CALF_TANSU_BIN": "/bin/false",
    }
    up = await asyncio.to_thread(_run, ["dev", "up"], env)
    assert up.returncode == 1
    assert "error: broker exited with code 1" in up.stderr
    assert not _postgres_running(tmp_path / "pgdata"), "postgres must not be left running"

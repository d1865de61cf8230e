"""Numbered SQL migrations, applied idempotently and safely from concurrent processes.

:func:`upgrade` (``referrals migrate``) also installs the release's rules: when
``RULES_VERSION`` is newer than the database's, the undecided referrals are
recomputed under them (:mod:`referral_runtime.recompute`).
"""

from __future__ import annotations

import importlib.resources
import re
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import asyncpg
import structlog

from referral_runtime.recompute import RulesInstalled, install_rules

log = structlog.get_logger(__name__)

#: Any constant works; it only has to be the same in every process that migrates.
_MIGRATION_LOCK_KEY = 0x5EF_E22A1


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available_migrations() -> list[Migration]:
    """Migrations shipped in the package, ordered by their number prefix."""
    folder = importlib.resources.files("referral_runtime") / "migrations"
    found = []
    for entry in folder.iterdir():
        match = re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text()))
    found.sort(key=lambda m: m.version)
    return found


async def migrate(conn: asyncpg.Connection) -> list[int]:
    """Apply every migration not applied yet; returns the versions applied now.

    A session-level advisory lock serialises concurrent runs, so two pods
    starting together apply each file once.
    """
    await conn.execute("select pg_advisory_lock($1)", _MIGRATION_LOCK_KEY)
    try:
        return await _apply(conn)
    finally:
        await conn.execute("select pg_advisory_unlock($1)", _MIGRATION_LOCK_KEY)


@dataclass(frozen=True)
class Upgrade:
    """What ``referrals migrate`` did: SQL migrations applied, rules installed (if newer)."""

    applied: list[int]
    rules: RulesInstalled | None


async def upgrade(conn: asyncpg.Connection, tz: ZoneInfo) -> Upgrade:
    """``referrals migrate``: the SQL migrations, then the rules of this release.

    When this release's ``RULES_VERSION`` is newer than the database's, every
    undecided referral is recomputed under it (:func:`install_rules`); ``tz``
    is the program time zone. Both steps run under the migration lock, so two
    pods running it at once do each once.
    """
    await conn.execute("select pg_advisory_lock($1)", _MIGRATION_LOCK_KEY)
    try:
        applied = await _apply(conn)
        return Upgrade(applied, await install_rules(conn, tz))
    finally:
        await conn.execute("select pg_advisory_unlock($1)", _MIGRATION_LOCK_KEY)


async def _apply(conn: asyncpg.Connection) -> list[int]:
    """The SQL migrations not applied yet, each in its transaction (the caller holds the lock)."""
    applied_now: list[int] = []
    await conn.execute(
        """create table if not exists schema_migrations (
               version int primary key,
               name text not null,
               applied_at timestamptz not null default now())"""
    )
    done = {r["version"] for r in await conn.fetch("select version from schema_migrations")}
    for migration in available_migrations():
        if migration.version in done:
            continue
        async with conn.transaction():
            await conn.execute(migration.sql)
            await conn.execute(
                "insert into schema_migrations (version, name) values ($1, $2)",
                migration.version,
                migration.name,
            )
        log.info("migration_applied", version=migration.version, name=migration.name)
        applied_now.append(migration.version)
    return applied_now

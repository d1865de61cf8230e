"""Numbered SQL migrations, applied idempotently and safely from concurrent processes."""

from __future__ import annotations

import importlib.resources
import re
from dataclasses import dataclass

import asyncpg
import structlog

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
    applied_now: list[int] = []
    await conn.execute("select pg_advisory_lock($1)", _MIGRATION_LOCK_KEY)
    try:
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
    finally:
        await conn.execute("select pg_advisory_unlock($1)", _MIGRATION_LOCK_KEY)
    return applied_now

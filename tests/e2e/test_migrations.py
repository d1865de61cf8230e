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


async def _migrated_up_to(stack: Stack, version: int) -> asyncpg.Connection:
    """A new database with the migrations up to ``version`` applied, as an older release left it."""
    url = await create_database(stack, f"m{uuid.uuid4().hex[:8]}", migrated=False)
    conn = await asyncpg.connect(url)
    await conn.execute(
        """create table schema_migrations (version int primary key, name text not null,
               applied_at timestamptz not null default now())"""
    )
    for m in available_migrations():
        if m.version <= version:
            await conn.execute(m.sql)
            await conn.execute(
                "insert into schema_migrations (version, name) values ($1, $2)", m.version, m.name
            )
    return conn


async def test_legacy_referrals_imported_before_get_their_imports_credit_start(
    stack: Stack,
) -> None:
    conn = await _migrated_up_to(stack, 6)
    try:
        # Two imports as the older release recorded them (the rows and the audit entry share
        # the transaction's now()), and a row with no audit entry.
        for referee, at, credit_from in [
            ("r1", "2026-05-04 10:00:00+00", "2026-05-04T00:00:00-07:00"),
            ("r2", "2026-05-09 10:00:00+00", None),
        ]:
            await conn.execute(
                """insert into legacy_referrals (referee_account_id, referrer_account_id,
                       monthly_credit_cents, currency, imported_at, imported_by)
                   values ($1, 'q', 500, 'USD', $2::text::timestamptz, 'alice')""",
                referee,
                at,
            )
            await conn.execute(
                """insert into audit_log (actor, action, subject, details, at)
                   values ('alice', 'legacy.import', 'f.csv',
                           jsonb_build_object('credit_from', $1::text), $2::text::timestamptz)""",
                credit_from,
                at,
            )
        await conn.execute(
            """insert into legacy_referrals (referee_account_id, referrer_account_id,
                   monthly_credit_cents, currency, imported_at, imported_by)
               values ('r3', 'q', 500, 'USD', '2026-05-10 12:00:00+00', 'bob')"""
        )

        assert await migrate(conn) == [m.version for m in available_migrations() if m.version > 6]

        starts = dict(
            await conn.fetch("select referee_account_id, credit_from::text from legacy_referrals")
        )
        assert starts == {
            "r1": "2026-05-04 07:00:00+00",  # the import's --credit-from
            "r2": "-infinity",  # imported without one: every invoice was credited
            "r3": "2026-05-10 12:00:00+00",  # no record: from its import on
        }
    finally:
        await conn.close()


async def test_sign_ups_recorded_before_are_resolved_by_the_revocation_instant(
    stack: Stack,
) -> None:
    conn = await _migrated_up_to(stack, 6)
    try:
        await conn.execute("insert into accounts (account_id) values ('ref')")
        await conn.execute(
            """insert into referral_codes (code, account_id, status, retired_at)
               values ('RVKD0000', 'ref', 'revoked', '2026-05-01 12:00:00+00')"""
        )
        # As the older release recorded them: by the code's status on arrival.
        for sid, at, outcome, referrer in [
            ("made-before-recorded-after", "2026-05-01 11:59:00+00", "revoked", None),
            ("made-after-recorded-before", "2026-05-01 12:00:00+00", "known", "ref"),
            ("made-before-recorded-before", "2026-04-01 00:00:00+00", "known", "ref"),
        ]:
            await conn.execute(
                """insert into subscriptions (subscription_id, account_id, event_id, created_at,
                       plan_family, plan_id, currency, first_time_client, referral_code,
                       code_outcome, referrer_account_id)
                   values ($1, $1, gen_random_uuid(), $2::text::timestamptz, 'chat', 'p', 'USD',
                           true, 'RVKD0000', $3, $4)""",
                sid,
                at,
                outcome,
                referrer,
            )

        await migrate(conn)

        resolved = {
            r["subscription_id"]: (r["code_outcome"], r["referrer_account_id"])
            for r in await conn.fetch("select * from subscriptions")
        }
        assert resolved == {
            "made-before-recorded-after": ("known", "ref"),
            "made-after-recorded-before": ("revoked", None),
            "made-before-recorded-before": ("known", "ref"),
        }
    finally:
        await conn.close()

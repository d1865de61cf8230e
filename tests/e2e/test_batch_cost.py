"""A batch costs what it touches, not what the tables hold.

On the real Postgres, through the consumer's ``apply_batch``: the batch statements are
prepared while the tables are nearly empty (as on a fresh database), the tables then
grow by thousands of rows that nobody analyzes, and a small batch that goes through
every path (a referred sign-up, a referrer's new compared fact, payments, a
cancellation, unknown references) must not read any of the grown tables in full.
``pg_stat_xact_user_tables`` counts the transaction's sequential scans, statements
inside ``lock_accounts_for_writing`` included.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from referral_consumer.store import apply_batch
from referral_devtools import synthetic as bill
from referral_runtime.db import create_pool
from referral_runtime.referral_state import Outbound
from referral_runtime.settings import Settings
from tests.e2e.harness import active_code, batch_plan

T0 = datetime(2027, 1, 4, 17, 0, tzinfo=UTC)
GROWN = ("accounts", "subscriptions", "invoices", "cancellations", "referral_codes", "referrals")
REFERRERS = 200
REFEREES = 3000


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    # One connection, so the statements prepared while the tables are small are the
    # ones the last batch runs.
    pool = await create_pool(database_url, size=1)
    async with pool.acquire() as conn:
        for table in GROWN:  # statistics stay missing, whatever autovacuum's timing
            await conn.execute(f"alter table {table} set (autovacuum_enabled = false)")
    yield pool
    await pool.close()


_SCANS = """select relname, seq_scan from pg_stat_xact_user_tables
             where relname = any($1::text[])"""


async def _apply(pool: asyncpg.Pool, settings: Settings, *events: dict[str, Any]) -> dict[str, int]:
    """Apply one batch; returns its sequential scans of the grown tables, by table.

    The transaction's own statistics: the difference of the backend's counts not yet
    reported, read before and after the batch inside its transaction.
    """
    async with pool.acquire() as conn, conn.transaction():
        before = dict(await conn.fetch(_SCANS, list(GROWN)))
        await apply_batch(
            conn,
            batch_plan(settings, *events),
            Outbound.from_settings(settings),
            secrets.randbits,
            tz=settings.tz,
        )
        after = dict(await conn.fetch(_SCANS, list(GROWN)))
    return {t: n - before.get(t, 0) for t, n in after.items() if n > before.get(t, 0)}


def _referee(i: int, code: str, at: datetime) -> list[dict[str, Any]]:
    account = f"acct-{i:05d}"
    return [
        bill.subscription_created(account, f"{account}-s", "chat", at, code=code),
        bill.invoice_paid(account, f"{account}-s", f"{account}-i1", 4900, at),
        bill.invoice_paid(account, f"{account}-s", f"{account}-i2", 4900, at + timedelta(days=30)),
        bill.subscription_cancelled(account, f"{account}-s", at + timedelta(days=40)),
    ]


async def test_a_small_batch_reads_no_grown_table_in_full(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    referrers = [f"ref-{i:04d}" for i in range(REFERRERS)]
    await _apply(
        pool,
        settings,
        *(
            bill.subscription_created(r, f"{r}-s", "chat", T0, organization_id=f"org-{r}")
            for r in referrers
        ),
    )
    async with pool.acquire() as conn:
        codes = [await active_code(conn, r) for r in referrers]
    # Every statement prepared and run more than five times on small tables: Postgres
    # may then settle on a generic plan made for them, which a small batch must not use.
    for i in range(8):
        await _apply(pool, settings, *_referee(i, codes[i], T0))
    later = T0 + timedelta(days=1)
    events = [e for i in range(8, REFEREES) for e in _referee(i, codes[i % REFERRERS], later)]
    for start in range(0, len(events), 2000):
        await _apply(pool, settings, *events[start : start + 2000])
    async with pool.acquire() as conn:
        assert await conn.fetchval("select count(*) from invoices") == 2 * REFEREES
        assert (
            await conn.fetchval(
                "select count(*) from pg_stat_user_tables where relname = any($1::text[])"
                " and (last_analyze is not null or last_autoanalyze is not null)",
                list(GROWN),
            )
            == 0
        ), "the tables were analyzed: the test no longer shows what it should"

    at = T0 + timedelta(days=2)
    scans = await _apply(
        pool,
        settings,
        *_referee(REFEREES, codes[0], at),  # referred by ref-0000
        # ref-0001's new organization: a compared fact, so its referees are recomputed
        bill.subscription_created("ref-0001", "ref-0001-s2", "chat", at, organization_id="org-x"),
        bill.invoice_paid("acct-00009", "acct-00009-s", "acct-00009-i3", 4900, at),
        bill.invoice_paid("acct-nobody", "sub-nobody", "inv-nobody", 4900, at),
        bill.subscription_cancelled("acct-nobody", "sub-nobody", at),
    )
    assert scans == {}, f"sequential scans of grown tables by a batch of seven events: {scans}"

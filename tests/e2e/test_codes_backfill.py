"""`referrals codes backfill FILE`: existing clients get their codes, announced, once."""

from __future__ import annotations

from pathlib import Path

import asyncpg

from referral_devtools import synthetic as bill
from referral_program import codes
from referral_runtime.settings import Settings
from tests.e2e.test_support_ops import T0, Cli, audit_rows, feed, outbox, run_cli

__all__ = ["run_cli"]  # the fixture, used by the tests below


async def _codes(db: asyncpg.Connection) -> dict[str, list[tuple[str, str]]]:
    rows = await db.fetch("select account_id, code, status from referral_codes order by code")
    found: dict[str, list[tuple[str, str]]] = {}
    for r in rows:
        found.setdefault(r["account_id"], []).append((r["code"], r["status"]))
    return found


async def test_accounts_without_a_code_get_one_announced_and_only_once(
    db: asyncpg.Connection, settings: Settings, run_cli: Cli, tmp_path: Path
) -> None:
    await feed(db, settings, bill.subscription_created("acct-seen-1", "s-1", "chat", T0))
    before = await _codes(db)
    announced_before = len(await outbox(db, settings.topics.code_assigned))
    export = tmp_path / "existing-accounts.csv"
    export.write_text("account_id\nacct-seen-1\nacct-new-2\nacct-new-3\n")

    first = await run_cli("codes", "backfill", str(export))

    assert first.status == 0, first.err
    assert first.out.strip() == (
        f"assigned codes to 2 accounts of {export} (3 rows: 1 already had a code, "
        "2 not seen before); 2 referral_code.assigned announcements queued"
    )
    after = await _codes(db)
    assert after["acct-seen-1"] == before["acct-seen-1"]
    for account in ("acct-new-2", "acct-new-3"):
        ((_code, status),) = after[account]
        assert status == "active"
    messages = (await outbox(db, settings.topics.code_assigned))[announced_before:]
    assert sorted((m["key"], m["data"]["code"], m["data"]["link"]) for m in messages) == [
        (
            account.encode(),
            codes.display(after[account][0][0]),
            f"{settings.referral_link_base}/{codes.display(after[account][0][0])}",
        )
        for account in ("acct-new-2", "acct-new-3")
    ]
    assert all(m["event_type"] == "referral_code.assigned" for m in messages)
    assert all(m["data"]["replaces"] is None for m in messages)
    (audit,) = [r for r in await audit_rows(db) if r["action"] == "codes.backfill"]
    assert audit["actor"] == "support-alice" and audit["subject"] == str(export)
    assert audit["details"] == {
        "file": str(export),
        "rows": 3,
        "new_accounts": 2,
        "assigned": 2,
        "already_had": 1,
    }

    again = await run_cli("codes", "backfill", str(export))
    assert again.status == 0, again.err
    assert again.out.startswith("assigned codes to 0 accounts")
    assert await _codes(db) == after
    assert len(await outbox(db, settings.topics.code_assigned)) == announced_before + 2

    # The consumer meets a backfilled account later: it keeps its code, nothing is announced.
    await feed(db, settings, bill.subscription_created("acct-new-2", "s-2", "chat", T0))
    assert await _codes(db) == after
    assert len(await outbox(db, settings.topics.code_assigned)) == announced_before + 2


async def test_a_bad_file_assigns_nothing_and_says_where(
    db: asyncpg.Connection, settings: Settings, run_cli: Cli, tmp_path: Path
) -> None:
    export = tmp_path / "export.csv"
    export.write_text("account_id\nacct-1\nacct 2\nacct-1\n")
    ran = await run_cli("codes", "backfill", str(export))
    assert ran.status == 2
    assert ran.err.splitlines() == [
        "error: 2 problems, no code was assigned:",
        f"  {export}: line 3: account_id 'acct 2' contains spaces or control characters",
        f"  {export}: line 4: account acct-1 is already on line 2",
    ]
    assert await db.fetchval("select count(*) from accounts") == 0
    assert await db.fetchval("select count(*) from outbox") == 0
    assert await db.fetchval("select count(*) from audit_log") == 0
    missing = await run_cli("codes", "backfill", str(tmp_path / "nope.csv"))
    assert missing.status == 2 and "no such file" in missing.err


async def test_a_dry_run_writes_nothing(
    db: asyncpg.Connection, settings: Settings, run_cli: Cli, tmp_path: Path
) -> None:
    export = tmp_path / "export.csv"
    export.write_text("account_id\n" + "\n".join(f"acct-{i:03d}" for i in range(25)) + "\n")
    ran = await run_cli("codes", "backfill", str(export), "--dry-run")
    assert ran.status == 0, ran.err
    lines = ran.out.splitlines()
    assert lines[0] == (
        f"dry run, nothing written: would assign codes to 25 accounts of {export} "
        "(25 rows: 0 already had a code, 25 not seen before)"
    )
    assert lines[1:3] == ["  acct-000", "  acct-001"] and lines[-1] == "  ... and 5 more"
    for table in ("accounts", "referral_codes", "outbox", "audit_log"):
        assert await db.fetchval(f"select count(*) from {table}") == 0, table

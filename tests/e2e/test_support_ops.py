"""Support's operations on the real Postgres, through `referral_ops.cli.main` as support runs them.

Billing facts go in through the consumer's own batch path (`apply_batch`), so
attribution after a rotation or a revocation is what the service would record;
one test runs the real consumer on the real broker end to end.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from referral_devtools import synthetic as bill
from referral_ops import cli, code_changes
from referral_program import calendar, codes
from referral_runtime.referral_state import Outbound
from referral_runtime.settings import Settings
from tests.conftest import settings_env, wait_for
from tests.e2e.harness import (
    active_code,
    apply_plan,
    batch_plan,
    producer,
    read_topic,
    running_consumer,
)

T0 = datetime(2026, 3, 2, 17, 0, tzinfo=UTC)


async def feed(db: asyncpg.Connection, settings: Settings, *events: dict[str, Any]) -> None:
    """Apply billing events through the consumer's batch transaction (no broker needed)."""
    await apply_plan(db, settings, batch_plan(settings, *events))


async def code_statuses(db: asyncpg.Connection, account: str) -> dict[str, str]:
    rows = await db.fetch("select code, status from referral_codes where account_id = $1", account)
    return {r["code"]: r["status"] for r in rows}


async def audit_rows(db: asyncpg.Connection) -> list[dict[str, Any]]:
    rows = await db.fetch("select actor, action, subject, details, at from audit_log order by id")
    return [dict(r) for r in rows]


async def outbox(db: asyncpg.Connection, topic: str) -> list[dict[str, Any]]:
    rows = await db.fetch("select key, payload from outbox where topic = $1 order by id", topic)
    return [{"key": r["key"], **json.loads(r["payload"])} for r in rows]


async def referral(db: asyncpg.Connection, referee: str) -> tuple[str, str | None]:
    row = await db.fetchrow(
        "select status, reason from referrals where referee_account_id = $1", referee
    )
    assert row is not None, f"no referral for {referee}"
    return row["status"], row["reason"]


async def decide(db: asyncpg.Connection, referee: str, outcome: str, as_of: date) -> None:
    """Record a payout decision as the scheduler would (its row is all that matters here)."""
    row = await db.fetchrow("select * from referrals where referee_account_id = $1", referee)
    assert row is not None
    await db.execute(
        """insert into payouts (referral_id, payout_id, outcome, reason, referrer_account_id,
               referee_account_id, payee, plan_family, amount_cents, currency,
               first_payment_at, eligible_on, pay_by, as_of, status)
           values ($1, gen_random_uuid(), $2, $3, $4, $5, $4, $6, $7, $8, $9, $10, $11, $12,
                   case when $2 = 'due' then 'due' end)""",
        row["referral_id"],
        outcome,
        None if outcome == "due" else "cancelled_before_eligibility",
        row["referrer_account_id"],
        referee,
        "virtual_receptionist" if outcome == "due" else None,
        100_000 if outcome == "due" else 0,
        row["currency"],
        row["first_payment_at"],
        date(2026, 6, 1),
        date(2026, 6, 22),
        as_of,
    )


@dataclass
class Ran:
    status: int
    out: str
    err: str


Cli = Callable[..., Awaitable[Ran]]


@pytest.fixture
def run_cli(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Cli:
    """`referrals ...` in-process (in a thread: the CLI runs its own event loop)."""
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("REFERRALS_ACTOR", "support-alice")

    async def run(*argv: str) -> Ran:
        capsys.readouterr()
        try:
            status = await asyncio.to_thread(cli.main, list(argv))
        except SystemExit as exc:  # argparse usage errors
            status = int(exc.code or 0)
        captured = capsys.readouterr()
        return Ran(status, captured.out, captured.err)

    return run


async def referrer_and_referee(
    db: asyncpg.Connection, settings: Settings, referee: str = "referee-1", *, paid: bool = True
) -> str:
    """A referrer `ref-1` and a referee who signed up with its code (and paid, if ``paid``)."""
    await feed(db, settings, bill.subscription_created("ref-1", "s-ref-1", "chat", T0))
    code: str = codes.display(await active_code(db, "ref-1"))
    t = T0 + timedelta(days=1)
    events = [
        bill.subscription_created(referee, f"s-{referee}", "virtual_receptionist", t, code=code)
    ]
    if paid:
        events.append(bill.invoice_paid(referee, f"s-{referee}", f"i-{referee}", 29900, t))
    await feed(db, settings, *events)
    return code


# --- code rotate ---------------------------------------------------------------------------


async def test_rotate_makes_a_new_code_and_the_old_one_still_attributes(
    settings: Settings, db: asyncpg.Connection, run_cli: Cli
) -> None:
    await feed(db, settings, bill.subscription_created("ref-1", "s-ref-1", "chat", T0))
    old = await active_code(db, "ref-1")

    ran = await run_cli("code", "rotate", "--account", "ref-1")

    assert ran.status == 0, ran.err
    new = await active_code(db, "ref-1")
    assert new != old
    assert await code_statuses(db, "ref-1") == {old: "alias", new: "active"}
    assert codes.display(new) in ran.out
    assert f"{codes.display(old)} is now an alias" in ran.out
    [announced] = [
        m
        for m in await outbox(db, settings.topics.code_assigned)
        if m["data"]["replaces"] is not None
    ]
    assert announced["key"] == b"ref-1"
    assert announced["data"] == {
        "account_id": "ref-1",
        "code": codes.display(new),
        "link": codes.link(settings.referral_link_base, new),
        "replaces": codes.display(old),
    }
    [audit] = await audit_rows(db)
    assert (audit["actor"], audit["action"], audit["subject"]) == (
        "support-alice",
        "code.rotate",
        "ref-1",
    )
    assert audit["details"] == {"code": codes.display(new), "replaces": codes.display(old)}

    t = T0 + timedelta(days=1)
    await feed(
        db,
        settings,
        bill.subscription_created("via-old", "s-old", "voice_assistant", t, code=old.lower()),
        bill.subscription_created("via-new", "s-new", "voice_assistant", t, code=new),
    )
    attributed = {
        r["account_id"]: r["referrer_account_id"]
        for r in await db.fetch("select account_id, referrer_account_id from subscriptions")
    }
    assert attributed["via-old"] == "ref-1"
    assert attributed["via-new"] == "ref-1"
    assert await referral(db, "via-old") == ("pending", None)


async def test_rotate_retries_when_the_new_code_is_taken(
    settings: Settings, db: asyncpg.Connection
) -> None:
    await feed(
        db,
        settings,
        bill.subscription_created("ref-1", "s-1", "chat", T0),
        bill.subscription_created("ref-2", "s-2", "chat", T0),
    )
    taken = await active_code(db, "ref-2")
    fresh = "7K9M2XPZ"
    proposals = iter([_bits(taken), _bits(fresh)])

    done = await code_changes.rotate_code(
        db,
        "ref-1",
        actor="bob",
        out=Outbound.from_settings(settings),
        randbits=lambda n: next(proposals),
    )

    assert done.code == fresh
    assert await active_code(db, "ref-2") == taken


def _bits(code: str) -> int:
    """The ``randbits`` value that makes ``codes.generate`` produce ``code``."""
    return sum(codes.ALPHABET.index(symbol) << (5 * i) for i, symbol in enumerate(code))


async def test_rotate_refuses_an_unknown_account(
    settings: Settings, db: asyncpg.Connection, run_cli: Cli
) -> None:
    ran = await run_cli("code", "rotate", "--account", "nobody")
    assert ran.status == 2
    assert ran.err.strip() == ("error: account nobody is not known (no billing event seen for it)")
    assert await audit_rows(db) == []


# --- code revoke ---------------------------------------------------------------------------


async def test_revoking_the_active_code_replaces_it_and_it_attributes_nothing(
    settings: Settings, db: asyncpg.Connection, run_cli: Cli
) -> None:
    await feed(db, settings, bill.subscription_created("ref-1", "s-ref-1", "chat", T0))
    old = await active_code(db, "ref-1")

    ran = await run_cli(
        "code", "revoke", "--code", codes.display(old).lower(), "--account", "ref-1"
    )

    assert ran.status == 0, ran.err
    new = await active_code(db, "ref-1")
    assert await code_statuses(db, "ref-1") == {old: "revoked", new: "active"}
    assert f"code {codes.display(old)} of account ref-1 revoked (was active)" in ran.out
    assert f"new active code {codes.display(new)}" in ran.out
    replaced = [
        m["data"]
        for m in await outbox(db, settings.topics.code_assigned)
        if m["data"]["replaces"] is not None
    ]
    assert replaced == [
        {
            "account_id": "ref-1",
            "code": codes.display(new),
            "link": codes.link(settings.referral_link_base, new),
            "replaces": codes.display(old),
        }
    ]
    [audit] = await audit_rows(db)
    assert (audit["action"], audit["subject"], audit["details"]) == (
        "code.revoke",
        "ref-1",
        {
            "code": codes.display(old),
            "was": "active",
            "replacement": codes.display(new),
            "withdrawn": [],
            "unreferred": [],
        },
    )

    # A sign-up made after the revocation (business time) attributes nothing.
    await feed(
        db,
        settings,
        bill.subscription_created(
            "late",
            "s-late",
            "virtual_receptionist",
            datetime.now(UTC) + timedelta(days=2),
            code=old,
        ),
    )
    row = await db.fetchrow(
        "select code_outcome, referrer_account_id from subscriptions where account_id = 'late'"
    )
    assert row is not None
    assert (row["code_outcome"], row["referrer_account_id"]) == ("revoked", None)
    assert await db.fetchval("select count(*) from referrals") == 0


async def test_revoking_an_alias_leaves_the_active_code(
    settings: Settings, db: asyncpg.Connection, run_cli: Cli
) -> None:
    await feed(db, settings, bill.subscription_created("ref-1", "s-ref-1", "chat", T0))
    alias = await active_code(db, "ref-1")
    assert (await run_cli("code", "rotate", "--account", "ref-1")).status == 0
    active = await active_code(db, "ref-1")
    announcements = len(await outbox(db, settings.topics.code_assigned))

    ran = await run_cli("code", "revoke", "--code", alias)

    assert ran.status == 0, ran.err
    assert "(was alias)" in ran.out and "new active code" not in ran.out
    assert await code_statuses(db, "ref-1") == {alias: "revoked", active: "active"}
    assert len(await outbox(db, settings.topics.code_assigned)) == announcements


async def test_revoke_errors_say_what_is_wrong(
    settings: Settings, db: asyncpg.Connection, run_cli: Cli
) -> None:
    await feed(db, settings, bill.subscription_created("ref-1", "s-ref-1", "chat", T0))
    code = codes.display(await active_code(db, "ref-1"))

    malformed = await run_cli("code", "revoke", "--code", "ABCU-EFGH")
    assert malformed.status == 2
    assert malformed.err.strip() == (
        "error: 'ABCU-EFGH' is not a referral code: not Crockford base32 symbols: U"
    )
    too_short = await run_cli("code", "revoke", "--code", "ABC")
    assert "a referral code has 8 symbols, this one has 3" in too_short.err

    unknown = await run_cli("code", "revoke", "--code", "ZZZZ-ZZZZ")
    assert unknown.status == 2
    assert unknown.err.strip() == "error: code ZZZZ-ZZZZ is not known: no account has it"

    wrong_owner = await run_cli("code", "revoke", "--code", code, "--account", "ref-2")
    assert wrong_owner.status == 2
    assert f"code {code} belongs to account ref-1, not ref-2" in wrong_owner.err

    assert (await run_cli("code", "revoke", "--code", code)).status == 0
    again = await run_cli("code", "revoke", "--code", code)
    assert again.status == 2
    assert f"code {code} of account ref-1 is already revoked (since " in again.err
    assert [r["action"] for r in await audit_rows(db)] == ["code.revoke"]


# --- payee ---------------------------------------------------------------------------------


async def test_payee_of_one_referral(
    settings: Settings, db: asyncpg.Connection, run_cli: Cli
) -> None:
    await referrer_and_referee(db, settings)

    ran = await run_cli(
        "payee", "set", "--referrer", "ref-1", "--referee", "referee-1", "--payee", "acct-owner-7"
    )

    assert ran.status == 0, ran.err
    assert ran.out.strip() == (
        "payee of the referral of referee-1 (referrer ref-1) set to acct-owner-7"
    )
    assert (
        await db.fetchval("select payee from referrals where referee_account_id = 'referee-1'")
        == "acct-owner-7"
    )
    assert await db.fetchval("select payee from accounts where account_id = 'ref-1'") is None
    [audit] = await audit_rows(db)
    assert (audit["action"], audit["subject"], audit["details"]) == (
        "payee.set",
        "ref-1",
        {"referee": "referee-1", "payee": "acct-owner-7", "previous": None},
    )


async def test_default_payee_of_a_referrer(
    settings: Settings, db: asyncpg.Connection, run_cli: Cli
) -> None:
    code = await referrer_and_referee(db, settings)
    await feed(
        db,
        settings,
        bill.subscription_created("referee-2", "s-r2", "voice_assistant", T0, code=code),
        bill.subscription_created("referee-3", "s-r3", "voice_assistant", T0, code=code),
    )
    await decide(db, "referee-2", "due", date(2026, 6, 2))
    assert (
        await run_cli(
            "payee", "set", "--referrer", "ref-1", "--referee", "referee-3", "--payee", "x"
        )
    ).status == 0

    ran = await run_cli("payee", "set", "--referrer", "ref-1", "--payee", " Finance Dept ")

    assert ran.status == 0, ran.err
    assert ran.out.strip() == (
        "default payee of ref-1 set to Finance Dept: 1 undecided referrals follow it, "
        "1 keep their own payee, 1 already decided keep theirs"
    )
    assert (
        await db.fetchval("select payee from accounts where account_id = 'ref-1'") == "Finance Dept"
    )
    audit = (await audit_rows(db))[-1]
    assert audit["details"] == {"referee": None, "payee": "Finance Dept", "previous": None}


async def test_payee_errors_say_what_is_wrong(
    settings: Settings, db: asyncpg.Connection, run_cli: Cli
) -> None:
    await referrer_and_referee(db, settings)
    await feed(db, settings, bill.subscription_created("other", "s-other", "chat", T0))

    async def payee_set(*argv: str) -> str:
        ran = await run_cli("payee", "set", *argv)
        assert ran.status == 2, ran
        return ran.err.strip()

    assert await payee_set("--referrer", "nobody", "--payee", "p") == (
        "error: account nobody is not known (no billing event seen for it)"
    )
    assert await payee_set("--referrer", "ref-1", "--referee", "other", "--payee", "p") == (
        "error: account other was not referred by anyone "
        "(no subscription of it carried a known code)"
    )
    assert await payee_set("--referrer", "other", "--referee", "referee-1", "--payee", "p") == (
        "error: account referee-1 was referred by ref-1, not by other"
    )
    assert await payee_set("--referrer", "ref-1", "--payee", "  ") == (
        "error: the payee is empty; give who receives the cash"
    )
    await decide(db, "referee-1", "due", date(2026, 6, 2))
    assert await payee_set("--referrer", "ref-1", "--referee", "referee-1", "--payee", "p") == (
        "error: payout already decided on 2026-06-02 (due); payee can't change"
    )
    assert await audit_rows(db) == []


# --- partner -------------------------------------------------------------------------------


async def test_partner_set_and_unset_recompute_undecided_referrals(
    settings: Settings, db: asyncpg.Connection, run_cli: Cli
) -> None:
    # referee-1 has not paid yet: the flag as it is now counts. paid-1 first paid in
    # March 2026, so its eligible_on (2026-06-01) passed before today's flag.
    code = await referrer_and_referee(db, settings, paid=False)
    await referrer_and_referee(db, settings, "paid-1")
    await feed(
        db,
        settings,
        bill.subscription_created("decided", "s-decided", "voice_assistant", T0, code=code),
    )
    await decide(db, "decided", "forfeited", date(2026, 6, 2))
    assert await referral(db, "referee-1") == ("pending", None)

    ran = await run_cli("partner", "set", "--account", "ref-1")

    assert ran.status == 0, ran.err
    assert ran.out.strip() == (
        "account ref-1 is now a partner: 1 undecided referrals changed, 1 decided ones unchanged"
    )
    assert await referral(db, "referee-1") == ("ineligible", "partner_ineligible")
    assert await referral(db, "paid-1") == ("qualified", None)  # flagged after eligible_on
    assert await referral(db, "decided") == ("pending", None)  # decided: frozen
    assert await db.fetchval("select is_partner from accounts where account_id = 'ref-1'")

    again = await run_cli("partner", "set", "--account", "ref-1")
    assert (again.status, again.out.strip()) == (
        0,
        "account ref-1 is already a partner; nothing changed",
    )

    ran = await run_cli("partner", "unset", "--account", "ref-1", "--actor", "carol")
    assert ran.status == 0, ran.err
    assert await referral(db, "referee-1") == ("pending", None)
    assert [
        (a["actor"], a["action"], a["subject"], a["details"]) for a in await audit_rows(db)
    ] == [
        ("support-alice", "partner.set", "ref-1", {"referrals_changed": 1, "decided_unchanged": 1}),
        ("carol", "partner.unset", "ref-1", {"referrals_changed": 1, "decided_unchanged": 1}),
    ]

    unknown = await run_cli("partner", "set", "--account", "nobody")
    assert unknown.status == 2
    assert "account nobody is not known (no billing event seen for it)" in unknown.err


# --- actor ---------------------------------------------------------------------------------


async def test_an_empty_actor_is_refused(
    settings: Settings, db: asyncpg.Connection, run_cli: Cli
) -> None:
    await feed(db, settings, bill.subscription_created("ref-1", "s-ref-1", "chat", T0))
    ran = await run_cli("code", "rotate", "--account", "ref-1", "--actor", " ")
    assert ran.status == 2
    assert "who is doing this? pass --actor NAME or set REFERRALS_ACTOR" in ran.err
    assert await audit_rows(db) == []


# --- list ----------------------------------------------------------------------------------


async def test_list_shows_every_referral_with_its_dates_and_amounts(
    settings: Settings, db: asyncpg.Connection, run_cli: Cli
) -> None:
    code = await referrer_and_referee(db, settings)
    t = T0 + timedelta(days=2)
    await feed(
        db,
        settings,
        bill.subscription_created("pend", "s-pend", "voice_assistant", t, code=code),
        bill.subscription_created("chatty", "s-chatty", "chat", t, code=code),
        bill.subscription_created(
            "old-client", "s-old", "virtual_receptionist", t, code=code, first_time_client=False
        ),
        bill.subscription_created("paid-out", "s-paid", "virtual_receptionist", t, code=code),
        bill.invoice_paid("paid-out", "s-paid", "i-paid", 100, t),
    )
    await decide(db, "paid-out", "due", date(2026, 6, 2))

    ran = await run_cli("list", "--referrer", "ref-1", "--format", "json")

    assert ran.status == 0, ran.err
    page = json.loads(ran.out)
    assert page["account_id"] == "ref-1"
    assert page["code"] == code
    assert page["link"] == codes.link(settings.referral_link_base, codes.normalise(code))
    lines = {line["referee_account_id"]: line for line in page["referrals"]}
    first_paid = T0 + timedelta(days=1)
    eligible = calendar.eligible_on(first_paid, settings.tz)
    assert lines["referee-1"] == {
        "referee_account_id": "referee-1",
        "plan_family": "virtual_receptionist",
        "plans": ["virtual_receptionist"],
        "status": "qualified",
        "reason": None,
        "amount_cents": 100_000,
        "currency": "USD",
        "referral_code": code,
        "referred_on": "2026-03-03",
        "first_payment_on": "2026-03-03",
        "eligible_on": eligible.isoformat(),
        "pay_by": calendar.pay_by(eligible).isoformat(),
        "decided": False,
        "payout_status": None,
        "paid_on": None,
    }
    assert (lines["pend"]["status"], lines["pend"]["amount_cents"]) == ("pending", 20_000)
    assert lines["pend"]["eligible_on"] is None
    assert (lines["chatty"]["plan_family"], lines["chatty"]["plans"]) == (None, ["chat"])
    assert lines["chatty"]["amount_cents"] == 0
    assert (lines["old-client"]["status"], lines["old-client"]["reason"]) == (
        "ineligible",
        "existing_client",
    )
    assert lines["old-client"]["amount_cents"] == 0
    assert {
        k: lines["paid-out"][k]
        for k in ("status", "amount_cents", "pay_by", "decided", "payout_status", "paid_on")
    } == {
        "status": "due",
        "amount_cents": 100_000,
        "pay_by": "2026-06-22",
        "decided": True,
        "payout_status": "due",
        "paid_on": None,
    }

    table = await run_cli("list", "--referrer", "ref-1")
    assert table.status == 0, table.err
    text = table.out.splitlines()
    assert text[0] == f"referrals of ref-1 (code {code}, {page['link']})"
    header = text[2]
    assert header.split() == [
        "REFEREE",
        "PLAN",
        "STATUS",
        "REASON",
        "AMOUNT",
        "CODE",
        "REFERRED",
        "FIRST_PAID",
        "ELIGIBLE_ON",
        "PAY_BY",
    ]
    rows = {line.split()[0]: line for line in text[3:8]}
    assert "$1,000.00" in rows["referee-1"] and "$200.00" in rows["pend"]
    # Columns are aligned: every row has its status under STATUS, amount ending under AMOUNT.
    for line in rows.values():
        assert line[header.index("STATUS")] != " "
        end = header.index("AMOUNT") + len("AMOUNT") - 1
        assert line[end] == "0" and line[end + 1] == " "
    assert text[-1] == "5 referrals: 1 due, 1 ineligible, 2 pending, 1 qualified"


async def test_list_of_nothing_and_of_an_unknown_account(
    settings: Settings, db: asyncpg.Connection, run_cli: Cli
) -> None:
    await feed(db, settings, bill.subscription_created("lonely", "s-lonely", "chat", T0))
    empty = await run_cli("list", "--referrer", "lonely")
    assert (empty.status, empty.out.strip()) == (0, "no referrals for lonely")
    unknown = await run_cli("list", "--referrer", "nobody")
    assert unknown.status == 2
    assert unknown.err.strip() == (
        "error: account nobody is not known (no billing event seen for it)"
    )
    bad_format = await run_cli("list", "--referrer", "lonely", "--format", "xml")
    assert bad_format.status == 2


async def test_every_support_command_needs_only_the_database_url(
    settings: Settings,
    db: asyncpg.Connection,
    run_cli: Cli,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "KAFKA_SECURITY_PROTOCOL"):
        monkeypatch.delenv(name, raising=False)
    code = await referrer_and_referee(db, settings)
    legacy_csv = tmp_path / "legacy.csv"
    legacy_csv.write_text(LEGACY + "ref-1,old-friend,1500\n")
    for argv in (
        ["migrate"],
        ["list", "--referrer", "ref-1"],
        ["payee", "set", "--referrer", "ref-1", "--payee", "ref-1-owner"],
        ["partner", "set", "--account", "ref-1"],
        ["partner", "unset", "--account", "ref-1"],
        ["code", "rotate", "--account", "ref-1"],
        ["code", "revoke", "--code", code],
        ["legacy", "import", str(legacy_csv), "--dry-run"],
    ):
        ran = await run_cli(*argv)
        assert (ran.status, ran.err) == (0, ""), argv


# --- legacy import -------------------------------------------------------------------------


LEGACY = "referrer_account_id,referee_account_id,monthly_credit_cents\n"


async def test_legacy_import_backfills_paid_invoices_once_and_is_idempotent(
    settings: Settings, db: asyncpg.Connection, run_cli: Cli, tmp_path: Path
) -> None:
    await feed(
        db,
        settings,
        bill.subscription_created("old-referee", "s-o", "chat", T0),
        bill.invoice_paid("old-referee", "s-o", "inv-1", 4900, T0),
        bill.invoice_paid("old-referee", "s-o", "inv-0", 0, T0),  # nothing paid: no credit
        bill.invoice_paid("old-referee", "s-o", "inv-2", 4900, T0 + timedelta(days=30)),
        # Before the credit start: the old system credited it.
        bill.invoice_paid("old-referee", "s-o", "inv-feb", 4900, T0 - timedelta(days=20)),
    )
    csv_file = tmp_path / "legacy.csv"
    csv_file.write_text(LEGACY + "old-referrer,old-referee,500\nold-referrer,not-seen-yet,700\n")

    # The old system did not credit these (credits start at --credit-from).
    ran = await run_cli("legacy", "import", str(csv_file), "--credit-from", "2026-03-01")

    assert ran.status == 0, ran.err
    assert ran.out.strip() == (
        f"imported {csv_file}: 2 rows, 2 new, 0 already imported; "
        "2 credits for invoices already paid since 2026-03-01"
    )
    imported = await db.fetch(
        "select referee_account_id, referrer_account_id, monthly_credit_cents, currency, "
        "imported_by from legacy_referrals order by 1"
    )
    assert [tuple(r) for r in imported] == [
        ("not-seen-yet", "old-referrer", 700, "USD", "support-alice"),
        ("old-referee", "old-referrer", 500, "USD", "support-alice"),
    ]
    credits = await outbox(db, settings.topics.credit_earned)
    assert sorted(c["data"]["invoice_id"] for c in credits) == ["inv-1", "inv-2"]
    assert credits[0]["key"] == b"old-referrer"
    assert credits[0]["data"] == {
        "referrer_account_id": "old-referrer",
        "referee_account_id": "old-referee",
        "invoice_id": credits[0]["data"]["invoice_id"],
        "amount_cents": 500,
        "currency": "USD",
    }
    [audit] = await audit_rows(db)
    assert (audit["action"], audit["subject"]) == ("legacy.import", str(csv_file))
    assert audit["details"] == {
        "file": str(csv_file),
        "rows": 2,
        "new": 2,
        "already_imported": 0,
        "credits_backfilled": 2,
        "credit_from": "2026-03-01T00:00:00-08:00",
        "kept_credit_from": [],
    }

    again = await run_cli("legacy", "import", str(csv_file), "--credit-from", "2026-03-01")
    assert again.status == 0, again.err
    assert again.out.strip() == (
        f"imported {csv_file}: 2 rows, 0 new, 2 already imported; "
        "0 credits for invoices already paid since 2026-03-01"
    )
    assert len(await outbox(db, settings.topics.credit_earned)) == 2

    # Another credit start changes nothing already imported either, and says so.
    earlier = await run_cli("legacy", "import", str(csv_file), "--credit-from", "2026-01-01")
    assert earlier.status == 0, earlier.err
    assert earlier.out.strip().splitlines() == [
        f"imported {csv_file}: 2 rows, 0 new, 2 already imported; "
        "0 credits for invoices already paid since 2026-01-01",
        "2 already imported keep the credit start they were imported with, not 2026-01-01:",
        "  old-referee: credited from 2026-03-01",
        "  not-seen-yet: credited from 2026-03-01",
    ]
    assert len(await outbox(db, settings.topics.credit_earned)) == 2
    stored = {r["credit_from"] for r in await db.fetch("select credit_from from legacy_referrals")}
    assert stored == {datetime(2026, 3, 1, 8, tzinfo=UTC)}

    # Invoices after the import are credited by the consumer, once.
    await feed(
        db, settings, bill.invoice_paid("old-referee", "s-o", "inv-3", 4900, T0 + timedelta(60))
    )
    assert await db.fetchval("select count(*) from legacy_credits") == 3
    assert len(await outbox(db, settings.topics.credit_earned)) == 3


async def test_legacy_import_credit_from_skips_earlier_invoices(
    settings: Settings, db: asyncpg.Connection, run_cli: Cli, tmp_path: Path
) -> None:
    await feed(
        db,
        settings,
        bill.subscription_created("r", "s-r", "chat", T0),
        # April 1 in UTC, still March 31 in the program time zone (Los Angeles): not credited
        bill.invoice_paid("r", "s-r", "before", 100, datetime(2026, 4, 1, 6, 30, tzinfo=UTC)),
        bill.invoice_paid("r", "s-r", "after", 100, datetime(2026, 4, 1, 7, 30, tzinfo=UTC)),
    )
    csv_file = tmp_path / "l.csv"
    csv_file.write_text("referrer,referee,monthly_credit_cents,currency\nq,r,300,USD\n")

    ran = await run_cli("legacy", "import", str(csv_file), "--credit-from", "2026-04-01")

    assert ran.status == 0, ran.err
    assert [c["data"]["invoice_id"] for c in await outbox(db, settings.topics.credit_earned)] == [
        "after"
    ]


async def test_legacy_import_credits_from_today_by_default(
    settings: Settings, db: asyncpg.Connection, run_cli: Cli, tmp_path: Path
) -> None:
    """The old system credited every invoice before the import: none of those again."""
    now = datetime.now(UTC)
    today = now.astimezone(settings.tz).date()
    start_of_today = datetime.combine(today, datetime.min.time(), tzinfo=settings.tz)
    await feed(
        db,
        settings,
        bill.subscription_created("r", "s-r", "chat", T0),
        bill.invoice_paid("r", "s-r", "long-ago", 100, T0),
        bill.invoice_paid("r", "s-r", "yesterday", 100, start_of_today - timedelta(minutes=1)),
        bill.invoice_paid("r", "s-r", "today", 100, start_of_today + timedelta(minutes=1)),
    )
    csv_file = tmp_path / "l.csv"
    csv_file.write_text(LEGACY + "q,r,300\n")

    ran = await run_cli("legacy", "import", str(csv_file))

    assert ran.status == 0, ran.err
    assert ran.out.strip().endswith(
        f"1 credits for invoices already paid since {today.isoformat()}"
    ), ran.out
    assert [c["data"]["invoice_id"] for c in await outbox(db, settings.topics.credit_earned)] == [
        "today"
    ]
    [audit] = await audit_rows(db)
    assert audit["details"]["credit_from"] == start_of_today.isoformat()
    help_text = await run_cli("legacy", "import", "--help")
    assert "Default: today in PROGRAM_TIMEZONE" in " ".join(help_text.out.split())


async def test_legacy_import_dry_run_shows_rows_and_credits_and_writes_nothing(
    settings: Settings, db: asyncpg.Connection, run_cli: Cli, tmp_path: Path
) -> None:
    await feed(
        db,
        settings,
        bill.subscription_created("old-referee", "s-o", "chat", T0),
        bill.invoice_paid("old-referee", "s-o", "inv-1", 4900, T0),
        bill.invoice_paid("old-referee", "s-o", "inv-2", 4900, T0 + timedelta(days=30)),
    )
    csv_file = tmp_path / "legacy.csv"
    csv_file.write_text(LEGACY + "old-referrer,old-referee,500\nold-referrer,not-seen-yet,700\n")
    before = await db.fetchval("select count(*) from outbox")

    ran = await run_cli(
        "legacy", "import", str(csv_file), "--dry-run", "--credit-from", "2026-03-15"
    )

    assert ran.status == 0, ran.err
    assert ran.out.strip().splitlines() == [
        f"dry run, nothing written: would import {csv_file}: 2 rows, 2 new, 0 already "
        "imported; 1 credits for invoices already paid since 2026-03-15",
        "  import: referee old-referee of referrer old-referrer, $5.00 a month (line 2)",
        "  import: referee not-seen-yet of referrer old-referrer, $7.00 a month (line 3)",
        "  credit: invoice inv-2 of old-referee -> old-referrer $5.00",
    ]
    assert await db.fetchval("select count(*) from legacy_referrals") == 0
    assert await db.fetchval("select count(*) from legacy_credits") == 0
    assert await db.fetchval("select count(*) from outbox") == before
    assert await audit_rows(db) == []

    # The real import then does exactly that.
    done = await run_cli("legacy", "import", str(csv_file), "--credit-from", "2026-03-15")
    assert done.status == 0, done.err
    assert "2 rows, 2 new, 0 already imported; 1 credits" in done.out
    assert await db.fetchval("select count(*) from legacy_credits") == 1


async def test_list_shows_legacy_referrals_and_their_credits_beside_cash_ones(
    settings: Settings, db: asyncpg.Connection, run_cli: Cli, tmp_path: Path
) -> None:
    await feed(
        db,
        settings,
        bill.subscription_created("ref-1", "s-ref", "virtual_receptionist", T0),
        bill.subscription_created("old-referee", "s-o", "chat", T0),
    )
    code = await active_code(db, "ref-1")
    await feed(
        db,
        settings,
        bill.subscription_created("cash-referee", "s-c", "voice_assistant", T0, code=code),
    )
    csv_file = tmp_path / "legacy.csv"
    csv_file.write_text(LEGACY + "ref-1,old-referee,500\nref-1,quiet,700\nlegacy-only,x,100\n")
    assert (await run_cli("legacy", "import", str(csv_file))).status == 0
    # Two invoices paid after the import, credited by the consumer.
    later = datetime.now(UTC) + timedelta(minutes=1)
    await feed(
        db,
        settings,
        bill.invoice_paid("old-referee", "s-o", "inv-a", 4900, later),
        bill.invoice_paid("old-referee", "s-o", "inv-b", 4900, later + timedelta(days=1)),
    )

    ran = await run_cli("list", "--referrer", "ref-1", "--format", "json")
    assert ran.status == 0, ran.err
    page = json.loads(ran.out)
    assert [line["referee_account_id"] for line in page["referrals"]] == ["cash-referee"]
    today = datetime.now(settings.tz).date().isoformat()
    assert page["legacy"] == [
        {
            "referee_account_id": "old-referee",
            "program": "legacy_credit",
            "monthly_credit_cents": 500,
            "currency": "USD",
            "imported_on": today,
            "credits": 2,
            "credited_cents": 1000,
        },
        {
            "referee_account_id": "quiet",
            "program": "legacy_credit",
            "monthly_credit_cents": 700,
            "currency": "USD",
            "imported_on": today,
            "credits": 0,
            "credited_cents": 0,
        },
    ]

    table = await run_cli("list", "--referrer", "ref-1")
    assert table.status == 0, table.err
    text = table.out.strip().splitlines()
    assert text[0].startswith("referrals of ref-1")
    assert any(line.startswith("cash-referee") for line in text)
    legacy_at = text.index("legacy referrals (monthly account credit, not cash)")
    assert text[legacy_at + 2].split() == [
        "REFEREE",
        "MONTHLY_CREDIT",
        "IMPORTED",
        "CREDITS",
        "CREDITED",
    ]
    assert text[legacy_at + 3].split() == ["old-referee", "$5.00", today, "2", "$10.00"]
    assert text[legacy_at + 4].split() == ["quiet", "$7.00", today, "0", "$0.00"]
    assert text[-1] == "2 legacy referrals: 2 credits, $10.00 credited in total"

    # A referrer known only from the legacy file is listed too.
    only = await run_cli("list", "--referrer", "legacy-only")
    assert only.status == 0, only.err
    assert only.out.startswith("no cash referrals for legacy-only")
    assert "1 legacy referrals: 0 credits, $0.00 credited in total" in only.out


async def test_legacy_import_is_all_or_nothing_with_line_numbers(
    settings: Settings, db: asyncpg.Connection, run_cli: Cli, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(LEGACY + "a,b,500\na,c,10.50\nd,d,100\n")

    ran = await run_cli("legacy", "import", str(bad))

    assert ran.status == 2
    assert ran.err.splitlines() == [
        "error: 2 problems, nothing was imported:",
        f"  {bad}: line 3: monthly_credit_cents '10.50' is not a whole number: "
        "cents are integers (for 10.50 write 1050)",
        f"  {bad}: line 4: referrer and referee are the same account (d); "
        "nobody earns for referring themselves",
    ]
    assert await db.fetchval("select count(*) from legacy_referrals") == 0
    assert await audit_rows(db) == []


async def test_legacy_import_refuses_a_referee_imported_differently(
    settings: Settings, db: asyncpg.Connection, run_cli: Cli, tmp_path: Path
) -> None:
    first = tmp_path / "first.csv"
    first.write_text(LEGACY + "a,b,500\n")
    assert (await run_cli("legacy", "import", str(first))).status == 0
    second = tmp_path / "second.csv"
    second.write_text(LEGACY + "a,new,100\nz,b,500\n")

    ran = await run_cli("legacy", "import", str(second))

    assert ran.status == 2
    assert "line 3: referee b already has a legacy referral from a at 500 USD cents a month" in (
        ran.err
    )
    assert "by support-alice); remove the row or fix it" in ran.err
    assert await db.fetchval("select count(*) from legacy_referrals") == 1


async def test_legacy_import_refuses_a_referee_with_a_cash_referral(
    settings: Settings, db: asyncpg.Connection, run_cli: Cli, tmp_path: Path
) -> None:
    """One reward per referee, ever: nothing is imported, and every such row is listed."""
    await referrer_and_referee(db, settings, "cash-1")
    await referrer_and_referee(db, settings, "cash-2", paid=False)
    await decide(db, "cash-1", "due", date(2026, 6, 2))
    csv_file = tmp_path / "legacy.csv"
    csv_file.write_text(LEGACY + "old,fine,500\nold,cash-1,500\nold,cash-2,300\n")

    ran = await run_cli("legacy", "import", str(csv_file))

    assert ran.status == 2
    assert ran.err.splitlines() == [
        "error: 2 problems, nothing was imported:",
        "  line 3: referee cash-1 already has a cash referral from ref-1 (status due); "
        "one reward per referee: remove the row",
        "  line 4: referee cash-2 already has a cash referral from ref-1 (status pending); "
        "one reward per referee: remove the row",
    ]
    assert await db.fetchval("select count(*) from legacy_referrals") == 0
    assert await db.fetchval("select count(*) from legacy_credits") == 0
    assert [a["action"] for a in await audit_rows(db)] == []
    dry = await run_cli("legacy", "import", str(csv_file), "--dry-run")
    assert dry.status == 2 and "cash-1 already has a cash referral" in dry.err


async def test_legacy_import_file_problems(
    settings: Settings, db: asyncpg.Connection, run_cli: Cli, tmp_path: Path
) -> None:
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes(LEGACY.encode() + "José,b,100\n".encode("latin-1"))
    ran = await run_cli("legacy", "import", str(latin1))
    assert ran.status == 2
    assert "line 2: not UTF-8 text (byte 0xE9); save the file as CSV UTF-8" in ran.err

    header = tmp_path / "header.csv"
    header.write_text("from,to,amount\na,b,1\n")
    ran = await run_cli("legacy", "import", str(header))
    assert ran.status == 2
    assert "line 1: wrong header (missing referrer_account_id" in ran.err

    missing = await run_cli("legacy", "import", str(tmp_path / "nope.csv"))
    assert missing.status == 2
    assert missing.err.strip() == f"error: {tmp_path / 'nope.csv'}: no such file"
    assert await db.fetchval("select count(*) from legacy_referrals") == 0


# --- end to end on the broker --------------------------------------------------------------


async def test_rotation_and_revocation_with_the_running_consumer(
    settings: Settings, db: asyncpg.Connection, run_cli: Cli
) -> None:
    async def subscriptions(n: int) -> bool:
        return bool(await db.fetchval("select count(*) from subscriptions") >= n)

    async with running_consumer(settings), producer(settings) as p:
        await bill.publish(p, settings.topics, [bill.subscription_created("ref", "s", "chat", T0)])
        await wait_for(lambda: subscriptions(1))
        first = await active_code(db, "ref")
        assert (await run_cli("code", "rotate", "--account", "ref")).status == 0
        second = await active_code(db, "ref")
        assert (await run_cli("code", "revoke", "--code", second)).status == 0
        third = await active_code(db, "ref")
        t = datetime.now(UTC) + timedelta(days=1)  # signed up after the revocation
        await bill.publish(
            p,
            settings.topics,
            [
                bill.subscription_created("by-alias", "s-a", "voice_assistant", t, code=first),
                bill.subscription_created("by-revoked", "s-r", "voice_assistant", t, code=second),
                bill.subscription_created("by-active", "s-n", "voice_assistant", t, code=third),
            ],
        )
        await wait_for(lambda: subscriptions(4))
        announced = await read_topic(settings, settings.topics.code_assigned, expect=6)
    outcomes = {
        r["account_id"]: (r["code_outcome"], r["referrer_account_id"])
        for r in await db.fetch("select * from subscriptions")
    }
    assert outcomes["by-alias"] == ("known", "ref")
    assert outcomes["by-revoked"] == ("revoked", None)
    assert outcomes["by-active"] == ("known", "ref")
    assert sorted(r["referee_account_id"] for r in await db.fetch("select * from referrals")) == [
        "by-active",
        "by-alias",
    ]
    chain = {
        (m.json()["data"]["code"], m.json()["data"]["replaces"])
        for m in announced
        if m.key == b"ref"
    }
    assert chain == {
        (codes.display(first), None),
        (codes.display(second), codes.display(first)),
        (codes.display(third), codes.display(second)),
    }

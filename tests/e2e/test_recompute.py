"""Rules changed -> undecided referrals recomputed: `referrals migrate` and `referrals recompute`.

Real Postgres, the real console script. Billing facts go in through the consumer's own
batch transaction; the old ruling is then written over the referral row as the code of
an earlier release wrote it: a partner flag set after ``eligible_on`` used to make the
referral ``partner_ineligible`` (today a flag counts only from the instant it was set).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime
from typing import Any

import asyncpg

from payout_scheduler.metrics import SchedulerMetrics
from payout_scheduler.passes import run_pass
from referral_devtools import synthetic as bill
from referral_ops import partners
from referral_program import codes
from referral_program.table import RULES_VERSION
from referral_runtime.db import create_pool
from referral_runtime.settings import Settings
from tests.e2e.harness import (
    active_code,
    apply_plan,
    batch_plan,
    referral_status,
    run_referrals,
)

VR = "virtual_receptionist"
T0 = datetime(2026, 6, 1, 17, tzinfo=UTC)
SIGNED_UP = datetime(2026, 7, 8, 17, tzinfo=UTC)
PAID = datetime(2026, 7, 9, 18, tzinfo=UTC)  # eligible_on 2026-10-01, in the past


async def _feed(db: asyncpg.Connection, settings: Settings, *events: dict[str, Any]) -> None:
    await apply_plan(db, settings, batch_plan(settings, *events))


async def _old_rulings(db: asyncpg.Connection, settings: Settings) -> None:
    """A partner's referees as an earlier release left them: ``late-partner`` undecided and
    ruled partner_ineligible by the flag set today; ``decided`` the same, already decided;
    ``plain`` referred by someone else, unaffected."""
    await _feed(
        db,
        settings,
        bill.subscription_created("ref-p", "ref-p-s", VR, T0),
        bill.subscription_created("ref-q", "ref-q-s", VR, T0),
    )
    partner = codes.display(await active_code(db, "ref-p"))
    other = codes.display(await active_code(db, "ref-q"))
    for referee, code in (("late-partner", partner), ("decided", partner), ("plain", other)):
        await _feed(
            db,
            settings,
            bill.subscription_created(referee, f"{referee}-s", VR, SIGNED_UP, code=code),
            bill.invoice_paid(referee, f"{referee}-s", f"{referee}-i1", 19900, PAID),
        )
    # Support flags ref-p today, long after eligible_on: under the rules of this release it
    # changes nothing ...
    await partners.set_partner(db, "ref-p", True, actor="support-bob", tz=settings.tz)
    assert await referral_status(db, "late-partner") == ("qualified", None)
    # ... but the release before recomputed with the flag as it is now.
    await db.execute(
        """update referrals set status = 'ineligible', reason = 'partner_ineligible'
           where referee_account_id in ('late-partner', 'decided')"""
    )
    row = await db.fetchrow("select * from referrals where referee_account_id = 'decided'")
    await db.execute(
        """insert into payouts (referral_id, payout_id, outcome, reason, referrer_account_id,
               referee_account_id, payee, amount_cents, currency, first_payment_at,
               eligible_on, pay_by, as_of)
           values ($1, gen_random_uuid(), 'ineligible', 'partner_ineligible', 'ref-p',
                   'decided', 'ref-p', 0, 'USD', $2, '2026-10-01', '2026-10-21', '2026-10-02')""",
        row["referral_id"],
        row["first_payment_at"],
    )


async def test_migrate_recomputes_an_old_ruling_once_and_the_referral_is_then_paid(
    settings: Settings, db: asyncpg.Connection
) -> None:
    await _old_rulings(db, settings)
    assert await db.fetchval("select count(*) from rules_installed") == 0

    done = await asyncio.to_thread(run_referrals, settings, "migrate")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "database is up to date",
        f"rules version {RULES_VERSION} installed (was no recorded version): recomputed 2 "
        f"undecided referrals under rules version {RULES_VERSION}: 1 changed "
        "(ineligible/partner_ineligible -> qualified: 1)",
    ]
    assert await referral_status(db, "late-partner") == ("qualified", None)
    assert await referral_status(db, "plain") == ("qualified", None)
    # A decision is history: the decided referral keeps its ruling and its payout.
    assert await referral_status(db, "decided") == ("ineligible", "partner_ineligible")
    assert await db.fetchval(
        "select outcome from payouts where referee_account_id = 'decided'"
    ) == ("ineligible")
    installed = await db.fetchrow("select * from rules_installed")
    assert (
        installed["version"],
        installed["referrals_examined"],
        installed["referrals_changed"],
    ) == (
        RULES_VERSION,
        2,
        1,
    )

    # Once per rules version: the next migrate leaves the rows alone.
    await db.execute(
        "update referrals set reason = 'partner_ineligible', status = 'ineligible'"
        " where referee_account_id = 'plain'"
    )
    again = await asyncio.to_thread(run_referrals, settings, "migrate")
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == ["database is up to date"]
    assert await referral_status(db, "plain") == ("ineligible", "partner_ineligible")
    await db.execute(
        "update referrals set reason = null, status = 'qualified' where referee_account_id = 'plain'"
    )

    # Decided on the recomputed ruling: paid.
    pool = await create_pool(settings.database_url, size=2)
    try:
        decided = await run_pass(pool, settings, date(2026, 10, 2), SchedulerMetrics())
    finally:
        await pool.close()
    assert decided.count("due") == 2
    assert (
        await db.fetchval("select outcome from payouts where referee_account_id = 'late-partner'")
        == "due"
    )


async def test_two_migrations_at_once_recompute_once(
    settings: Settings, db: asyncpg.Connection
) -> None:
    await _old_rulings(db, settings)
    runs = await asyncio.gather(
        asyncio.to_thread(run_referrals, settings, "migrate"),
        asyncio.to_thread(run_referrals, settings, "migrate"),
    )
    assert [r.returncode for r in runs] == [0, 0], [r.stderr for r in runs]
    installed = [r for r in runs if "installed" in r.stdout]
    assert len(installed) == 1, [r.stdout for r in runs]
    assert await referral_status(db, "late-partner") == ("qualified", None)
    assert await db.fetchval("select count(*) from rules_installed") == 1


async def test_recompute_dry_run_shows_the_change_and_writes_nothing_then_the_real_run(
    settings: Settings, db: asyncpg.Connection
) -> None:
    await _old_rulings(db, settings)
    before = await db.fetch("select * from referrals order by referee_account_id")

    dry = await asyncio.to_thread(
        run_referrals, settings, "recompute", "--dry-run", "--actor", "support-alice"
    )
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines() == [
        f"dry run, nothing written: recomputed 2 undecided referrals under rules version "
        f"{RULES_VERSION}: 1 would change (ineligible/partner_ineligible -> qualified: 1)",
        "  referee late-partner (referrer ref-p): ineligible/partner_ineligible -> qualified",
    ]
    assert await db.fetch("select * from referrals order by referee_account_id") == before
    assert (
        await db.fetchval("select count(*) from audit_log where action = 'referrals.recompute'")
        == 0
    )

    nobody = await asyncio.to_thread(run_referrals, settings, "recompute", "--actor", " ")
    assert nobody.returncode == 2 and "--actor" in nobody.stderr
    assert await referral_status(db, "late-partner") == ("ineligible", "partner_ineligible")

    real = await asyncio.to_thread(run_referrals, settings, "recompute", "--actor", "support-alice")
    assert real.returncode == 0, real.stderr
    assert real.stdout.splitlines() == [
        f"recomputed 2 undecided referrals under rules version {RULES_VERSION}: 1 changed "
        "(ineligible/partner_ineligible -> qualified: 1)",
        "  referee late-partner (referrer ref-p): ineligible/partner_ineligible -> qualified",
    ]
    assert await referral_status(db, "late-partner") == ("qualified", None)
    assert await referral_status(db, "decided") == ("ineligible", "partner_ineligible")
    audit = await db.fetchrow(
        "select actor, subject, details::text as details from audit_log"
        " where action = 'referrals.recompute'"
    )
    assert (audit["actor"], audit["subject"]) == ("support-alice", f"rules v{RULES_VERSION}")
    assert '"changed": 1' in audit["details"] and '"examined": 2' in audit["details"]

    settled = await asyncio.to_thread(
        run_referrals, settings, "recompute", "--actor", "support-alice"
    )
    assert settled.stdout.splitlines() == [
        f"recomputed 2 undecided referrals under rules version {RULES_VERSION}: 0 changed"
    ]


async def test_migrate_to_rules_version_2_frees_public_mail_and_forgets_unattributed_sign_ups(
    settings: Settings, db: asyncpg.Connection
) -> None:
    """Version 2 of the rules: public mail domains from the maintained list (two clients of
    yahoo.co.uk are not one company) and revocation by business time (migration 0008 takes
    the referrer off sign-ups made after a revoke). The upgrade's recompute frees the first
    and removes the undecided referral row of the second."""
    await _feed(
        db,
        settings,
        bill.subscription_created("alice", "alice-s", VR, T0, email="alice@yahoo.co.uk"),
        bill.subscription_created("carol", "carol-s", VR, T0),
    )
    alice = codes.display(await active_code(db, "alice"))
    carol = codes.display(await active_code(db, "carol"))
    await _feed(
        db,
        settings,
        bill.subscription_created(
            "bob", "bob-s", VR, SIGNED_UP, code=alice, email="bob@yahoo.co.uk"
        ),
        bill.invoice_paid("bob", "bob-s", "bob-i1", 19900, PAID),
        bill.subscription_created("dave", "dave-s", VR, SIGNED_UP, code=carol),
    )
    assert await referral_status(db, "bob") == ("qualified", None)
    # As version 1 left them: yahoo.co.uk was a private domain, and dave's sign-up was
    # attributed although carol's code had been revoked before it (0008 has since taken
    # the referrer off the sign-up; the referral row stayed).
    await db.execute(
        "insert into rules_installed (version, referrals_examined, referrals_changed)"
        " values (1, 0, 0)"
    )
    await db.execute(
        """update referrals set status = 'ineligible', reason = 'same_email_domain'
           where referee_account_id = 'bob'"""
    )
    await db.execute(
        """update subscriptions set referrer_account_id = null, code_outcome = 'revoked'
           where subscription_id = 'dave-s'"""
    )
    assert RULES_VERSION == 2

    done = await asyncio.to_thread(run_referrals, settings, "migrate")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "database is up to date",
        "rules version 2 installed (was version 1): recomputed 2 undecided referrals under rules "
        "version 2: 2 changed (ineligible/same_email_domain -> qualified: 1, pending -> none: 1)",
    ]
    assert await referral_status(db, "bob") == ("qualified", None)
    assert (
        await db.fetchval("select count(*) from referrals where referee_account_id = 'dave'") == 0
    )

"""Concurrency by account: batches on disjoint accounts overlap, a referee and its referrer never interleave.

Two real transactions on the real Postgres, the first held open: what the second
does meanwhile shows which locks the batch takes (``referral_state.lock_for_writing``).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from referral_consumer.plan import BatchPlan
from referral_consumer.store import apply_batch
from referral_devtools import synthetic as bill
from referral_runtime.db import connect
from referral_runtime.referral_state import Outbound
from referral_runtime.settings import Settings
from tests.e2e.harness import active_code, apply_plan, batch_plan, referral_status

T0 = datetime(2027, 1, 4, 17, 0, tzinfo=UTC)
#: Long enough that a transaction that does not wait finishes well within it.
BLOCKED_FOR = 1.5


@pytest.fixture
async def second(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(database_url)
    yield conn
    await conn.close()


async def _second_waits_for_first(
    db: asyncpg.Connection,
    second: asyncpg.Connection,
    settings: Settings,
    first: BatchPlan,
    then: BatchPlan,
    interleaved: str,
) -> None:
    """``first`` in a transaction held open; ``then`` must wait for its commit."""
    holder = db.transaction()
    await holder.start()
    await apply_batch(db, first, Outbound.from_settings(settings), secrets.randbits, tz=settings.tz)
    waiting = asyncio.create_task(apply_plan(second, settings, then))
    await asyncio.sleep(BLOCKED_FOR)
    assert not waiting.done(), interleaved
    await holder.commit()
    await asyncio.wait_for(waiting, 30)


async def _referrers(db: asyncpg.Connection, settings: Settings, *accounts: str) -> dict[str, str]:
    await apply_plan(
        db,
        settings,
        batch_plan(
            settings,
            *(bill.subscription_created(a, f"{a}-s", "virtual_receptionist", T0) for a in accounts),
        ),
    )
    return {a: await active_code(db, a) for a in accounts}


def _firm_subscription(subscription_id: str, at: datetime) -> dict[str, Any]:
    return bill.subscription_created(
        "ref-p", subscription_id, "chat", at, organization_id="org-p", email="a@p-firm.test"
    )


async def test_a_referee_batch_waits_for_a_batch_changing_its_referrer_and_sees_its_facts(
    settings: Settings, db: asyncpg.Connection, second: asyncpg.Connection
) -> None:
    codes = await _referrers(db, settings, "ref-p")
    later = T0 + timedelta(days=3)
    referrer_change = batch_plan(
        settings,
        bill.subscription_created("ref-p", "ref-p-s2", "chat", later, organization_id="org-shared"),
    )
    referee_signup = batch_plan(
        settings,
        bill.subscription_created(
            "referee-r",
            "referee-r-s",
            "virtual_receptionist",
            later,
            code=codes["ref-p"],
            organization_id="org-shared",
        ),
        bill.invoice_paid("referee-r", "referee-r-s", "inv-r-1", 9900, later),
    )

    await _second_waits_for_first(
        db,
        second,
        settings,
        referrer_change,
        referee_signup,
        "the referee's batch ran while its referrer was being changed",
    )

    # Interleaved, each would have missed the other's uncommitted subscription.
    assert await referral_status(db, "referee-r") == ("ineligible", "same_organization")


async def test_a_referrer_change_waits_for_a_batch_recomputing_its_referee(
    settings: Settings, db: asyncpg.Connection, second: asyncpg.Connection
) -> None:
    codes = await _referrers(db, settings, "ref-p")
    later = T0 + timedelta(days=3)
    referee_signup = batch_plan(
        settings,
        bill.subscription_created(
            "referee-r",
            "referee-r-s",
            "virtual_receptionist",
            later,
            code=codes["ref-p"],
            email="owner@acme.test",
        ),
    )
    referrer_change = batch_plan(
        settings,
        bill.subscription_created("ref-p", "ref-p-s2", "chat", later, email="boss@acme.test"),
    )

    await _second_waits_for_first(
        db,
        second,
        settings,
        referee_signup,
        referrer_change,
        "the referrer changed while its referee was being recomputed",
    )

    assert await referral_status(db, "referee-r") == ("ineligible", "same_email_domain")


async def test_batches_of_disjoint_accounts_and_referees_of_one_referrer_run_at_once(
    settings: Settings, db: asyncpg.Connection, second: asyncpg.Connection
) -> None:
    codes = await _referrers(db, settings, "ref-p")
    await apply_plan(db, settings, batch_plan(settings, _firm_subscription("ref-p-s2", T0)))
    later = T0 + timedelta(days=3)

    def signup(referee: str) -> BatchPlan:
        return batch_plan(
            settings,
            bill.subscription_created(
                referee, f"{referee}-s", "virtual_receptionist", later, code=codes["ref-p"]
            ),
            bill.invoice_paid(referee, f"{referee}-s", f"{referee}-i", 9900, later),
        )

    holder = db.transaction()
    await holder.start()
    await apply_batch(
        db, signup("referee-a"), Outbound.from_settings(settings), secrets.randbits, tz=settings.tz
    )
    # Another referee of the same referrer, and the referrer's own invoice: neither waits.
    await asyncio.wait_for(apply_plan(second, settings, signup("referee-b")), BLOCKED_FOR)
    own_invoice = batch_plan(
        settings, bill.invoice_paid("ref-p", "ref-p-s", "inv-p-1", 9900, later)
    )
    await asyncio.wait_for(apply_plan(second, settings, own_invoice), BLOCKED_FOR)
    # A new subscription of the referrer with no fact it did not have already: nothing
    # its referees are compared with changes, so it does not wait for them either.
    same_facts = batch_plan(settings, _firm_subscription("ref-p-s3", later))
    await asyncio.wait_for(apply_plan(second, settings, same_facts), BLOCKED_FOR)
    await holder.commit()

    assert await referral_status(db, "referee-a") == ("qualified", None)
    assert await referral_status(db, "referee-b") == ("qualified", None)

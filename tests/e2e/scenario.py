"""A reproducible mixed billing stream for end-to-end tests: referrers, referees, churn, noise."""

from __future__ import annotations

import random
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from referral_devtools import synthetic as bill
from referral_program import codes
from referral_runtime.db import connect
from referral_runtime.settings import Settings
from tests.conftest import create_database, create_topics, wait_for
from tests.e2e.harness import producer, running_consumer

T0 = datetime(2027, 1, 4, 16, tzinfo=UTC)
FAMILIES = ["virtual_receptionist", "voice_assistant", "chat", "outreach_campaign"]


def referrer_events(n: int) -> list[dict[str, Any]]:
    return [
        bill.subscription_created(
            f"R{i}", f"R{i}-s", "virtual_receptionist", T0,
            email=f"owner{i}@firm{i}.com", organization_id=f"org{i}", payment_fingerprint=f"fp{i}",
            event_id=f"00000000-0000-4000-8000-{i:012d}",
        )
        for i in range(n)
    ]  # fmt: skip


def referee_events(
    seed: int, referees: int, codes: Mapping[str, str], *, invoices_each: int = 4
) -> list[dict[str, Any]]:
    """Events for ``referees`` accounts; ``codes`` maps referrer account -> its code in this run.
    Event ids derive from the seed, so two runs publish the same logical events."""
    rng = random.Random(seed)
    uid = random.Random(seed + 1)

    def eid() -> str:
        return f"{uid.getrandbits(32):08x}-0000-4000-8000-{uid.getrandbits(48):012x}"

    referrers = sorted(codes)
    events: list[dict[str, Any]] = []
    for n in range(referees):
        account = f"A{n}"
        at = T0 + timedelta(hours=rng.randrange(1, 24 * 60))
        referrer = rng.choice(referrers)
        roll = rng.random()
        code = codes[referrer] if roll < 0.7 else ("ZZZZ-ZZZZ" if roll < 0.75 else None)
        family = rng.choice(FAMILIES)
        ineligible = rng.random() < 0.1
        index = referrer[1:]
        events.append(
            bill.subscription_created(
                account, f"{account}-s", family, at, code=code,
                organization_id=f"org{index}" if ineligible else f"org-{account}",
                email=f"x@{account.lower()}.example", event_id=eid(),
            )
        )  # fmt: skip
        for k in range(invoices_each):
            cents = 0 if k == 0 else rng.choice([4900, 9900, 19900])
            events.append(
                bill.invoice_paid(account, f"{account}-s", f"{account}-i{k}", cents,
                                  at + timedelta(days=30 * k), event_id=eid())
            )  # fmt: skip
        if rng.random() < 0.2:
            events.append(
                bill.subscription_cancelled(
                    account, f"{account}-s", at + timedelta(days=45), event_id=eid()
                )
            )
    rng.shuffle(events)  # cross-topic order is not guaranteed anyway
    return events


STATE_QUERIES = {
    "referrals": """select referee_account_id, referrer_account_id, subscription_id, attributed_at,
                           status, reason, first_payment_at, first_payment_invoice_id
                    from referrals order by referee_account_id""",
    "inbox": "select event_id from inbox order by event_id",
    "subscriptions": """select subscription_id, account_id, code_outcome, referrer_account_id
                        from subscriptions order by subscription_id""",
    "invoices": "select invoice_id, account_id, amount_paid_cents from invoices order by invoice_id",
    "cancellations": "select event_id, effective_at from cancellations order by event_id",
    "accounts": "select account_id from accounts order by account_id",
    "dead_letters": "select reason, count(*) from dead_letters group by reason order by reason",
    "active_codes_per_account": """select count(*) filter (where n <> 1) from
                                   (select account_id, count(*) n from referral_codes
                                    where status = 'active' group by account_id) t""",
}


async def state_of(conn: Any) -> dict[str, list[tuple[Any, ...]]]:
    """The observable state, minus what is random per run (codes) or timing (updated_at)."""
    return {name: [tuple(r) for r in await conn.fetch(q)] for name, q in STATE_QUERIES.items()}


# -- the stream through the real broker, and a reference run of it -------------------------

REFERRERS = 50
REFEREES = 4000  # ~ 20k events


async def _referrer_codes(conn: asyncpg.Connection) -> dict[str, str]:
    rows = await conn.fetch("select account_id, code from referral_codes where status = 'active'")
    return {
        r["account_id"]: codes.display(r["code"]) for r in rows if r["account_id"].startswith("R")
    }


async def inbox_count(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("select count(*) from inbox"))


async def published_stream(settings: Settings, conn: asyncpg.Connection) -> int:
    """Referrers first (to learn their codes), then the referee stream; returns the event count."""
    async with producer(settings) as p:
        await bill.publish(p, settings.topics, referrer_events(REFERRERS))
        async with running_consumer(settings):
            await wait_for(at_least(conn, REFERRERS), timeout=60)
        events = referee_events(7, REFEREES, await _referrer_codes(conn))
        await bill.publish(p, settings.topics, events)
    return REFERRERS + len({e["event_id"] for e in events})


def at_least(conn: asyncpg.Connection, n: int):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        return await inbox_count(conn) >= n

    return check


async def reference_state(stack: Any, settings: Any) -> dict[str, list[tuple[Any, ...]]]:
    """The state the stream leaves when one consumer reads it without interruption, in a
    database, topics and group of its own (the same logical events as ``settings``' run)."""
    ref_url = await create_database(stack, f"ref{uuid.uuid4().hex[:8]}")
    ref_topics = settings.topics.model_copy(
        update={f: f"ref-{getattr(settings.topics, f)}" for f in type(settings.topics).model_fields}
    )
    await create_topics(stack, ref_topics.all, partitions=4)
    ref_settings = settings.model_copy(
        update={
            "database_url": ref_url,
            "topics": ref_topics,
            "consumer_group": settings.consumer_group + "-ref",
        }
    )
    ref_conn = await connect(ref_url)
    total = await published_stream(ref_settings, ref_conn)
    async with running_consumer(ref_settings):
        await wait_for(at_least(ref_conn, total), timeout=120)
    expected = await state_of(ref_conn)
    await ref_conn.close()
    return expected

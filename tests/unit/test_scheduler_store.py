"""The scheduler's store and pass on the real Postgres: locking, idempotence, catch-up, gauges."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from uuid import UUID
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from payout_scheduler import store
from payout_scheduler.metrics import SchedulerMetrics
from payout_scheduler.passes import catch_up, refresh_due_soon, refresh_overdue, run_pass
from referral_devtools.seed import seed
from referral_events import PayoutDue
from referral_program.decisions import (
    ChunkDecisions,
    FactRows,
    Ruling,
    decidable_before,
    decide_rows,
)
from referral_runtime.db import connect, create_pool
from referral_runtime.outbox import OutboxMessage, enqueue
from referral_runtime.settings import Settings

LA = ZoneInfo("America/Los_Angeles")
AS_OF = date(2027, 4, 2)  # eligible_on 2027-04-01 + 1 settle day
E = datetime(2027, 4, 1, 7, tzinfo=UTC)


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(settings.database_url, size=3)
    yield pool
    await pool.close()


def small_batches(settings: Settings) -> Settings:
    return settings.model_copy(update={"scheduler_batch": 25})


def sample(metrics: SchedulerMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def mixed_referrals(db: asyncpg.Connection) -> None:
    """500 referrals, 120 decidable on AS_OF: 98 due, 10 forfeited, 12 ineligible."""
    await seed(db, 500, 120, AS_OF, tz=LA, referrers=50)
    referees = [f"seed-a{g}" for g in range(20)]
    await db.execute(
        """update referrals set status = 'ineligible', reason = 'same_organization'
           where referee_account_id = any($1::text[])""",
        referees[:10],
    )
    # A second cancellation for seed-a13 (it has one taking effect after E already).
    await db.execute(
        """insert into cancellations (event_id, subscription_id, account_id, cancelled_at,
               effective_at)
           select gen_random_uuid(), subscription_id, referee_account_id, $2, $3
           from referrals where referee_account_id = any($1::text[])""",
        referees[10:],
        E - timedelta(days=10),
        E - timedelta(days=1),
    )
    await db.execute(
        "update accounts set is_partner = true, partner_periods = '{(,)}' where account_id = 'seed-r20'"
    )
    # Flagged before eligible_on whatever today's date (the trigger stamps now()).
    await db.execute(
        """update accounts set partner_periods = '{["2027-01-01 00:00+00",)}'
           where account_id = 'seed-r20'"""
    )
    await db.execute(
        "update referrals set payee = 'override' where referee_account_id = 'seed-a51'"
    )


async def test_a_pass_decides_every_decidable_referral_once(
    settings: Settings, db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    await mixed_referrals(db)
    metrics = SchedulerMetrics(CollectorRegistry())
    settings = small_batches(settings)

    early = await run_pass(pool, settings, AS_OF - timedelta(days=1), metrics)
    assert early.total == 0
    result = await run_pass(pool, settings, AS_OF, metrics)
    again = await run_pass(pool, settings, AS_OF, metrics)

    assert dict(result.decided) == {
        ("due", ""): 98,
        ("forfeited", "cancelled_before_eligibility"): 10,
        ("ineligible", "same_organization"): 10,
        ("ineligible", "partner_ineligible"): 2,
    }
    assert result.completed and result.chunks >= 120 // 25
    assert again.total == 0
    outbox = await db.fetch("select topic, key, payload from outbox order by id")
    assert len(outbox) == 98
    assert {r["topic"] for r in outbox} == {settings.topics.payout_due}
    payees = {
        r["referee_account_id"]: r["payee"]
        for r in await db.fetch(
            """select referee_account_id, payee from payouts
               where referee_account_id = any('{seed-a50,seed-a51,seed-a52}'::text[])"""
        )
    }
    assert payees == {"seed-a50": "seed-payee-0", "seed-a51": "override", "seed-a52": "seed-r2"}
    first = json.loads(outbox[0]["payload"])
    assert outbox[0]["key"] == first["data"]["referrer_account_id"].encode()
    assert first["event_id"] == first["data"]["payout_id"]
    assert (first["data"]["eligible_on"], first["data"]["pay_by"]) == ("2027-04-01", "2027-04-21")
    passes = await db.fetch("select as_of, decided from scheduler_passes order by as_of")
    assert [tuple(p) for p in passes] == [(AS_OF - timedelta(days=1), 0), (AS_OF, 120)]

    assert sample(metrics, "referrals_scheduler_decisions_total", outcome="due", reason="") == 98
    assert sample(
        metrics, "referrals_scheduler_cash_due_cents_total", plan_family="voice_assistant"
    ) + sample(
        metrics, "referrals_scheduler_cash_due_cents_total", plan_family="virtual_receptionist"
    ) == await db.fetchval("select sum(amount_cents) from payouts where outcome = 'due'")
    assert sample(metrics, "referrals_scheduler_pass_duration_seconds_count") == 3
    assert sample(metrics, "referrals_scheduler_last_success_timestamp_seconds") > 0


async def test_payouts_are_in_the_program_currency_whatever_the_referee_is_billed_in(
    settings: Settings, db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    await seed(db, 6, 6, AS_OF, tz=LA)
    await db.execute("update subscriptions set currency = 'CAD'")
    await db.execute("update referrals set currency = 'CAD'")
    metrics = SchedulerMetrics(CollectorRegistry())
    result = await run_pass(pool, settings, AS_OF, metrics)
    assert result.count("due") == 6
    rows = await db.fetch("select plan_family, amount_cents, currency from payouts")
    assert {(r["amount_cents"], r["currency"]) for r in rows} <= {(100_000, "USD"), (20_000, "USD")}
    payloads = [json.loads(r[0]) for r in await db.fetch("select payload from outbox")]
    assert len(payloads) == 6
    assert {p["data"]["currency"] for p in payloads} == {"USD"}


async def test_a_partner_flag_counts_from_the_instant_it_was_set(
    settings: Settings, db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    await seed(db, 3, 3, AS_OF, tz=LA, referrers=3)
    referrers = {
        r["referee_account_id"]: r["referrer_account_id"]
        for r in await db.fetch("select referee_account_id, referrer_account_id from referrals")
    }
    periods = {  # referee -> its referrer's partner periods
        "seed-a0": "{[2027-04-01 07:00+00,)}",  # set at the first instant of eligible_on
        "seed-a1": "{[2027-03-01 00:00+00,2027-04-01 07:00+00)}",  # unset at it: too late
        "seed-a2": "{[2027-03-01 00:00+00,2027-04-01 06:59+00)}",  # unset just before
    }
    await db.execute(
        "update accounts set is_partner = true, partner_periods = '{(,)}' where account_id = $1",
        referrers["seed-a0"],
    )
    for referee, value in periods.items():
        await db.execute(
            "update accounts set partner_periods = $2::text::tstzmultirange where account_id = $1",
            referrers[referee],
            value,
        )
    result = await run_pass(pool, settings, AS_OF, SchedulerMetrics(CollectorRegistry()))
    assert result.total == 3
    decided = dict(
        await db.fetch("select referee_account_id, coalesce(reason, outcome) from payouts")
    )
    assert decided == {"seed-a0": "due", "seed-a1": "partner_ineligible", "seed-a2": "due"}


async def test_locked_referrals_are_left_to_the_transaction_that_holds_them(
    settings: Settings, db: asyncpg.Connection
) -> None:
    await seed(db, 100, 60, AS_OF, tz=LA)
    bound = decidable_before(AS_OF, LA, 1)
    ids = await store.decidable_ids(db, bound, store.FIRST_KEY, 1000)
    assert len(ids) == 60 and ids == sorted(ids)
    other = await connect(settings.database_url)
    try:
        async with other.transaction():
            held = await store.lock_decidable(other, ids[:20], bound)
            free = await store.lock_decidable(db, ids, bound)
        assert list(dict.fromkeys(held.referral_id)) == ids[:20]
        assert list(dict.fromkeys(free.referral_id)) == ids[20:]
    finally:
        await other.close()


async def test_the_lock_query_reads_a_referral_as_one_row_per_subscription_and_cancellation(
    settings: Settings, db: asyncpg.Connection
) -> None:
    """The rows decide_rows expects: a referral's rows adjacent, one per (qualifying
    subscription, cancellation of it), its own columns on each, other families left out."""
    await seed(db, 3, 3, AS_OF, tz=LA)
    a0, a1 = "seed-a0", "seed-a1"
    await db.execute(
        """insert into subscriptions (subscription_id, account_id, event_id, created_at,
               plan_family, plan_id, currency, first_time_client, code_outcome)
           values ('extra-va', $1, gen_random_uuid(), $2, 'voice_assistant', 'va', 'USD', true,
                   'none'),
                  ('extra-chat', $1, gen_random_uuid(), $2, 'chat', 'chat', 'USD', true, 'none')""",
        a0,
        E - timedelta(days=40),
    )
    await db.execute(
        """insert into cancellations (event_id, subscription_id, account_id, cancelled_at,
               effective_at)
           values (gen_random_uuid(), 'extra-va', $1, $2, $3),
                  (gen_random_uuid(), 'extra-va', $1, $4, $5)""",
        a0,
        E - timedelta(days=9),
        E - timedelta(days=1),
        E - timedelta(days=8),
        E + timedelta(days=1),
    )
    await db.execute("delete from subscriptions where account_id = $1", a1)
    bound = decidable_before(AS_OF, LA, 1)
    ids = await store.decidable_ids(db, bound, store.FIRST_KEY, 10)
    rows = await store.lock_decidable(db, ids, bound)
    by_referee: dict[str, list[tuple[object, ...]]] = {}
    for i, referee in enumerate(rows.referee_account_id):
        by_referee.setdefault(referee, []).append(
            (
                rows.subscription_id[i],
                rows.plan_family[i],
                rows.cancelled_at[i],
                rows.effective_at[i],
            )
        )
    seeded = "seed-s0"
    assert sorted(by_referee[a0], key=str) == sorted(
        [
            (
                seeded,
                await db.fetchval(
                    "select plan_family from subscriptions where subscription_id = $1", seeded
                ),
                None,
                None,
            ),
            ("extra-va", "voice_assistant", E - timedelta(days=9), E - timedelta(days=1)),
            ("extra-va", "voice_assistant", E - timedelta(days=8), E + timedelta(days=1)),
        ],
        key=str,
    )
    assert by_referee[a1] == [(None, None, None, None)]
    assert len(by_referee["seed-a2"]) == 1
    # Adjacent, in referral order, and the referral's own columns repeated on each row.
    assert rows.referral_id == sorted(rows.referral_id)
    first = rows.referee_account_id.index(a0)
    assert set(rows.first_payment_at[first : first + 3]) == {rows.first_payment_at[first]}
    decided = decide_rows(rows, AS_OF, LA, currency="USD")
    assert len(decided.row) == 3


async def _seed_and_decide(db: asyncpg.Connection, n: int) -> tuple[FactRows, ChunkDecisions]:
    """Seed ``n`` referrals due on ``AS_OF``; read their facts as a pass would and decide them."""
    await seed(db, n, n, AS_OF, tz=LA)
    bound = decidable_before(AS_OF, LA, 1)
    facts = await store.lock_decidable(
        db, await store.decidable_ids(db, bound, store.FIRST_KEY, n), bound
    )
    return facts, decide_rows(facts, AS_OF, LA, currency="USD")


def first(decided: ChunkDecisions, n: int) -> ChunkDecisions:
    return ChunkDecisions(
        decided.rulings,
        decided.row[:n],
        decided.ruling[:n],
        decided.payout_id[:n],
        decided.payee[:n],
    )


async def test_a_recorded_decision_is_never_replaced_nor_announced_twice(
    settings: Settings, db: asyncpg.Connection
) -> None:
    facts, decided = await _seed_and_decide(db, 10)
    topic = settings.topics.payout_due
    ids = [facts.referral_id[row] for row in decided.row]
    assert await store.record_decisions(db, facts, first(decided, 4), AS_OF, topic, LA) == set(
        ids[:4]
    )
    later = AS_OF + timedelta(days=9)
    assert await store.record_decisions(db, facts, decided, later, topic, LA) == set(ids[4:])
    as_of: dict[UUID, date] = {
        r["referral_id"]: r["as_of"]
        for r in await db.fetch("select referral_id, as_of from payouts")
    }
    assert {as_of[i] for i in ids[:4]} == {AS_OF}
    # One message per due decision, keyed by the referrer, carrying the decision.
    messages = await db.fetch("select key, payload from outbox where topic = $1", topic)
    assert len(messages) == len(ids) == 10
    by_id = {d.payout_id: d for d in (decided.decision(k, facts) for k in range(10))}
    referrer = {
        decided.payout_id[k]: facts.referrer_account_id[row] for k, row in enumerate(decided.row)
    }
    for row in messages:
        event = PayoutDue.model_validate_json(row["payload"])
        d = by_id[event.event_id]
        assert row["key"] == referrer[str(d.payout_id)].encode()
        assert (event.data.amount_cents, event.data.payee) == (d.amount_cents, d.payee)


async def test_every_decision_is_recorded_with_its_own_columns_whatever_the_mix(
    settings: Settings, db: asyncpg.Connection
) -> None:
    """The statement sends each distinct ruling once, a payee only where it is not the
    referrer, and a message only for a due decision: each row must still get exactly its own."""
    facts, base = await _seed_and_decide(db, 12)
    later = (date(2027, 5, 1), date(2027, 5, 21))
    due = base.rulings[base.ruling[0]]
    variants = [
        {},
        {"plan_family": "voice_assistant", "amount_cents": 20_000},
        {"payee": "acct-finance-desk"},
        {"outcome": "forfeited", "reason": "cancelled_before_eligibility",
         "plan_family": None, "amount_cents": 0},
        {"outcome": "ineligible", "reason": "same_email_domain", "plan_family": None,
         "amount_cents": 0},
        {"outcome": "ineligible", "reason": "partner_ineligible", "plan_family": None,
         "amount_cents": 0, "payee": "acct-partner-payee"},
        {"eligible_on": later[0], "pay_by": later[1]},
    ]  # fmt: skip
    rulings: list[Ruling] = []
    decided = ChunkDecisions(rulings, list(base.row), [], list(base.payout_id), [])
    for k, row in enumerate(base.row):
        variant = dict(variants[k % len(variants)])
        # The seed's referrers name a payee; every other decision here pays the referrer itself.
        payee = variant.pop("payee", facts.referrer_account_id[row] if k % 2 else base.payee[k])
        ruling = due._replace(**variant)
        if ruling not in rulings:
            rulings.append(ruling)
        decided.ruling.append(rulings.index(ruling))
        decided.payee.append(payee)
    assert len(decided.row) == 12
    assert {
        p == facts.referrer_account_id[row]
        for p, row in zip(decided.payee, decided.row, strict=True)
    } == {
        True,
        False,
    }
    recorded = await store.record_decisions(
        db, facts, decided, AS_OF, settings.topics.payout_due, LA
    )
    assert recorded == {facts.referral_id[row] for row in decided.row}
    rows = {
        r["referral_id"]: r
        for r in await db.fetch(
            "select referral_id, payout_id, outcome, reason, payee, plan_family, amount_cents,"
            " currency, eligible_on, pay_by, referrer_account_id, referee_account_id,"
            " first_payment_at from payouts"
        )
    }
    for k, row in enumerate(decided.row):
        d = decided.decision(k, facts)
        stored = rows[d.referral_id]
        assert tuple(stored)[1:10] == (
            d.payout_id, d.outcome, d.reason, d.payee, d.plan_family, d.amount_cents,
            d.currency, d.eligible_on, d.pay_by,
        )  # fmt: skip
        assert tuple(stored)[10:] == (
            facts.referrer_account_id[row],
            facts.referee_account_id[row],
            d.first_payment_at,
        )
    due_decisions = {
        d.payout_id: d
        for d in (decided.decision(k, facts) for k in range(12))
        if d.outcome == "due"
    }
    messages = await db.fetch("select payload from outbox")
    assert sorted(PayoutDue.model_validate_json(m["payload"]).event_id for m in messages) == sorted(
        due_decisions
    )
    for m in messages:
        event = PayoutDue.model_validate_json(m["payload"]).data
        d = due_decisions[event.payout_id]
        assert (event.payee, event.plan_family, event.amount_cents, event.pay_by) == (
            d.payee,
            d.plan_family,
            d.amount_cents,
            d.pay_by,
        )


async def test_catch_up_runs_a_pass_for_every_missed_day(
    settings: Settings, db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    await seed(db, 50, 30, AS_OF, tz=LA)
    await store.record_pass(db, date(2027, 3, 29), 0)
    metrics = SchedulerMetrics(CollectorRegistry())

    results = await catch_up(pool, settings, date(2027, 4, 4), metrics)

    assert [r.as_of for r in results] == [date(2027, 3, 30) + timedelta(days=n) for n in range(6)]
    assert {r.as_of: r.total for r in results if r.total} == {AS_OF: 30}
    assert await db.fetchval("select max(as_of) from scheduler_passes") == date(2027, 4, 4)
    # Up to date: the next catch-up runs today's pass only.
    assert [r.as_of for r in await catch_up(pool, settings, date(2027, 4, 4), metrics)] == [
        date(2027, 4, 4)
    ]


async def test_catch_up_without_history_runs_todays_pass(
    settings: Settings, db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    await seed(db, 50, 30, AS_OF, tz=LA)
    results = await catch_up(pool, settings, date(2027, 4, 20), SchedulerMetrics())
    assert [(r.as_of, r.total) for r in results] == [(date(2027, 4, 20), 30)]


async def test_due_soon_counts_unpublished_payouts_close_to_pay_by(
    settings: Settings, db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    topic = settings.topics.payout_due

    def due(pay_by: str) -> OutboxMessage:
        payload = {"event_type": "payout.due", "data": {"pay_by": pay_by}}
        return OutboxMessage(topic, b"k", json.dumps(payload).encode())

    await enqueue(
        db,
        [
            due("2027-04-20"),  # overdue
            due("2027-04-27"),  # 3rd business day after Thu 2027-04-22 (Fri, Mon, Tue)
            due("2027-04-28"),  # 4th: not yet
            due("2027-04-22"),  # published below
            OutboxMessage(settings.topics.dlq, b"k", b"\xff\xfe not json"),
        ],
    )
    await db.execute(
        """update outbox set published_at = now()
           where convert_from(payload, 'UTF8') like '%2027-04-22%' and topic = $1""",
        topic,
    )
    metrics = SchedulerMetrics()
    assert await refresh_due_soon(pool, settings, date(2027, 4, 22), metrics) == 2
    assert sample(metrics, "referrals_scheduler_due_soon") == 2


async def test_overdue_counts_referrals_left_undecided_past_settle_and_grace(
    settings: Settings, db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    await mixed_referrals(db)  # 120 decidable on AS_OF (eligible_on 2027-04-01, settle 1)
    settings = settings.model_copy(update={"payout_grace_days": 2})
    metrics = SchedulerMetrics(CollectorRegistry())
    late = AS_OF + timedelta(days=2)  # eligible_on + settle + grace

    assert await refresh_overdue(pool, settings, late - timedelta(days=1), metrics) == 0
    assert await refresh_overdue(pool, settings, late, metrics) == 120
    assert sample(metrics, "referrals_scheduler_overdue_undecided") == 120
    await run_pass(pool, settings, AS_OF, metrics)
    assert await refresh_overdue(pool, settings, late, metrics) == 0
    assert sample(metrics, "referrals_scheduler_overdue_undecided") == 0


async def test_a_pass_stopped_between_chunks_is_not_recorded(
    settings: Settings, db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    import asyncio

    await seed(db, 100, 100, AS_OF, tz=LA)
    stopping = asyncio.Event()
    stopping.set()
    result = await run_pass(
        pool, small_batches(settings), AS_OF, SchedulerMetrics(), stopping=stopping
    )
    assert not result.completed
    assert await db.fetchval("select count(*) from scheduler_passes") == 0
    assert isinstance(await store.last_pass(db), type(None))


def test_first_key_is_below_every_uuid() -> None:
    assert UUID(int=0) == store.FIRST_KEY

"""One batch, one transaction: inbox, facts, recomputed referrals, outbox.

Every statement is set-based (arrays + ``unnest``), so a batch of thousands of
events costs about a dozen round trips; the arrays come ready-made from the
batch's :class:`~referral_consumer.plan.BatchPlan`. Row locks on the accounts the
batch touches (``referral_state.lock_for_writing``)
order it against any transaction that writes the same accounts or what their
referrals read; batches of disjoint accounts run at the same time.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import asyncpg

from referral_consumer.ingest import DeadLetter, Parsed
from referral_consumer.plan import (
    INSERT_CANCELLATIONS,
    INSERT_INBOX,
    INSERT_INVOICES,
    INSERT_SUBSCRIPTIONS,
    REPEATED_SUBSCRIPTIONS,
    UNKNOWN_REFERENCES,
    BatchPlan,
)
from referral_program import codes
from referral_runtime.db import Conn
from referral_runtime.dead_letters import record_dead_letters
from referral_runtime.outbox import OutboxMessage, enqueue
from referral_runtime.referral_state import (
    Outbound,
    code_assigned_message,
    credit_earned_message,
    lock_for_writing,
    recompute_referrals,
)

#: A batch of fewer events is planned statement by statement, for its own arrays and the
#: tables as they are now (``plan_cache_mode = force_custom_plan`` for its transaction,
#: the function's statements included). After five calls Postgres may settle on a generic
#: plan, chosen while the tables were small (a hash of the whole table), and a small
#: batch would then cost more as the tables grow; planning costs ~0.05 ms a statement,
#: which a small batch pays gladly. A large batch keeps Postgres's default: planned for
#: thousands of ids from missing or stale statistics, its statements hashed whole tables
#: and the consumer drained 6-11 % slower (BENCHMARKS.md, "Per-batch cost").
PLAN_EACH_STATEMENT_BELOW = 1000

#: ``subscriptions.code_outcome`` values that attribute nothing and are counted.
_CODES_THAT_ATTRIBUTE_NOTHING = frozenset({"unknown", "malformed", "revoked"})


@dataclass(frozen=True)
class SubscriptionConflict:
    """A ``subscription.created`` that contradicts the subscription already recorded."""

    parsed: Parsed
    subscription_id: str
    differs: tuple[str, ...]  # the event's fields that differ (names, never values)


@dataclass
class BatchResult:
    """What a committed batch did, for metrics and logs."""

    applied: Counter[tuple[str, str]] = field(default_factory=Counter)  # (topic, type)
    duplicates: Counter[tuple[str, str]] = field(default_factory=Counter)
    dead_lettered: Counter[tuple[str, str]] = field(default_factory=Counter)  # (topic, reason)
    unknown_codes: Counter[str] = field(default_factory=Counter)
    #: Applied invoices/cancellations whose account or subscription is unknown at apply time.
    unknown_references: Counter[tuple[str, str]] = field(default_factory=Counter)  # (type, kind)
    #: Applied billing events in a currency other than the program's, by that currency.
    foreign_currency: Counter[str] = field(default_factory=Counter)
    #: Free text cut or cleaned in applied events: (event type, field, action).
    free_text: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    attributions: Counter[tuple[str, str]] = field(default_factory=Counter)  # (status, reason)
    #: ``subscription.created`` for a subscription already recorded under another event id
    #: (both counted as duplicates): the conflicting ones, recorded in subscription_conflicts,
    #: with the fields that differ, and how many said the same again.
    subscription_conflicts: list[SubscriptionConflict] = field(default_factory=list)
    subscriptions_resent: int = 0
    codes_assigned: int = 0
    credits: int = 0
    applied_events: list[Parsed] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)


async def apply_batch(
    conn: Conn,
    plan: BatchPlan,
    out: Outbound,
    randbits: Callable[[int], int],
    *,
    tz: ZoneInfo,
) -> BatchResult:
    """Apply a planned batch inside the caller's transaction; idempotent under redelivery.

    Fact rows are sent for every event of the plan, new or redelivered: each
    table's key makes a redelivered event's rows a no-op (``on conflict do
    nothing``), so only what follows from the events (recomputations,
    metrics) waits for the inbox's answer.
    """
    result = BatchResult()
    outbox: list[OutboxMessage] = []
    if len(plan.events) < PLAN_EACH_STATEMENT_BELOW:
        await conn.execute("set local plan_cache_mode = force_custom_plan")
    new_accounts = await _insert_accounts(conn, plan)
    created = plan.created
    changed = await lock_for_writing(
        conn,
        plan.accounts,
        created.compared_facts(),
        [c for c in created.referral_code if c is not None],
    )
    claimed = await _claim_inbox(conn, plan, result)
    outbox += await _assign_codes(conn, new_accounts, out, randbits, result)
    inserted = await _insert_subscriptions(conn, plan, result)
    repeated = await _repeated_subscriptions(conn, plan, claimed, inserted, result)
    new_invoices = await _insert_invoices(conn, plan)
    new_cancellations = (
        await conn.fetch(INSERT_CANCELLATIONS, *plan.cancellation_columns) if plan.cancelled else []
    )
    await _count_unknown_references(conn, new_invoices, new_cancellations, result)
    for p in result.applied_events:
        if p.foreign_currency:
            result.foreign_currency[p.foreign_currency] += 1
        for amendment in p.amended:
            result.free_text[(p.event.event_type, *amendment)] += 1
    outbox += await _legacy_credits(conn, new_invoices, out, result)
    fresh = [
        (account, compared)
        for account, event_id, compared in zip(
            created.account_id, created.event_id, created.compared, strict=True
        )
        if event_id in claimed and event_id not in repeated
    ]
    touched = sorted({a for a, _ in fresh} | await _payments_that_matter(conn, new_invoices))
    referrers_changed = sorted({a for a, compared in fresh if compared} & changed)
    result.attributions.update(await recompute_referrals(conn, touched, referrers_changed, tz=tz))
    outbox += await _dead_letters(conn, plan.dead, out, result)
    await enqueue(conn, outbox)
    return result


async def _claim_inbox(conn: Conn, plan: BatchPlan, result: BatchResult) -> set[uuid.UUID]:
    """Insert the inbox rows; returns the ids of the events applied for the first time."""
    for p in plan.repeats:
        result.duplicates[(p.record.topic, p.event.event_type)] += 1
    if not plan.events:
        return set()
    rows = await conn.fetch(
        INSERT_INBOX,
        *plan.inbox_columns,
    )
    claimed = {r[0] for r in rows}
    applied, duplicates = result.applied, result.duplicates
    fresh = []
    for p in plan.events:
        key = (p.record.topic, p.event.event_type)
        if p.event.event_id in claimed:
            fresh.append(p)
            applied[key] += 1
        else:
            duplicates[key] += 1
    result.applied_events = fresh
    return claimed


async def _insert_accounts(conn: Conn, plan: BatchPlan) -> list[str]:
    """Insert the batch's accounts not seen before (in order, so inserters never deadlock)."""
    if not plan.accounts:
        return []
    rows = await conn.fetch(
        """insert into accounts (account_id) select unnest($1::text[])
           on conflict do nothing returning account_id""",
        sorted(plan.accounts),
    )
    return [r["account_id"] for r in rows]


async def _assign_codes(
    conn: Conn,
    pending: list[str],
    out: Outbound,
    randbits: Callable[[int], int],
    result: BatchResult,
) -> list[OutboxMessage]:
    """Give every account seen for the first time an active code, announced via the outbox."""
    assigned: dict[str, str] = {}
    while pending:  # a 40-bit collision is rare; retry just the colliding accounts
        proposal = {account: codes.generate(randbits) for account in pending}
        taken = await conn.fetch(
            """insert into referral_codes (code, account_id, status)
               select c, a, 'active' from unnest($1::text[], $2::text[]) as t(c, a)
               on conflict do nothing returning account_id, code""",
            list(proposal.values()),
            list(proposal.keys()),
        )
        for row in taken:
            assigned[row["account_id"]] = row["code"]
        pending = [a for a in pending if a not in assigned]
    result.codes_assigned = len(assigned)
    return [code_assigned_message(out, account, code, None) for account, code in assigned.items()]


async def _insert_subscriptions(conn: Conn, plan: BatchPlan, result: BatchResult) -> int:
    """Insert the new subscriptions, each with its code's outcome; returns how many went in.

    Counts the codes that attribute nothing, among the rows inserted now.
    """
    if not plan.created.event_id:
        return 0
    inserted = 0
    for kind, n in await conn.fetch(INSERT_SUBSCRIPTIONS, *plan.created.arrays()):
        inserted += n
        if kind in _CODES_THAT_ATTRIBUTE_NOTHING:
            result.unknown_codes[kind] += n
    return inserted


async def _repeated_subscriptions(
    conn: Conn, plan: BatchPlan, claimed: set[uuid.UUID], inserted: int, result: BatchResult
) -> set[uuid.UUID]:
    """Newly claimed ``subscription.created`` events of a subscription already recorded.

    A subscription is created once: such an event is a duplicate, and when its facts
    differ from the recorded ones it is also a conflict, recorded (the first stays).
    Returns their event ids. Costs a statement only when a claimed event inserted no
    row or the batch itself repeats a subscription, which is rare.
    """
    created, recreated = plan.created, plan.recreated
    first = [i for i, event_id in enumerate(created.event_id) if event_id in claimed]
    again = [i for i, event_id in enumerate(recreated.event_id) if event_id in claimed]
    if inserted >= len(first) and not again:
        return set()
    columns = [a + b for a, b in zip(created.rows(first), recreated.rows(again), strict=True)]
    applied = {p.event.event_id: p for p in result.applied_events}
    sources = [applied[event_id].record for event_id in columns[2]]
    rows = await conn.fetch(
        REPEATED_SUBSCRIPTIONS,
        *columns,
        [r.topic for r in sources],
        [r.partition for r in sources],
        [r.offset for r in sources],
    )
    for row in rows:
        p = applied[row["event_id"]]
        key = (p.record.topic, p.event.event_type)
        result.applied[key] -= 1
        result.duplicates[key] += 1
        if row["differs"]:
            result.subscription_conflicts.append(
                SubscriptionConflict(p, row["subscription_id"], tuple(row["differs"]))
            )
        else:
            result.subscriptions_resent += 1
    repeated = {row["event_id"] for row in rows}
    if repeated:
        result.applied_events = [
            p for p in result.applied_events if p.event.event_id not in repeated
        ]
    return repeated


async def _count_unknown_references(
    conn: Conn,
    invoices: list[asyncpg.Record],
    cancellations: list[asyncpg.Record],
    result: BatchResult,
) -> None:
    """A reference to something unknown is a business outcome, applied and counted (docs/rules.md).

    Counted once, when the invoice or cancellation is first applied, against what is
    known then: one that arrives before its account's ``subscription.created`` counts
    even though the subscription may come later (billing topics are not ordered).
    """
    rows = [("invoice.paid", r) for r in invoices] + [
        ("subscription.cancelled", r) for r in cancellations
    ]
    if not rows:
        return
    for event_type, kind, n in await conn.fetch(
        UNKNOWN_REFERENCES,
        [t for t, _ in rows],
        [r["account_id"] for _, r in rows],
        [r["subscription_id"] for _, r in rows],
    ):
        result.unknown_references[(event_type, kind)] += n


async def _insert_invoices(conn: Conn, plan: BatchPlan) -> list[asyncpg.Record]:
    if not plan.paid:
        return []
    return await conn.fetch(
        INSERT_INVOICES,
        *plan.invoice_columns,
    )


# Only invoices paid on or after the referral's credit start, however late they arrive: the
# old system credited the earlier ones.
_LEGACY_CREDITS = """
insert into legacy_credits (invoice_id, referee_account_id, referrer_account_id, amount_cents, currency)
select i.invoice_id, i.account_id, l.referrer_account_id, l.monthly_credit_cents, l.currency
from unnest($1::text[], $2::text[], $3::timestamptz[]) as i(invoice_id, account_id, paid_at)
join legacy_referrals l on l.referee_account_id = i.account_id
where i.paid_at >= l.credit_from
on conflict do nothing
returning invoice_id, referee_account_id, referrer_account_id, amount_cents, currency
"""


async def _legacy_credits(
    conn: Conn, invoices: list[asyncpg.Record], out: Outbound, result: BatchResult
) -> list[OutboxMessage]:
    """Legacy program: one ``referral.credit.earned`` per paid referee invoice from the
    referral's credit start on."""
    positive = [r for r in invoices if r["amount_paid_cents"] > 0]
    if not positive:
        return []
    rows = await conn.fetch(
        _LEGACY_CREDITS,
        [r["invoice_id"] for r in positive],
        [r["account_id"] for r in positive],
        [r["paid_at"] for r in positive],
    )
    result.credits = len(rows)
    return [credit_earned_message(out.credit_earned, row) for row in rows]


async def _payments_that_matter(conn: Conn, new_invoices: list[asyncpg.Record]) -> set[str]:
    """Referees whose state a new paid invoice can change.

    Cancellations and $0 invoices never change a referral. A paid invoice
    matters only if it could be an earlier first payment (or a tie broken by
    id), or a payment before the attribution (existing client); any later
    invoice leaves ``referral_state`` as it was, so recomputing is skipped.
    """
    paid = [r for r in new_invoices if r["amount_paid_cents"] > 0]
    if not paid:
        return set()
    current = {
        r["referee_account_id"]: r
        for r in await conn.fetch(
            """select r.referee_account_id, r.attributed_at, r.first_payment_at
               from unnest($1::text[]) as w(referee_account_id)
               join referrals r using (referee_account_id)""",
            sorted({r["account_id"] for r in paid}),
        )
    }
    matter = set()
    for invoice in paid:
        referral = current.get(invoice["account_id"])
        if referral is None:
            continue  # not referred (yet): its subscription.created will recompute
        first = referral["first_payment_at"]
        if (
            first is None
            or invoice["paid_at"] <= first
            or invoice["paid_at"] < referral["attributed_at"]
        ):
            matter.add(invoice["account_id"])
    return matter


async def _dead_letters(
    conn: Conn, dead: Sequence[DeadLetter], out: Outbound, result: BatchResult
) -> list[OutboxMessage]:
    """Record each dead letter once per source coordinate and queue it for the DLQ topic."""
    for d in dead:
        result.dead_lettered[(d.record.topic, d.reason.value)] += 1
        result.dead_letters.append(d)
    return await record_dead_letters(
        conn,
        dead,
        dlq_topic=out.dlq,
        consumer_group=out.consumer_group,
        failed_at=datetime.now(UTC),
    )

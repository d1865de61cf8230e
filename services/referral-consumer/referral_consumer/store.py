"""One batch, one transaction: inbox, facts, recomputed referrals, outbox.

Every statement is set-based (arrays + ``unnest``), so a batch of thousands of
events costs about a dozen round trips. A transaction-scoped advisory lock
serialises batch transactions across consumer replicas: referral state reads
other accounts' facts, and two concurrent recomputations could otherwise
each miss the other's uncommitted facts.
"""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg

from referral_consumer.core import codes
from referral_consumer.core.referral import (
    PUBLIC_EMAIL_DOMAINS,
    InvoiceFact,
    Referral,
    SubscriptionFact,
    attributing_subscription,
    email_domain,
    fingerprint_hash,
    referral_state,
)
from referral_consumer.ingest import DeadLetter, Parsed
from referral_events import (
    InvoicePaid,
    ReferralCodeAssigned,
    ReferralCodeAssignedData,
    ReferralCreditEarned,
    ReferralCreditEarnedData,
    SubscriptionCancelled,
    SubscriptionCreated,
)
from referrals.db import Conn
from referrals.outbox import OutboxMessage, enqueue

#: Serialises batch transactions (and support operations that recompute referrals).
REFERRAL_STATE_LOCK = 0x5EF_0001
EVENT_NAMESPACE = uuid.UUID("a7d3c1e2-4b5f-4e8a-9d0c-1f2e3d4c5b6a")


@dataclass(frozen=True)
class Outbound:
    """Topic names and link base the batch needs to build outbound events."""

    code_assigned: str
    credit_earned: str
    dlq: str
    link_base: str
    consumer_group: str


@dataclass
class BatchResult:
    """What a committed batch did, for metrics and logs."""

    applied: Counter[tuple[str, str]] = field(default_factory=Counter)  # (topic, type)
    duplicates: Counter[tuple[str, str]] = field(default_factory=Counter)
    dead_lettered: Counter[tuple[str, str]] = field(default_factory=Counter)  # (topic, reason)
    unknown_codes: Counter[str] = field(default_factory=Counter)
    attributions: Counter[tuple[str, str]] = field(default_factory=Counter)  # (status, reason)
    codes_assigned: int = 0
    credits: int = 0
    applied_events: list[Parsed] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)


async def apply_batch(
    conn: Conn,
    parsed: Sequence[Parsed],
    dead: Sequence[DeadLetter],
    out: Outbound,
    randbits: Callable[[int], int],
) -> BatchResult:
    """Apply a batch inside the caller's transaction; idempotent under redelivery."""
    result = BatchResult()
    outbox: list[OutboxMessage] = []
    await conn.execute("select pg_advisory_xact_lock($1)", REFERRAL_STATE_LOCK)

    fresh = await _claim_inbox(conn, parsed, result)
    result.applied_events = fresh
    created = [p.event for p in fresh if isinstance(p.event, SubscriptionCreated)]
    paid = [p.event for p in fresh if isinstance(p.event, InvoicePaid)]
    cancelled = [p.event for p in fresh if isinstance(p.event, SubscriptionCancelled)]

    accounts = sorted({p.event.data.account_id for p in fresh})
    outbox += await _assign_codes(conn, accounts, out, randbits, result)
    await _insert_subscriptions(conn, created, result)
    new_invoices = await _insert_invoices(conn, paid)
    await _insert_cancellations(conn, cancelled)
    outbox += await _legacy_credits(conn, new_invoices, out, result)
    touched = sorted(
        {e.data.account_id for e in created} | await _payments_that_matter(conn, new_invoices)
    )
    # A referrer's new subscription changes its referees only through what the
    # eligibility rules compare (organization, payment method, private domain).
    referrers_changed = sorted(
        {
            e.data.account_id
            for e in created
            if e.data.customer.organization_id
            or e.data.customer.payment_fingerprint
            or _private_domain_of(e.data.customer.email)
        }
    )
    await recompute_referrals(conn, touched, referrers_changed, result)
    outbox += await _dead_letters(conn, dead, out, result)
    await enqueue(conn, outbox)
    return result


async def _claim_inbox(conn: Conn, parsed: Sequence[Parsed], result: BatchResult) -> list[Parsed]:
    unique: dict[uuid.UUID, Parsed] = {}
    for p in parsed:
        if p.event.event_id in unique:
            result.duplicates[(p.record.topic, p.event.event_type)] += 1
        else:
            unique[p.event.event_id] = p
    if not unique:
        return []
    items = list(unique.values())
    rows = await conn.fetch(
        """insert into inbox (event_id, event_type, topic, "partition", "offset")
           select * from unnest($1::uuid[], $2::text[], $3::text[], $4::int[], $5::bigint[])
           on conflict do nothing
           returning event_id""",
        [p.event.event_id for p in items],
        [p.event.event_type for p in items],
        [p.record.topic for p in items],
        [p.record.partition for p in items],
        [p.record.offset for p in items],
    )
    claimed = {r["event_id"] for r in rows}
    fresh = []
    for p in items:
        key = (p.record.topic, p.event.event_type)
        if p.event.event_id in claimed:
            fresh.append(p)
            result.applied[key] += 1
        else:
            result.duplicates[key] += 1
    return fresh


async def _assign_codes(
    conn: Conn,
    accounts: list[str],
    out: Outbound,
    randbits: Callable[[int], int],
    result: BatchResult,
) -> list[OutboxMessage]:
    """Give every account seen for the first time an active code, announced via the outbox."""
    if not accounts:
        return []
    rows = await conn.fetch(
        """insert into accounts (account_id) select unnest($1::text[])
           on conflict do nothing returning account_id""",
        accounts,
    )
    pending = [r["account_id"] for r in rows]
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


def code_assigned_message(
    out: Outbound, account_id: str, code: str, replaces: str | None
) -> OutboxMessage:
    """The ``referral_code.assigned`` announcement of a code (new, or replacing ``replaces``)."""
    event = ReferralCodeAssigned(
        event_id=uuid.uuid5(EVENT_NAMESPACE, f"code-assigned:{code}"),
        occurred_at=datetime.now(UTC),
        data=ReferralCodeAssignedData(
            account_id=account_id,
            code=codes.display(code),
            link=codes.link(out.link_base, code),
            replaces=codes.display(replaces) if replaces else None,
        ),
    )
    return OutboxMessage(out.code_assigned, account_id.encode(), event.model_dump_json().encode())


async def _insert_subscriptions(
    conn: Conn, created: list[SubscriptionCreated], result: BatchResult
) -> None:
    if not created:
        return
    given = {e.event_id: codes.try_normalise(e.data.referral_code) for e in created}
    wanted = sorted({c for c in given.values() if c})
    known: dict[str, tuple[str, str]] = {}
    if wanted:
        for row in await conn.fetch(
            """select c.code, c.account_id, c.status
               from unnest($1::text[]) as w(code) join referral_codes c using (code)""",
            wanted,
        ):
            known[row["code"]] = (row["account_id"], row["status"])
    outcome: list[str] = []
    referrer: list[str | None] = []
    for e in created:
        code = given[e.event_id]
        owner = known.get(code) if code else None
        if e.data.referral_code is None or not e.data.referral_code.strip():
            outcome.append("none")
            referrer.append(None)
        elif code is None:
            outcome.append("unknown")
            referrer.append(None)
            result.unknown_codes["malformed"] += 1
        elif owner is None:
            outcome.append("unknown")
            referrer.append(None)
            result.unknown_codes["unknown"] += 1
        elif owner[1] == "revoked":
            outcome.append("revoked")
            referrer.append(None)
            result.unknown_codes["revoked"] += 1
        else:
            outcome.append("known")
            referrer.append(owner[0])
    await conn.execute(
        """insert into subscriptions (subscription_id, account_id, event_id, created_at,
               plan_family, plan_id, currency, first_time_client, referral_code, code_outcome,
               referrer_account_id, email_domain, organization_id, payment_fingerprint_hash)
           select * from unnest($1::text[], $2::text[], $3::uuid[], $4::timestamptz[],
               $5::text[], $6::text[], $7::text[], $8::bool[], $9::text[], $10::text[],
               $11::text[], $12::text[], $13::text[], $14::text[])
           on conflict do nothing""",
        [e.data.subscription_id for e in created],
        [e.data.account_id for e in created],
        [e.event_id for e in created],
        [e.occurred_at for e in created],
        [e.data.plan_family for e in created],
        [e.data.plan_id for e in created],
        [e.data.currency for e in created],
        [e.data.first_time_client for e in created],
        [given[e.event_id] for e in created],
        outcome,
        referrer,
        [email_domain(e.data.customer.email) for e in created],
        [e.data.customer.organization_id for e in created],
        [fingerprint_hash(e.data.customer.payment_fingerprint) for e in created],
    )


async def _insert_invoices(conn: Conn, paid: list[InvoicePaid]) -> list[asyncpg.Record]:
    if not paid:
        return []
    return await conn.fetch(
        """insert into invoices (invoice_id, account_id, subscription_id, event_id, paid_at,
               amount_paid_cents, discount_cents, currency)
           select * from unnest($1::text[], $2::text[], $3::text[], $4::uuid[],
               $5::timestamptz[], $6::bigint[], $7::bigint[], $8::text[])
           on conflict do nothing
           returning invoice_id, account_id, amount_paid_cents, paid_at""",
        [e.data.invoice_id for e in paid],
        [e.data.account_id for e in paid],
        [e.data.subscription_id for e in paid],
        [e.event_id for e in paid],
        [e.occurred_at for e in paid],
        [e.data.amount_paid_cents for e in paid],
        [e.data.discount_cents for e in paid],
        [e.data.currency for e in paid],
    )


async def _insert_cancellations(conn: Conn, cancelled: list[SubscriptionCancelled]) -> None:
    if not cancelled:
        return
    await conn.execute(
        """insert into cancellations (event_id, subscription_id, account_id, cancelled_at,
               effective_at, reason)
           select * from unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[],
               $5::timestamptz[], $6::text[])
           on conflict do nothing""",
        [e.event_id for e in cancelled],
        [e.data.subscription_id for e in cancelled],
        [e.data.account_id for e in cancelled],
        [e.occurred_at for e in cancelled],
        [e.data.effective_at for e in cancelled],
        [e.data.reason for e in cancelled],
    )


_LEGACY_CREDITS = """
insert into legacy_credits (invoice_id, referee_account_id, referrer_account_id, amount_cents, currency)
select i.invoice_id, i.account_id, l.referrer_account_id, l.monthly_credit_cents, l.currency
from unnest($1::text[], $2::text[]) as i(invoice_id, account_id)
join legacy_referrals l on l.referee_account_id = i.account_id
on conflict do nothing
returning invoice_id, referee_account_id, referrer_account_id, amount_cents, currency
"""


async def _legacy_credits(
    conn: Conn, invoices: list[asyncpg.Record], out: Outbound, result: BatchResult
) -> list[OutboxMessage]:
    """Legacy program: one ``referral.credit.earned`` per paid referee invoice."""
    positive = [r for r in invoices if r["amount_paid_cents"] > 0]
    if not positive:
        return []
    rows = await conn.fetch(
        _LEGACY_CREDITS, [r["invoice_id"] for r in positive], [r["account_id"] for r in positive]
    )
    result.credits = len(rows)
    return [credit_earned_message(out.credit_earned, row) for row in rows]


def credit_earned_message(topic: str, row: asyncpg.Record) -> OutboxMessage:
    """The ``referral.credit.earned`` event of one ``legacy_credits`` row."""
    event = ReferralCreditEarned(
        event_id=uuid.uuid5(EVENT_NAMESPACE, f"credit:{row['invoice_id']}"),
        occurred_at=datetime.now(UTC),
        data=ReferralCreditEarnedData(
            referrer_account_id=row["referrer_account_id"],
            referee_account_id=row["referee_account_id"],
            invoice_id=row["invoice_id"],
            amount_cents=row["amount_cents"],
            currency=row["currency"],
        ),
    )
    return OutboxMessage(
        topic, row["referrer_account_id"].encode(), event.model_dump_json().encode()
    )


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


def _private_domain_of(email: str | None) -> bool:
    domain = email_domain(email)
    return domain is not None and domain not in PUBLIC_EMAIL_DOMAINS


# Joins on unnest() rather than `= any(array)`: with thousands of ids per batch
# the planner otherwise scans the table comparing each row with the whole array.
_SUBSCRIPTION_FACTS = """
with referee as (select distinct unnest($1::text[]) as account_id),
wanted as (
    select account_id from referee
    union
    select s.referrer_account_id from referee join subscriptions s using (account_id)
    where s.referrer_account_id is not null
)
select s.subscription_id, s.account_id, s.created_at, s.plan_family, s.currency,
       s.first_time_client, s.referral_code, s.referrer_account_id, s.email_domain,
       s.organization_id, s.payment_fingerprint_hash
from wanted join subscriptions s using (account_id)
"""

_UPSERT_REFERRALS = """
insert into referrals as r (referral_id, referee_account_id, referrer_account_id, referral_code,
    subscription_id, attributed_at, status, reason, first_payment_at, first_payment_invoice_id,
    currency)
select * from unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
    $6::timestamptz[], $7::text[], $8::text[], $9::timestamptz[], $10::text[], $11::text[])
on conflict (referral_id) do update set
    referrer_account_id = excluded.referrer_account_id,
    referral_code = excluded.referral_code,
    subscription_id = excluded.subscription_id,
    attributed_at = excluded.attributed_at,
    status = excluded.status,
    reason = excluded.reason,
    first_payment_at = excluded.first_payment_at,
    first_payment_invoice_id = excluded.first_payment_invoice_id,
    currency = excluded.currency,
    updated_at = now()
where (r.referrer_account_id, r.referral_code, r.subscription_id, r.attributed_at, r.status,
       r.reason, r.first_payment_at, r.first_payment_invoice_id, r.currency)
      is distinct from
      (excluded.referrer_account_id, excluded.referral_code, excluded.subscription_id,
       excluded.attributed_at, excluded.status, excluded.reason, excluded.first_payment_at,
       excluded.first_payment_invoice_id, excluded.currency)
  -- a decided referral is frozen: its payout (or forfeit) is history
  and not exists (select 1 from payouts p where p.referral_id = r.referral_id)
returning status, reason
"""


async def recompute_referrals(
    conn: Conn,
    touched: Sequence[str],
    referrers_changed: Sequence[str],
    result: BatchResult | None = None,
) -> int:
    """Recompute the referral rows of touched referees and of referees of changed referrers.

    Returns how many rows were created or changed.
    """
    if not touched and not referrers_changed:
        return 0
    referees = [
        r["account_id"]
        for r in await conn.fetch(
            """select s.account_id from unnest($1::text[]) as t(account_id)
               join subscriptions s using (account_id)
               where s.referrer_account_id is not null
               union
               select s.account_id from unnest($2::text[]) as c(referrer_account_id)
               join subscriptions s using (referrer_account_id)""",
            list(touched),
            list(referrers_changed),
        )
    ]
    if not referees:
        return 0
    subscriptions: defaultdict[str, list[SubscriptionFact]] = defaultdict(list)
    for row in await conn.fetch(_SUBSCRIPTION_FACTS, referees):
        subscriptions[row["account_id"]].append(SubscriptionFact(**row))
    invoices: defaultdict[str, list[InvoiceFact]] = defaultdict(list)
    for row in await conn.fetch(
        """select invoice_id, account_id, subscription_id, paid_at, amount_paid_cents
           from unnest($1::text[]) as w(account_id) join invoices i using (account_id)
           where i.amount_paid_cents > 0""",
        referees,
    ):
        invoices[row["account_id"]].append(InvoiceFact(**row))
    touches = {
        referee: touch
        for referee in referees
        if (touch := attributing_subscription(subscriptions[referee])) is not None
    }
    partners = {
        r["account_id"]
        for r in await conn.fetch(
            """select a.account_id from unnest($1::text[]) as w(account_id)
               join accounts a using (account_id) where a.is_partner""",
            sorted({t.referrer_account_id for t in touches.values() if t.referrer_account_id}),
        )
    }
    states: list[Referral] = []
    for referee, touch in touches.items():
        referrer = touch.referrer_account_id or ""
        state = referral_state(
            subscriptions[referee],
            invoices[referee],
            subscriptions.get(referrer, []),
            referrer in partners,
        )
        if state is not None:
            states.append(state)
    if not states:
        return 0
    rows = await conn.fetch(
        _UPSERT_REFERRALS,
        [s.referral_id for s in states],
        [s.referee_account_id for s in states],
        [s.referrer_account_id for s in states],
        [s.referral_code for s in states],
        [s.subscription_id for s in states],
        [s.attributed_at for s in states],
        [s.status.value for s in states],
        [s.reason.value if s.reason else None for s in states],
        [s.first_payment_at for s in states],
        [s.first_payment_invoice_id for s in states],
        [s.currency for s in states],
    )
    if result is not None:
        for row in rows:
            result.attributions[(row["status"], row["reason"] or "")] += 1
    return len(rows)


async def _dead_letters(
    conn: Conn, dead: Sequence[DeadLetter], out: Outbound, result: BatchResult
) -> list[OutboxMessage]:
    """Record each dead letter once per source coordinate and queue it for the DLQ topic."""
    if not dead:
        return []
    rows = await conn.fetch(
        """insert into dead_letters (topic, "partition", "offset", reason, detail)
           select * from unnest($1::text[], $2::int[], $3::bigint[], $4::text[], $5::text[])
           on conflict do nothing
           returning topic, "partition", "offset" """,
        [d.record.topic for d in dead],
        [d.record.partition for d in dead],
        [d.record.offset for d in dead],
        [d.reason.value for d in dead],
        [d.detail for d in dead],
    )
    new = {(r["topic"], r["partition"], r["offset"]) for r in rows}
    failed_at = datetime.now(UTC).isoformat()
    messages = []
    for d in dead:
        result.dead_lettered[(d.record.topic, d.reason.value)] += 1
        result.dead_letters.append(d)
        if (d.record.topic, d.record.partition, d.record.offset) not in new:
            continue
        headers = {
            "dlq.reason": d.reason.value,
            "dlq.detail": d.detail,
            "dlq.source.topic": d.record.topic,
            "dlq.source.partition": str(d.record.partition),
            "dlq.source.offset": str(d.record.offset),
            "dlq.consumer_group": out.consumer_group,
            "dlq.failed_at": failed_at,
        }
        messages.append(OutboxMessage(out.dlq, d.record.key, d.record.value or b"", headers))
    return messages

"""The referral state of accounts, derived from their facts in Postgres.

Written by the consumer's batches and by support's operations (a partner flag,
a payee, a revoked code change what a referral is), so both recompute it
through :func:`recompute_referrals`, and announce codes and credits with the
same messages.

Concurrency is by account, not by table. A referee's referral is a function of
its own facts and of its referrer's subscriptions and partner flag, so every
transaction takes row locks on ``accounts`` first (:func:`lock_accounts`):

- ``FOR NO KEY UPDATE`` on each account whose facts or referral row it writes;
- ``FOR UPDATE`` on each account to which it adds a fact its referees'
  eligibility compares (a new organization, payment method or private domain,
  a partner flag): it then recomputes those referees;
- ``FOR KEY SHARE`` on the referrers whose facts its recomputations read.

``KEY SHARE`` conflicts only with ``UPDATE``: referees of one referrer are
written at the same time, and a referrer's own invoices wait for nobody; a
change to what referees read of their referrer waits for them and they for it.
Each mode is taken in ``account_id`` order, so transactions never wait on each
other in a cycle except through a referral cycle (A refers B refers A) met by
two transactions at once, which Postgres's deadlock detector breaks (the
batch is retried).
"""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import asyncpg

from referral_events import (
    ReferralCodeAssigned,
    ReferralCodeAssignedData,
    ReferralCreditEarned,
    ReferralCreditEarnedData,
)
from referral_program import codes
from referral_program.attribution import (
    InvoiceFact,
    PartnerPeriod,
    Referral,
    SubscriptionFact,
    attributing_subscription,
    referral_state,
)
from referral_program.compared_facts import COMPARED_COLUMNS
from referral_runtime.db import Conn
from referral_runtime.outbox import OutboxMessage
from referral_runtime.settings import DatabaseSettings

EVENT_NAMESPACE = uuid.UUID("a7d3c1e2-4b5f-4e8a-9d0c-1f2e3d4c5b6a")


#: Consumer batches hold this advisory lock shared and a legacy import exclusively, so
#: every invoice is credited either by the import's backfill or by a batch that sees
#: the imported referrals (the referee may have no accounts row to lock yet).
LEGACY_IMPORT_LOCK = 0x5EF_0001

_LOCK_ACCOUNTS = """
select a.account_id
from unnest($1::text[]) as w(account_id) join accounts a using (account_id)
order by a.account_id
for {mode} of a
"""
_LOCK_MODES = frozenset({"update", "no key update", "key share"})

# Lookups by a non-unique key (subscriptions by account or by referrer) are lateral
# subqueries with OFFSET 0: not flattened into a join, they run once per id and go by the
# index whatever the column's statistics say, so a batch costs what it touches, not what
# the table holds (migration 0015 explains why a plain join does not).
_REFERRERS = """
select s.referrer_account_id as account_id
from unnest($1::text[]) as w(account_id)
cross join lateral (select s.referrer_account_id from subscriptions s
                    where s.account_id = w.account_id and s.referrer_account_id is not null
                    offset 0) s
union
select c.account_id
from unnest($2::text[]) as x(code) join referral_codes c using (code)
"""


async def lock_accounts(conn: Conn, accounts: Collection[str], mode: str) -> None:
    """Row-lock the ``accounts`` rows of ``accounts`` in ``mode`` (see the module docstring)."""
    if mode not in _LOCK_MODES:
        raise ValueError(f"unknown lock mode {mode!r}")
    if accounts:
        await conn.execute(_LOCK_ACCOUNTS.format(mode=mode), sorted(accounts))


@dataclass(frozen=True)
class ComparedFacts:
    """What a new subscription brings that referees of its account are compared with."""

    account_id: str
    created_at: datetime
    #: The values of ``compared_facts.COMPARED_FACTS``, in their order; ``None`` where the
    #: subscription has none, or one that proves nothing (a public mail domain).
    values: tuple[str | None, ...]


# Facts are only ever added, so a value an account already had at the same business
# time or earlier stays: a subscription that brings no value earlier than the account
# already had it changes nothing its referees are compared with (whatever their cut-off).
# One clause per compared fact, from the program's table (its column names are ours, not input).
# The accounts it finds are handed to lock_accounts_for_writing (migration 0014), which
# takes the locks in the order and modes of this module's docstring: the probe and every
# lock in one round trip.
_LOCK_FOR_WRITING = """
with changed as (
    select coalesce(array_agg(distinct n.account_id), '{{}}') as accounts
    from unnest($4::text[], $5::timestamptz[], {arrays}) as n(account_id, created_at, {columns})
    where {clauses}
)
select c.accounts, lock_accounts_for_writing($1, $2::text[], c.accounts, $3::text[])
from changed c
""".format(
    arrays=", ".join(f"${i}::text[]" for i in range(6, 6 + len(COMPARED_COLUMNS))),
    columns=", ".join(COMPARED_COLUMNS),
    clauses="\n   or ".join(
        f"(n.{c} is not null and not exists (select 1 from subscriptions s"
        f" where s.account_id = n.account_id and s.{c} = n.{c} and s.created_at <= n.created_at))"
        for c in COMPARED_COLUMNS
    ),
)


async def lock_for_writing(
    conn: Conn,
    written: Collection[str],
    compared: Sequence[ComparedFacts],
    codes_used: Sequence[str],
) -> set[str]:
    """Take every lock a transaction needs that writes the facts of ``written``.

    ``compared``: the compared facts the new subscriptions bring; an account they
    add a value to is locked ``FOR UPDATE`` and returned (its referees must be
    recomputed). ``codes_used``: codes (normal form) the new subscriptions carry,
    whose owners become referrers. The accounts rows must exist. Referrers are
    read after the written accounts are locked, so no other transaction can
    change who they are meanwhile. One statement, one round trip.
    """
    row = await conn.fetchrow(
        _LOCK_FOR_WRITING,
        LEGACY_IMPORT_LOCK,
        list(written),
        list(codes_used),
        [c.account_id for c in compared],
        [c.created_at for c in compared],
        *([c.values[i] for c in compared] for i in range(len(COMPARED_COLUMNS))),
    )
    if row is None:  # an aggregate without ``group by`` always returns one row
        raise RuntimeError("lock_accounts_for_writing returned no row")
    return set(row["accounts"])


@dataclass(frozen=True)
class Outbound:
    """Topic names and link base the batch needs to build outbound events."""

    code_assigned: str
    credit_earned: str
    dlq: str
    link_base: str
    consumer_group: str

    @classmethod
    def from_settings(cls, settings: DatabaseSettings) -> Outbound:
        topics = settings.topics
        return cls(
            code_assigned=topics.code_assigned,
            credit_earned=topics.credit_earned,
            dlq=topics.dlq,
            link_base=settings.referral_link_base,
            consumer_group=settings.consumer_group,
        )


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


def partner_periods_of(
    multirange: Sequence[asyncpg.Range[datetime]] | None,
) -> tuple[PartnerPeriod, ...]:
    """``accounts.partner_periods`` (a ``tstzmultirange`` of ``[since, until)``) as plain pairs."""
    return tuple((r.lower, r.upper) for r in multirange or ())


# Joins on unnest() rather than `= any(array)`: with thousands of ids per batch
# the planner otherwise scans the table comparing each row with the whole array.
_SUBSCRIPTION_FACTS = """
with referee as (select distinct unnest($1::text[]) as account_id),
wanted as (
    select account_id from referee
    union
    select s.referrer_account_id from referee
    cross join lateral (select s.referrer_account_id from subscriptions s
                        where s.account_id = referee.account_id
                          and s.referrer_account_id is not null
                        offset 0) s
)
select s.*
from wanted
cross join lateral (
    select s.subscription_id, s.account_id, s.created_at, s.plan_family, s.currency,
           s.first_time_client, s.referral_code, s.referrer_account_id, s.email_domain,
           s.organization_id, s.payment_fingerprint_hash
    from subscriptions s where s.account_id = wanted.account_id
    offset 0
) s
"""

# The referees whose referral a batch may change: the touched accounts that were referred,
# and every referee of a referrer whose compared facts changed.
_REFEREES = """
select s.account_id from unnest($1::text[]) as t(account_id)
cross join lateral (select s.account_id from subscriptions s
                    where s.account_id = t.account_id and s.referrer_account_id is not null
                    offset 0) s
union
select s.account_id from unnest($2::text[]) as c(referrer_account_id)
cross join lateral (select s.account_id from subscriptions s
                    where s.referrer_account_id = c.referrer_account_id
                    offset 0) s
"""

_PAID_INVOICES = """
select i.*
from unnest($1::text[]) as w(account_id)
cross join lateral (
    select i.invoice_id, i.account_id, i.subscription_id, i.paid_at, i.amount_paid_cents
    from invoices i where i.account_id = w.account_id and i.amount_paid_cents > 0
    offset 0
) i
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
    *,
    tz: ZoneInfo,
) -> Counter[tuple[str, str]]:
    """Recompute the referral rows of touched referees and of referees of changed referrers.

    ``tz`` is the program time zone (``eligible_on`` starts in it). Returns the
    (status, reason) of each row created or changed, counted.
    """
    changed: Counter[tuple[str, str]] = Counter()
    if not touched and not referrers_changed:
        return changed
    referees = [
        r["account_id"]
        for r in await conn.fetch(
            _REFEREES,
            list(touched),
            list(referrers_changed),
        )
    ]
    if not referees:
        return changed
    subscriptions: defaultdict[str, list[SubscriptionFact]] = defaultdict(list)
    for row in await conn.fetch(_SUBSCRIPTION_FACTS, referees):
        subscriptions[row["account_id"]].append(SubscriptionFact(**row))
    invoices: defaultdict[str, list[InvoiceFact]] = defaultdict(list)
    for row in await conn.fetch(_PAID_INVOICES, referees):
        invoices[row["account_id"]].append(InvoiceFact(**row))
    touches = {
        referee: touch
        for referee in referees
        if (touch := attributing_subscription(subscriptions[referee])) is not None
    }
    partner_periods = {
        r["account_id"]: partner_periods_of(r["partner_periods"])
        for r in await conn.fetch(
            """select a.account_id, a.partner_periods from unnest($1::text[]) as w(account_id)
               join accounts a using (account_id) where a.partner_periods <> '{}'""",
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
            partner_periods.get(referrer, ()),
            tz,
        )
        if state is not None:
            states.append(state)
    if not states:
        return changed
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
    changed.update((row["status"], row["reason"] or "") for row in rows)
    return changed


# A referee none of whose subscriptions attributes any more (a revocation withdrew the only
# one) is not referred: its undecided referral row goes. A decided one is history and stays.
_FORGET_UNREFERRED = """
delete from referrals r
using unnest($1::text[]) as w(account_id)
where r.referee_account_id = w.account_id
  and not exists (select 1 from subscriptions s
                  where s.account_id = w.account_id and s.referrer_account_id is not null)
  and not exists (select 1 from payouts p where p.referral_id = r.referral_id)
returning r.referee_account_id
"""


async def forget_unreferred(conn: Conn, referees: Collection[str]) -> set[str]:
    """Delete the undecided referral rows of ``referees`` that no sign-up attributes any more;
    returns those referees. The caller holds their accounts locked."""
    rows = await conn.fetch(_FORGET_UNREFERRED, sorted(referees))
    return {r["referee_account_id"] for r in rows}


@dataclass(frozen=True)
class Reattributed:
    """What re-resolving some referees' codes did to their referral rows."""

    forgotten: tuple[str, ...]  # referees no longer referred: their undecided rows removed
    changed: Counter[tuple[str, str]]  # (status, reason) of rows created or changed


async def reattribute(
    conn: Conn, referees: Collection[str], *, held: Collection[str], tz: ZoneInfo
) -> Reattributed:
    """Recompute the referrals of ``referees`` after their subscriptions' code outcomes changed.

    The caller holds ``FOR UPDATE`` on the accounts in ``held`` (the owner of the code it
    changed), which every transaction recomputing a referee of theirs waits for. The
    referees' other referrers are locked ``FOR KEY SHARE`` here, as a batch does, so
    that a partner flag or a compared fact changed on one of them meanwhile is ordered
    with this recomputation. Decided referrals are left as they are.
    """
    if not referees:
        return Reattributed((), Counter())
    referrers = {r["account_id"] for r in await conn.fetch(_REFERRERS, sorted(referees), [])}
    await lock_accounts(conn, referrers - set(held), "key share")
    forgotten = tuple(sorted(await forget_unreferred(conn, referees)))
    changed = await recompute_referrals(conn, sorted(set(referees) - set(forgotten)), [], tz=tz)
    return Reattributed(forgotten, changed)

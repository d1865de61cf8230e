"""The scheduler's SQL: decidable referrals in, payout decisions and ``payout.due`` out.

Every statement is set-based: a chunk of referrals costs one locking select,
one select of the referees' subscriptions with their cancellations, one insert
into ``payouts`` and one into ``outbox``, whatever the chunk size. The functions
run inside the caller's transaction; :mod:`payout_scheduler.service` owns it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import date, datetime
from uuid import UUID
from zoneinfo import ZoneInfo

import asyncpg

from payout_scheduler.core import calendar
from payout_scheduler.core.decisions import (
    DUE,
    Cancellation,
    Decision,
    ReferralFacts,
    SubscriptionSpan,
)
from referral_consumer.core import codes
from referral_events import PayoutDue, PayoutDueData
from referrals.outbox import OutboxMessage

#: A connection, or one borrowed from a pool.
Connection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy

#: Keyset start: below every referral id (ids are uuid5, never the nil UUID).
FIRST_KEY = UUID(int=0)

# Rows locked here are decided by this transaction only: a replica running the
# same query skips them (SKIP LOCKED) and takes the next ones. The payouts
# primary key is the last guard for a row that a replica committed between
# another replica's snapshot and its lock (that insert then does nothing).
_LOCK_DECIDABLE = """
select r.referral_id, r.referrer_account_id, r.referee_account_id, r.referral_code,
       r.currency, r.status, r.reason, r.first_payment_at,
       coalesce(a.is_partner, false) as referrer_is_partner,
       coalesce(r.payee, a.payee) as payee
from referrals r
left join accounts a on a.account_id = r.referrer_account_id
where r.referral_id > $1
  and r.first_payment_at < $2
  and not exists (select 1 from payouts p where p.referral_id = r.referral_id)
order by r.referral_id
limit $3
for update of r skip locked
"""

# One row per (subscription, cancellation); a subscription without any has nulls.
_SUBSCRIPTIONS = """
select s.account_id, s.subscription_id, s.plan_family, s.created_at,
       c.cancelled_at, c.effective_at
from subscriptions s
left join cancellations c on c.subscription_id = s.subscription_id
where s.account_id = any($1::text[])
"""

_INSERT_PAYOUTS = """
insert into payouts (referral_id, payout_id, outcome, reason, referrer_account_id,
    referee_account_id, payee, plan_family, amount_cents, currency, first_payment_at,
    eligible_on, pay_by, as_of)
select d.*, $14::date
from unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[],
    $7::text[], $8::text[], $9::bigint[], $10::text[], $11::timestamptz[], $12::date[],
    $13::date[]) as d
on conflict do nothing
returning referral_id
"""

_RECORD_PASS = """
insert into scheduler_passes (as_of, decided) values ($1, $2)
on conflict (as_of) do update
set finished_at = now(), decided = scheduler_passes.decided + excluded.decided
"""

# The CASE keeps the JSON cast away from other topics' payloads (dead letters
# carry arbitrary bytes): SQL does not promise to evaluate the topic test first.
_DUE_SOON = """
select count(*) from outbox
where published_at is null
  and topic = $1
  and case when topic = $1
           then (convert_from(payload, 'UTF8')::jsonb #>> '{data,pay_by}')::date
      end <= $2
"""


async def lock_decidable(
    conn: Connection, after: UUID, first_payment_before: datetime, limit: int
) -> list[ReferralFacts]:
    """Lock and load up to ``limit`` undecided referrals with ids above ``after``.

    Only referrals whose first payment is before ``first_payment_before`` (see
    :func:`payout_scheduler.core.decisions.decidable_before`) and that no other
    transaction holds are returned, in ``referral_id`` order, with their
    referee's subscriptions and every cancellation of those.
    """
    rows = await conn.fetch(_LOCK_DECIDABLE, after, first_payment_before, limit)
    if not rows:
        return []
    spans = await _subscriptions(conn, [r["referee_account_id"] for r in rows])
    return [
        ReferralFacts(
            referral_id=r["referral_id"],
            referrer_account_id=r["referrer_account_id"],
            referee_account_id=r["referee_account_id"],
            referral_code=r["referral_code"],
            currency=r["currency"],
            status=r["status"],
            reason=r["reason"],
            first_payment_at=r["first_payment_at"],
            referrer_is_partner=r["referrer_is_partner"],
            payee=r["payee"],
            subscriptions=spans.get(r["referee_account_id"], ()),
        )
        for r in rows
    ]


async def _subscriptions(
    conn: Connection, accounts: list[str]
) -> dict[str, tuple[SubscriptionSpan, ...]]:
    heads: dict[str, tuple[str, str, str, datetime]] = {}
    cancellations: defaultdict[str, list[Cancellation]] = defaultdict(list)
    for row in await conn.fetch(_SUBSCRIPTIONS, accounts):
        subscription_id = row["subscription_id"]
        heads[subscription_id] = (
            row["account_id"],
            subscription_id,
            row["plan_family"],
            row["created_at"],
        )
        if row["effective_at"] is not None:
            cancellations[subscription_id].append(
                Cancellation(row["cancelled_at"], row["effective_at"])
            )
    by_account: defaultdict[str, list[SubscriptionSpan]] = defaultdict(list)
    for account_id, subscription_id, plan_family, created_at in heads.values():
        by_account[account_id].append(
            SubscriptionSpan(
                subscription_id=subscription_id,
                plan_family=plan_family,
                created_at=created_at,
                cancelled_at=None,
                effective_at=None,
                cancellations=tuple(cancellations.get(subscription_id, ())),
            )
        )
    return {account: tuple(spans) for account, spans in by_account.items()}


async def insert_payouts(
    conn: Connection,
    decisions: Sequence[Decision],
    facts: dict[UUID, ReferralFacts],
    as_of: date,
) -> set[UUID]:
    """Record ``decisions`` (one statement); returns the referral ids inserted now.

    A referral that already has a payout row keeps it: its id is not returned.
    """
    if not decisions:
        return set()
    rows = await conn.fetch(
        _INSERT_PAYOUTS,
        [d.referral_id for d in decisions],
        [d.payout_id for d in decisions],
        [d.outcome for d in decisions],
        [d.reason for d in decisions],
        [facts[d.referral_id].referrer_account_id for d in decisions],
        [facts[d.referral_id].referee_account_id for d in decisions],
        [d.payee for d in decisions],
        [d.plan_family for d in decisions],
        [d.amount_cents for d in decisions],
        [d.currency for d in decisions],
        [d.first_payment_at for d in decisions],
        [d.eligible_on for d in decisions],
        [d.pay_by for d in decisions],
        as_of,
    )
    return {r["referral_id"] for r in rows}


def payout_due_message(
    decision: Decision, facts: ReferralFacts, topic: str, tz: ZoneInfo
) -> OutboxMessage:
    """The ``payout.due`` event of a due decision, keyed by the referrer account.

    ``event_id`` is the ``payout_id``; ``occurred_at`` is the business time the
    cash became due (the start of ``eligible_on`` in the program time zone), so
    the event is the same whichever replica, day or run produced it.
    """
    if decision.outcome != DUE or decision.plan_family is None:
        raise ValueError(f"referral {decision.referral_id} is {decision.outcome}, not due")
    event = PayoutDue(
        event_id=decision.payout_id,
        occurred_at=calendar.eligibility_instant(decision.eligible_on, tz),
        data=PayoutDueData(
            payout_id=decision.payout_id,
            referral_id=decision.referral_id,
            referrer_account_id=facts.referrer_account_id,
            payee=decision.payee,
            referee_account_id=facts.referee_account_id,
            referral_code=codes.display(facts.referral_code),
            plan_family=decision.plan_family,
            amount_cents=decision.amount_cents,
            currency=decision.currency,
            first_payment_at=decision.first_payment_at,
            eligible_on=decision.eligible_on,
            pay_by=decision.pay_by,
        ),
    )
    return OutboxMessage(
        topic, facts.referrer_account_id.encode(), event.model_dump_json().encode()
    )


async def record_pass(conn: Connection, as_of: date, decided: int) -> None:
    """Remember a finished pass (several passes of one day add up their decisions)."""
    await conn.execute(_RECORD_PASS, as_of, decided)


async def last_pass(conn: Connection) -> date | None:
    """The latest ``as_of`` of a finished pass, or None before the first one."""
    value: date | None = await conn.fetchval("select max(as_of) from scheduler_passes")
    return value


async def count_due_soon(conn: Connection, topic: str, horizon: date) -> int:
    """Unpublished ``payout.due`` messages whose ``pay_by`` is on or before ``horizon``."""
    return int(await conn.fetchval(_DUE_SOON, topic, horizon))

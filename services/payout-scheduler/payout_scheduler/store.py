"""The scheduler's SQL: decidable referrals in, payout decisions and ``payout.due`` out.

Every statement is set-based: a chunk of referrals costs one locking select
(which brings the referees' subscriptions and cancellations along) and one
statement that inserts its ``payouts`` and ``outbox`` rows, whatever the chunk
size; the candidate ids come from one unlocked select per page of chunks. The functions run inside
the caller's transaction; :mod:`payout_scheduler.passes` owns it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from uuid import UUID
from zoneinfo import ZoneInfo

from referral_events import PayoutDueEncoder
from referral_program import calendar, codes
from referral_program.decisions import ChunkDecisions, FactRows, Ruling
from referral_program.table import QUALIFYING_FAMILIES, Outcome
from referral_runtime.db import Conn
from referral_runtime.referral_state import partner_periods_of

#: Keyset start: below every referral id (ids are uuid5, never the nil UUID).
FIRST_KEY = UUID(int=0)

# The referrals a pass has to look at, found through the first-payment index.
_DECIDABLE_IDS = """
select r.referral_id
from referrals r
where r.first_payment_at < $1
  and r.referral_id > $2
  and not exists (select 1 from payouts p where p.referral_id = r.referral_id)
order by r.referral_id
limit $3
"""

# Rows locked here are decided by this transaction only: a replica running the
# same query skips them (SKIP LOCKED) and takes the next chunk. The conditions
# are checked again under the lock, as the candidates were read without one.
# The payouts primary key is the last guard for a row that a replica committed
# between another's snapshot and its lock (that insert then does nothing).
#
# One row per (referral, qualifying subscription of the referee, cancellation of
# it), in referral order; a referral whose referee holds none comes once, with
# nulls. Other plan families never earn, so the decision never looks at them.
# (Rows rather than per-referral arrays: cheaper for Postgres to build.)
_LOCK_DECIDABLE = """
select r.referral_id, r.referrer_account_id, r.referee_account_id, r.referral_code,
       r.status, r.reason, r.first_payment_at,
       nullif(a.partner_periods, '{}') as partner_periods,
       coalesce(r.payee, a.payee) as payee,
       s.subscription_id, s.plan_family, s.created_at, c.cancelled_at, c.effective_at
from referrals r
left join accounts a on a.account_id = r.referrer_account_id
left join subscriptions s
    on s.account_id = r.referee_account_id and s.plan_family = any($3::text[])
left join cancellations c on c.subscription_id = s.subscription_id
where r.referral_id = any($1::uuid[])
  and r.first_payment_at < $2
  and not exists (select 1 from payouts p where p.referral_id = r.referral_id)
order by r.referral_id
for update of r skip locked
"""

# One statement records a chunk's decisions and enqueues its payout.due messages
# (attempt 1; a due payout starts with finance's status 'due'):
# an outbox row only for a payouts row inserted now, so a decision a replica
# already recorded (the primary key conflict) is neither replaced nor announced
# twice, and its id is what the statement returns (usually nothing). Columns the
# decision copies from the referral come from the row itself (the currency is the
# decision's: the program's, never the referee's billing one); the message key is
# the referrer account, as ``OutboxMessage.key`` would encode it.
#
# Few bytes to encode: the chunk's distinct rulings (outcome, reason, family, amount,
# currency, eligible_on, pay_by) are sent once each ($3-$9) and referenced by number
# ($11); a payee only where it differs from the referrer; a message beside each
# decision ($14, null where it is not due). Arrays are unnested in select lists,
# which streams them instead of materialising them (see BENCHMARKS.md).
_RECORD_DECISIONS = """
with rulings as (
    select k.*
    from unnest($3::text[], $4::text[], $5::text[], $6::bigint[], $7::text[], $8::date[],
                $9::date[])
        with ordinality as k(outcome, reason, plan_family, amount_cents, currency, eligible_on,
                             pay_by, ruling)
),
recorded as (
    insert into payouts (referral_id, payout_id, outcome, reason, referrer_account_id,
        referee_account_id, payee, plan_family, amount_cents, currency, first_payment_at,
        eligible_on, pay_by, as_of, status)
    select d.referral_id, d.payout_id, k.outcome, k.reason, r.referrer_account_id,
           r.referee_account_id, coalesce(d.payee, r.referrer_account_id), k.plan_family,
           k.amount_cents, k.currency, r.first_payment_at, k.eligible_on, k.pay_by, $12::date,
           case when k.outcome = 'due' then 'due' end
    from (select unnest($1::uuid[]) as referral_id, unnest($2::uuid[]) as payout_id,
                 unnest($10::text[]) as payee, unnest($11::int[]) as ruling) as d
    join rulings k on k.ruling = d.ruling
    join referrals r on r.referral_id = d.referral_id
    on conflict do nothing
    returning referral_id, referrer_account_id
),
announced as (
    insert into outbox (topic, key, payload)
    select $13::text, convert_to(rec.referrer_account_id, 'UTF8'), m.message
    from (select unnest($1::uuid[]) as referral_id, unnest($14::bytea[]) as message) as m
    join recorded rec on rec.referral_id = m.referral_id
    where m.message is not null
)
select d.referral_id from unnest($1::uuid[]) as d(referral_id)
where d.referral_id not in (select referral_id from recorded)
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


async def decidable_ids(
    conn: Conn, first_payment_before: datetime, after: UUID, limit: int
) -> list[UUID]:
    """Up to ``limit`` undecided referral ids above ``after`` (in order) whose first payment
    is before ``first_payment_before`` (see ``core.decisions.decidable_before``). No locks."""
    rows = await conn.fetch(_DECIDABLE_IDS, first_payment_before, after, limit)
    return [r["referral_id"] for r in rows]


async def lock_decidable(
    conn: Conn, ids: Sequence[UUID], first_payment_before: datetime
) -> FactRows:
    """Lock and load those of ``ids`` that are still undecided and free, in id order.

    Each comes with its referee's qualifying subscriptions and every cancellation
    of them, as the rows :class:`~referral_program.decisions.FactRows` describes.
    A referral another transaction holds (a replica, or the consumer updating
    it) is skipped: the next pass takes it.
    """
    rows = await conn.fetch(_LOCK_DECIDABLE, ids, first_payment_before, sorted(QUALIFYING_FAMILIES))
    # Columns by name, one list each: cheaper than a record per referral.
    return FactRows(
        referral_id=[r["referral_id"] for r in rows],
        referrer_account_id=[r["referrer_account_id"] for r in rows],
        referee_account_id=[r["referee_account_id"] for r in rows],
        referral_code=[r["referral_code"] for r in rows],
        status=[r["status"] for r in rows],
        reason=[r["reason"] for r in rows],
        first_payment_at=[r["first_payment_at"] for r in rows],
        referrer_partner_periods=[
            () if p is None else partner_periods_of(p) for p in (r["partner_periods"] for r in rows)
        ],
        payee=[r["payee"] for r in rows],
        subscription_id=[r["subscription_id"] for r in rows],
        plan_family=[r["plan_family"] for r in rows],
        created_at=[r["created_at"] for r in rows],
        cancelled_at=[r["cancelled_at"] for r in rows],
        effective_at=[r["effective_at"] for r in rows],
    )


async def record_decisions(
    conn: Conn,
    facts: FactRows,
    decided: ChunkDecisions,
    as_of: date,
    topic: str,
    tz: ZoneInfo,
) -> set[UUID]:
    """Record the decisions of referrals this transaction locked, with their ``payout.due``
    messages.

    ``decided`` is what :func:`~referral_program.decisions.decide_rows` made of
    ``facts``. One statement: a ``payouts`` row per decision and, for each due
    one, an outbox row on ``topic``. Returns the referral ids recorded now; a
    referral that already has a payout row keeps it, gets no new message, and
    its id is not returned.
    """
    if not decided.row:
        return set()
    referral_ids = [facts.referral_id[i] for i in decided.row]
    referrers = [facts.referrer_account_id[i] for i in decided.row]
    encoders = [
        payout_due_encoder(ruling, tz) if ruling.outcome == Outcome.DUE else None
        for ruling in decided.rulings
    ]
    messages = [
        None
        if (encoder := encoders[ruling]) is None
        else encoder.encode(
            payout_id=payout_id,
            referral_id=referral_id,
            referrer_account_id=referrer,
            payee=payee,
            referee_account_id=facts.referee_account_id[row],
            referral_code=codes.display(facts.referral_code[row]),
            first_payment_at=facts.first_payment_at[row],
        )
        for row, ruling, referral_id, payout_id, payee, referrer in zip(
            decided.row,
            decided.ruling,
            referral_ids,
            decided.payout_id,
            decided.payee,
            referrers,
            strict=True,
        )
    ]
    not_recorded = await conn.fetch(
        _RECORD_DECISIONS,
        referral_ids,
        decided.payout_id,
        *zip(*decided.rulings, strict=True),
        [p if p != r else None for p, r in zip(decided.payee, referrers, strict=True)],
        [ruling + 1 for ruling in decided.ruling],  # ordinality numbers from 1
        as_of,
        topic,
        messages,
    )
    recorded = set(referral_ids)
    recorded.difference_update(r[0] for r in not_recorded)
    return recorded


def payout_due_encoder(ruling: Ruling, tz: ZoneInfo) -> PayoutDueEncoder:
    """The ``payout.due`` events of the due decisions of ``ruling``.

    Attempt 1, so each ``event_id`` is its ``payout_id``; ``occurred_at`` is the business
    time the cash became due (the start of ``eligible_on`` in the program time zone), so
    an event is the same whichever replica, day or run produced it. The events are keyed
    by the referrer account when enqueued.
    """
    if ruling.outcome != Outcome.DUE or ruling.plan_family is None:
        raise ValueError(f"a {ruling.outcome} ruling announces no payout")
    return PayoutDueEncoder(
        occurred_at=calendar.eligibility_instant(ruling.eligible_on, tz),
        plan_family=ruling.plan_family,
        amount_cents=ruling.amount_cents,
        currency=ruling.currency,
        eligible_on=ruling.eligible_on,
        pay_by=ruling.pay_by,
        attempt=1,
    )


async def record_pass(conn: Conn, as_of: date, decided: int) -> None:
    """Remember a finished pass (several passes of one day add up their decisions)."""
    await conn.execute(_RECORD_PASS, as_of, decided)


async def last_pass(conn: Conn) -> date | None:
    """The latest ``as_of`` of a finished pass, or None before the first one."""
    value: date | None = await conn.fetchval("select max(as_of) from scheduler_passes")
    return value


_OVERDUE_UNDECIDED = """
select count(*)
from referrals r
where r.first_payment_at < $1
  and not exists (select 1 from payouts p where p.referral_id = r.referral_id)
"""


async def count_undecided(conn: Conn, first_payment_before: datetime) -> int:
    """Referrals whose first payment is before ``first_payment_before`` and that are undecided."""
    return int(await conn.fetchval(_OVERDUE_UNDECIDED, first_payment_before))


async def count_due_soon(conn: Conn, topic: str, horizon: date) -> int:
    """Unpublished ``payout.due`` messages whose ``pay_by`` is on or before ``horizon``."""
    return int(await conn.fetchval(_DUE_SOON, topic, horizon))


# Decisions only on complete facts: the first held-back pass sets `since` (the instant
# its wait began); later ones keep it.
_RECORD_HELD_BACK = """
insert into scheduler_held_back (since, checked_at, unapplied)
values (now() - make_interval(secs => $1), now(), $2)
on conflict (only_row) do update
set checked_at = excluded.checked_at, unapplied = excluded.unapplied
returning since
"""


async def record_held_back(conn: Conn, waited_seconds: float, unapplied: int) -> datetime:
    """Remember that a pass was held back; returns since when passes have been held back."""
    since: datetime = await conn.fetchval(_RECORD_HELD_BACK, waited_seconds, unapplied)
    return since


async def clear_held_back(conn: Conn) -> None:
    """A pass saw complete facts: decisions are no longer held back."""
    await conn.execute("delete from scheduler_held_back")


async def held_back_since(conn: Conn) -> datetime | None:
    """Since when decision passes have been held back, or None when the last one was not."""
    since: datetime | None = await conn.fetchval("select since from scheduler_held_back")
    return since

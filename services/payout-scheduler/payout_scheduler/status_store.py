"""Finance's reports applied to payouts: one transaction per batch, set-based.

A batch of ``payout.paid`` / ``payout.failed`` costs a fixed number of
statements, whatever its size: lock the due payouts it names (``FOR UPDATE``,
in ``payout_id`` order, so replicas and ``referrals payout reissue`` take turns
on one payout and never deadlock), read which of its event ids were applied
before and every report already recorded for those payouts, insert the new
reports (``payout_reports`` is the inbox: its key is the event id), and write
each payout's standing, recomputed from all its reports by the pure core
(:func:`referral_program.payouts.receive`). Dead letters are recorded and
queued for the DLQ topic in the same transaction.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from uuid import UUID

import asyncpg

from payout_scheduler.status_ingest import StatusReport
from referral_program.payouts import (
    Announced,
    Outcome,
    Report,
    ReportKind,
    Standing,
    receive,
    standing,
)
from referral_runtime.db import Conn
from referral_runtime.dead_letters import DeadLetter, record_dead_letters
from referral_runtime.outbox import enqueue

#: Outcome of a report whose event id was applied before (a redelivery).
DUPLICATE = "duplicate"

_LOCK_PAYOUTS = """
select payout_id, attempt, amount_cents, currency, status
from payouts
where payout_id = any($1::uuid[]) and outcome = 'due'
order by payout_id
for update
"""

_APPLIED_BEFORE = "select event_id from payout_reports where event_id = any($1::uuid[])"

_KNOWN_REPORTS = """
select event_id, payout_id, kind, attempt, at, amount_cents, currency, reference, reason
from payout_reports
where payout_id = any($1::uuid[])
"""

_INSERT_REPORTS = """
insert into payout_reports (event_id, payout_id, attempt, kind, at, amount_cents, currency,
    reference, reason, outcome, topic, "partition", "offset")
select * from unnest($1::uuid[], $2::uuid[], $3::int[], $4::text[], $5::timestamptz[],
    $6::bigint[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::int[],
    $13::bigint[])
on conflict do nothing
returning event_id
"""

# Only payouts whose standing changed are written; status_changed_at says when.
_WRITE_STANDINGS = """
update payouts p
set status = s.status, paid_at = s.paid_at, paid_attempt = s.paid_attempt,
    paid_amount_cents = s.paid_amount_cents, paid_currency = s.paid_currency,
    paid_reference = s.paid_reference, failed_at = s.failed_at,
    failure_reason = s.failure_reason, status_changed_at = now()
from unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::int[], $5::bigint[], $6::text[],
            $7::text[], $8::timestamptz[], $9::text[])
    as s(payout_id, status, paid_at, paid_attempt, paid_amount_cents, paid_currency,
         paid_reference, failed_at, failure_reason)
where p.payout_id = s.payout_id
"""

_GAUGES = """
select status, count(*) as payouts, coalesce(sum(amount_cents), 0)::bigint as cents,
       count(*) filter (where status = 'due' and pay_by < $1) as overdue
from payouts
where outcome = 'due'
group by status
"""


@dataclass(frozen=True)
class Applied:
    """One report of the batch and what it did (for metrics and logs)."""

    report: StatusReport
    outcome: str  # an Outcome value, or DUPLICATE
    status: str | None  # the payout's status after the batch (None: unknown payout)


@dataclass
class StatusBatchResult:
    """What a committed batch of finance's reports did."""

    applied: list[Applied] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)

    def outcomes(self) -> Counter[tuple[str, str]]:
        """(event type, outcome) -> reports."""
        return Counter((a.report.event.event_type, a.outcome) for a in self.applied)


async def apply_status_batch(
    conn: Conn,
    reports: Sequence[StatusReport],
    dead: Sequence[DeadLetter],
    *,
    dlq_topic: str,
    consumer_group: str,
    now: datetime,
) -> StatusBatchResult:
    """Apply a batch inside the caller's transaction; idempotent under redelivery."""
    result = StatusBatchResult(dead_letters=list(dead))
    first: dict[UUID, StatusReport] = {}
    for r in reports:
        if r.event.event_id in first:
            result.applied.append(Applied(r, DUPLICATE, None))  # twice in this batch
        else:
            first[r.event.event_id] = r
    payout_ids = sorted({r.event.data.payout_id for r in first.values()})
    announced = {
        row["payout_id"]: row for row in await conn.fetch(_LOCK_PAYOUTS, payout_ids)
    }  # fmt: skip
    before = {row["event_id"] for row in await conn.fetch(_APPLIED_BEFORE, list(first))}
    new = [r for event_id, r in first.items() if event_id not in before]
    result.applied += [Applied(first[event_id], DUPLICATE, None) for event_id in before]

    known: defaultdict[UUID, list[Report]] = defaultdict(list)
    for row in await conn.fetch(_KNOWN_REPORTS, sorted(announced)):
        known[row["payout_id"]].append(_report(row))
    arriving: defaultdict[UUID, list[StatusReport]] = defaultdict(list)
    for r in new:
        arriving[r.event.data.payout_id].append(r)

    outcome_of: dict[UUID, str] = {}
    standings: dict[UUID, Standing] = {}
    for payout_id, batch in arriving.items():
        locked = announced.get(payout_id)
        if locked is None:
            outcome_of.update((r.event.event_id, Outcome.UNKNOWN_PAYOUT.value) for r in batch)
            continue
        payout = Announced(payout_id, locked["attempt"], locked["amount_cents"], locked["currency"])
        was = standing(payout, known[payout_id])
        now_stands, outcomes = receive(payout, known[payout_id], [r.report() for r in batch])
        outcome_of.update((r.event.event_id, o.value) for r, o in zip(batch, outcomes, strict=True))
        if _columns(now_stands) != _columns(was):
            standings[payout_id] = now_stands

    inserted = await _insert_reports(conn, new, outcome_of)
    for r in new:
        if r.event.event_id in inserted:
            payout_id = r.event.data.payout_id
            status = standings[payout_id].status if payout_id in standings else None
            if status is None and payout_id in announced:
                status = announced[payout_id]["status"]
            result.applied.append(Applied(r, outcome_of[r.event.event_id], status))
        else:  # an unknown payout's report another replica inserted meanwhile
            result.applied.append(Applied(r, DUPLICATE, None))
    await _write_standings(conn, standings)
    await enqueue(
        conn,
        await record_dead_letters(
            conn, dead, dlq_topic=dlq_topic, consumer_group=consumer_group, failed_at=now
        ),
    )
    return result


def _report(row: asyncpg.Record) -> Report:
    return Report(
        row["event_id"],
        ReportKind(row["kind"]),
        row["attempt"],
        row["at"],
        row["amount_cents"],
        row["currency"],
        row["reference"],
        row["reason"],
    )


async def _insert_reports(
    conn: Conn, new: Sequence[StatusReport], outcome_of: dict[UUID, str]
) -> set[UUID]:
    if not new:
        return set()
    reports = [r.report() for r in new]
    rows = await conn.fetch(
        _INSERT_REPORTS,
        [r.event_id for r in reports],
        [r.event.data.payout_id for r in new],
        [r.attempt for r in reports],
        [r.kind.value for r in reports],
        [r.at for r in reports],
        [r.amount_cents for r in reports],
        [r.currency for r in reports],
        [r.reference for r in reports],
        [r.reason for r in reports],
        [outcome_of[r.event_id] for r in reports],
        [r.record.topic for r in new],
        [r.record.partition for r in new],
        [r.record.offset for r in new],
    )
    return {row["event_id"] for row in rows}


def _columns(s: Standing) -> tuple[object, ...]:
    """What ``payouts`` stores of a standing, in the order :data:`_WRITE_STANDINGS` takes it."""
    p, f = s.payment, s.failure
    return (
        s.status.value,
        p.at if p else None,
        p.attempt if p else None,
        p.amount_cents if p else None,
        p.currency if p else None,
        p.reference if p else None,
        f.at if f else None,
        f.reason if f else None,
    )


async def _write_standings(conn: Conn, standings: dict[UUID, Standing]) -> None:
    if not standings:
        return
    ids = sorted(standings)
    columns = zip(*(_columns(standings[i]) for i in ids), strict=True)
    await conn.execute(_WRITE_STANDINGS, ids, *(list(c) for c in columns))


@dataclass(frozen=True)
class PayoutCounts:
    """Due payouts by status (count and cents), and the due ones past their ``pay_by``."""

    payouts: dict[str, int]
    cents: dict[str, int]
    overdue: int


async def count_payouts(conn: Conn, today: date) -> PayoutCounts:
    """Due payouts by finance status; overdue ones are due with ``pay_by`` before ``today``
    (``referral_program.payouts.is_overdue``: the ``pay_by`` day has ended)."""
    rows = await conn.fetch(_GAUGES, today)
    return PayoutCounts(
        {r["status"]: r["payouts"] for r in rows},
        {r["status"]: r["cents"] for r in rows},
        sum(r["overdue"] for r in rows),
    )

"""Bulk synthetic referral state for benchmarks: N referrals, of which ``due`` are decidable.

Rows are generated inside PostgreSQL (``insert ... select generate_series``),
so a million referrals with their subscriptions and invoices take seconds and
no Python loop. The state is what the consumer would have derived (referrals,
subscriptions, invoices, cancellations, referrer accounts), not the events.

For a given ``as_of`` (and settle days): the first ``due`` referrals paid first
in the month whose ``eligible_on`` is the 1st of the month of
``as_of - settle_days``, so with ``as_of`` = that 1st + settle days they all become
decidable on ``as_of`` exactly; every one is due (VR and VA alternately; one in
ten has a cancellation that takes effect after eligibility). The other
referrals are either pending (no first payment) or paid later, so not decidable
on ``as_of``.

``python -m referral_devtools.seed --referrals 1000000 --due 100000 --as-of 2027-04-02``
seeds the database of ``DATABASE_URL``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from dataclasses import dataclass
from datetime import date, timedelta
from zoneinfo import ZoneInfo

import asyncpg

from referral_program import calendar

_ACCOUNTS = """
insert into accounts (account_id, payee)
select $1::text || '-r' || g, case when g % 50 = 0 then $1::text || '-payee-' || g end
from generate_series(0, $2::int - 1) as g
on conflict do nothing
"""

# $1 prefix, $2 referrals, $3 due, $4/$5 start/length of the decidable first payments,
# $6/$7 of the later ones, $8 referrers, $9 currency
_REFERRALS = """
insert into referrals (referral_id, referee_account_id, referrer_account_id, referral_code,
    subscription_id, attributed_at, status, reason, first_payment_at, first_payment_invoice_id,
    currency)
select md5($1::text || ':referral:' || g)::uuid, $1::text || '-a' || g,
       $1::text || '-r' || (g % $8::int), upper(substr(md5($1::text || ':code:' || (g % $8::int)), 1, 8)),
       $1::text || '-s' || g, coalesce(fp, $6::timestamptz) - interval '1 day',
       case when fp is null then 'pending' else 'qualified' end, null, fp,
       case when fp is not null then $1::text || '-i' || g end, $9::text
from generate_series(0::bigint, $2::bigint - 1) as g
cross join lateral (
    select case
        when g < $3::bigint then $4::timestamptz + $5::interval * (g::float8 / $3::bigint)
        when g % 3 = 0 then null
        else $6::timestamptz + $7::interval * (((g * 7919) % 100000)::float8 / 100000)
    end as fp
) as t
"""

_SUBSCRIPTIONS = """
insert into subscriptions (subscription_id, account_id, event_id, created_at, plan_family,
    plan_id, currency, first_time_client, referral_code, code_outcome, referrer_account_id)
select r.subscription_id, r.referee_account_id, md5(r.subscription_id)::uuid, r.attributed_at,
       f.family, f.family || '-monthly', r.currency, true, r.referral_code, 'known',
       r.referrer_account_id
from referrals r
cross join lateral (
    select (array['virtual_receptionist', 'voice_assistant'])[
        1 + (get_byte(decode(md5(r.subscription_id), 'hex'), 0) % 2)
    ] as family
) as f
where r.referee_account_id like $1::text || '-a%'
"""

_INVOICES = """
insert into invoices (invoice_id, account_id, subscription_id, event_id, paid_at,
    amount_paid_cents, discount_cents, currency)
select r.first_payment_invoice_id, r.referee_account_id, r.subscription_id,
       md5(r.first_payment_invoice_id)::uuid, r.first_payment_at, 9900, 10000, r.currency
from referrals r
where r.referee_account_id like $1::text || '-a%' and r.first_payment_at is not null
"""

# One decidable referral in ten cancels before eligibility, effective after it: still due.
_CANCELLATIONS = """
insert into cancellations (event_id, subscription_id, account_id, cancelled_at, effective_at,
    reason)
select md5(r.subscription_id || ':cancel')::uuid, r.subscription_id, r.referee_account_id,
       $2::timestamptz - interval '10 days', $2::timestamptz + interval '20 days', 'seeded'
from referrals r
where r.referee_account_id like $1::text || '-a%' and r.first_payment_at < $3::timestamptz
  and right(r.subscription_id, 1) = '3'
"""


@dataclass(frozen=True)
class Seeded:
    """What :func:`seed` wrote."""

    referrals: int
    decidable: int
    as_of: date
    eligible_on: date
    seconds: float


def _month_start(day: date, months_back: int) -> date:
    index = day.year * 12 + day.month - 1 - months_back
    return date(index // 12, index % 12 + 1, 1)


async def seed(
    conn: asyncpg.Connection,
    referrals: int,
    due: int,
    as_of: date,
    *,
    tz: ZoneInfo,
    settle_days: int = 1,
    referrers: int | None = None,
    prefix: str = "seed",
    currency: str = "USD",
) -> Seeded:
    """Insert ``referrals`` referrals, ``due`` of them decidable (and due) on ``as_of``.

    Account, subscription and invoice ids start with ``prefix``; seeding twice
    with the same prefix fails on the primary keys (use a fresh database or
    another prefix). Vacuums, analyzes and checkpoints afterwards (see the end), so a
    pass measured right after seeding sees a settled database.
    """
    if not 0 <= due <= referrals:
        raise ValueError(f"due must be between 0 and referrals ({referrals}), got {due}")
    started = time.perf_counter()
    referrers = referrers or max(1, referrals // 100)
    latest = as_of - timedelta(days=settle_days)
    eligible_on = _month_start(latest, 0)
    due_from = calendar.eligibility_instant(_month_start(latest, 3), tz)
    due_until = calendar.eligibility_instant(_month_start(latest, 2), tz)
    later_from = due_until
    later_until = calendar.eligibility_instant(eligible_on, tz)
    async with conn.transaction():
        await conn.execute(_ACCOUNTS, prefix, referrers)
        await conn.execute(
            _REFERRALS,
            prefix,
            referrals,
            max(due, 1),
            due_from,
            due_until - due_from,
            later_from,
            later_until - later_from,
            referrers,
            currency,
        )
        await conn.execute(_SUBSCRIPTIONS, prefix)
        await conn.execute(_INVOICES, prefix)
        await conn.execute(
            _CANCELLATIONS, prefix, calendar.eligibility_instant(eligible_on, tz), due_until
        )
    # Settle the bulk load as a long-running database would be: hint bits set and the
    # visibility map built (vacuum), statistics known (analyze), dirty pages written
    # (checkpoint, where permitted). Otherwise the first pass pays for all of it.
    for table in ("accounts", "referrals", "subscriptions", "invoices", "cancellations"):
        await conn.execute(f"vacuum (analyze) {table}")
    with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
        await conn.execute("checkpoint")
    return Seeded(referrals, due, as_of, eligible_on, time.perf_counter() - started)


def main() -> None:
    from referral_runtime.db import connect
    from referral_runtime.settings import load_settings

    parser = argparse.ArgumentParser(prog="python -m referral_devtools.seed", description=__doc__)
    parser.add_argument("--referrals", type=int, default=1_000_000)
    parser.add_argument("--due", type=int, default=100_000)
    parser.add_argument("--as-of", type=date.fromisoformat, default=date(2027, 4, 2))
    parser.add_argument("--prefix", default="seed")
    args = parser.parse_args()
    settings = load_settings()

    async def run() -> Seeded:
        conn = await connect(settings.database_url)
        try:
            return await seed(
                conn,
                args.referrals,
                args.due,
                args.as_of,
                tz=settings.tz,
                settle_days=settings.payout_settle_days,
                prefix=args.prefix,
            )
        finally:
            await conn.close()

    done = asyncio.run(run())
    print(
        f"seeded {done.referrals} referrals ({done.decidable} decidable on {done.as_of}, "
        f"eligible_on {done.eligible_on}) in {done.seconds:.1f}s"
    )


if __name__ == "__main__":
    main()

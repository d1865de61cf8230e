"""Undecided referrals recomputed from their facts under the rules installed now.

A referral row is what the rules of the code that last wrote it made of its
facts. When a release changes a rule (and bumps
``referral_program.table.RULES_VERSION``), rows written before would keep the
old ruling until a new fact touched their account; a decision pass would then
decide on it. :func:`recompute_undecided` rewrites every referral that has no
decision yet, and :func:`install_rules` does it once per rules version, from
``referrals migrate``. Decided referrals are history and never change.

The work is done in chunks of referee accounts, one transaction each, taking
the row locks :mod:`referral_runtime.referral_state` prescribes, so the
consumer and support's operations carry on meanwhile. A dry run does the same
work and rolls every chunk back.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

import asyncpg
import structlog

from referral_program.table import RULES_VERSION
from referral_runtime.referral_state import (
    forget_unreferred,
    lock_for_writing,
    recompute_referrals,
)

log = structlog.get_logger(__name__)

#: Referee accounts recomputed per transaction.
CHUNK = 1000

# Accounts that may be referees (a subscription carrying a known code), or that have
# an undecided referral row (which a re-resolved code may have left without any
# attributing sign-up), and whose referral, if any, has no decision; in account
# order, a page at a time.
_UNDECIDED_REFEREES = """
select account_id from (
    select s.account_id from subscriptions s
    where s.referrer_account_id is not null and s.account_id > $1
    union
    select r.referee_account_id from referrals r
    where r.referee_account_id > $1
) as candidate
where not exists (select 1 from referrals r join payouts p using (referral_id)
                  where r.referee_account_id = candidate.account_id)
order by account_id
limit $2
"""

_RULINGS = """
select r.referee_account_id, r.referrer_account_id, r.status, r.reason, r.first_payment_at
from unnest($1::text[]) as w(account_id)
join referrals r on r.referee_account_id = w.account_id
"""


@dataclass(frozen=True)
class Ruling:
    """What a referral row says: who referred, its status and reason, its first payment."""

    referrer_account_id: str
    status: str
    reason: str | None
    first_payment_at: datetime | None

    def label(self) -> str:
        """``status/reason``, or ``status`` alone."""
        return f"{self.status}/{self.reason}" if self.reason else self.status


@dataclass(frozen=True)
class Change:
    """One referral whose row the recomputation changed (or, dry, would change)."""

    referee_account_id: str
    before: Ruling | None  # None: there was no referral row
    after: Ruling | None  # None: the referee is no longer referred, its row is gone


@dataclass
class Recomputation:
    """What recomputing the undecided referrals did (or, with ``dry_run``, would do)."""

    dry_run: bool
    examined: int = 0  # undecided referee accounts recomputed
    changes: list[Change] = field(default_factory=list)

    def by_kind(self) -> Counter[tuple[str, str]]:
        """Changes counted by (before, after) label; a new row's before is ``none``."""
        return Counter(
            (c.before.label() if c.before else "none", c.after.label() if c.after else "none")
            for c in self.changes
        )


async def recompute_undecided(
    conn: asyncpg.Connection, tz: ZoneInfo, *, dry_run: bool = False, chunk: int = CHUNK
) -> Recomputation:
    """Recompute every undecided referral from its facts under the rules of this code.

    ``tz`` is the program time zone. With ``dry_run`` every chunk is rolled
    back: nothing is written, and the result says what would change. Must
    not run inside a transaction of the caller's (each chunk is its own).
    """
    result = Recomputation(dry_run=dry_run)
    after = ""
    while True:
        accounts = [r["account_id"] for r in await conn.fetch(_UNDECIDED_REFEREES, after, chunk)]
        if not accounts:
            return result
        transaction = conn.transaction()
        await transaction.start()
        try:
            await lock_for_writing(conn, accounts, [], [])
            before = await _rulings(conn, accounts)
            forgotten = await forget_unreferred(conn, accounts)
            await recompute_referrals(conn, sorted(set(accounts) - forgotten), [], tz=tz)
            now = await _rulings(conn, accounts)
        except BaseException:
            await transaction.rollback()
            raise
        if dry_run:
            await transaction.rollback()
        else:
            await transaction.commit()
        result.examined += len(accounts)
        result.changes += [
            Change(account, before.get(account), now.get(account))
            for account in sorted(before.keys() | now.keys())
            if before.get(account) != now.get(account)
        ]
        after = accounts[-1]


async def _rulings(conn: asyncpg.Connection, accounts: Sequence[str]) -> dict[str, Ruling]:
    rows = await conn.fetch(_RULINGS, list(accounts))
    return {
        r["referee_account_id"]: Ruling(
            r["referrer_account_id"], r["status"], r["reason"], r["first_payment_at"]
        )
        for r in rows
    }


@dataclass(frozen=True)
class RulesInstalled:
    """A rules version installed by :func:`install_rules`."""

    version: int
    previous: int | None  # None: no version was recorded before
    recomputation: Recomputation


async def installed_rules_version(conn: asyncpg.Connection) -> int | None:
    """The latest rules version the referral rows were recomputed under, or None."""
    version: int | None = await conn.fetchval("select max(version) from rules_installed")
    return version


async def install_rules(conn: asyncpg.Connection, tz: ZoneInfo) -> RulesInstalled | None:
    """Recompute every undecided referral if the database's rules are older than this code's.

    Returns None when there was nothing to do (the same version, or a newer one:
    a release rolled back keeps the newer rulings). The caller serialises
    concurrent runs (``referrals migrate`` holds its advisory lock); a run
    interrupted before the version is recorded is simply done again.
    """
    previous = await installed_rules_version(conn)
    if previous is not None and previous >= RULES_VERSION:
        if previous > RULES_VERSION:
            log.warning("rules_version_newer_in_database", database=previous, code=RULES_VERSION)
        return None
    done = await recompute_undecided(conn, tz)
    await conn.execute(
        """insert into rules_installed (version, referrals_examined, referrals_changed)
           values ($1, $2, $3) on conflict (version) do nothing""",
        RULES_VERSION,
        done.examined,
        len(done.changes),
    )
    log.info(
        "rules_installed",
        version=RULES_VERSION,
        previous=previous,
        examined=done.examined,
        changed=len(done.changes),
    )
    return RulesInstalled(RULES_VERSION, previous, done)

"""Every existing client gets its code on day one: codes assigned and announced from billing's
export of existing accounts.

The consumer assigns a code when it first sees an account; accounts that were
clients before the program started may send no event for months. ``referrals
codes backfill FILE`` reads billing's CSV export of them (one column,
``account_id``: the export must carry nothing else, and nothing personal),
checks every row first, and in one transaction creates the accounts not seen
yet, gives an active code to each account that has none, and queues a
``referral_code.assigned`` for each code it assigned, as the consumer does.
Running it again, or after the consumer saw some of the accounts, assigns
nothing twice: an account that has an active code is left as it is.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import asyncpg

from referral_ops.support import CodeBackfillError, audit, checked_actor, csv_text
from referral_program import codes
from referral_runtime.outbox import enqueue
from referral_runtime.referral_state import Outbound, code_assigned_message

COLUMN = "account_id"
#: Longer than any account id billing makes; a longer field is a broken export.
MAX_ACCOUNT_ID = 200
#: A 40-bit code collides rarely; this many rounds with collisions left means randbits is broken.
_MAX_ROUNDS = 32


@dataclass(frozen=True)
class BackfillRow:
    line: int
    account_id: str


def decode_csv(data: bytes) -> str:
    """The file's text (UTF-8, a byte-order mark allowed), or :class:`CodeBackfillError`."""
    return csv_text(data, CodeBackfillError, advice="export the file as CSV UTF-8 and run it again")


def _account_problem(value: str) -> str | None:
    if not value:
        return "account_id is empty"
    if len(value) > MAX_ACCOUNT_ID:
        return f"account_id is {len(value)} characters long (at most {MAX_ACCOUNT_ID})"
    if any(ch.isspace() or not ch.isprintable() for ch in value):
        return f"account_id {value[:40]!r} contains spaces or control characters"
    return None


def parse_backfill_csv(text: str) -> list[BackfillRow]:
    """Every account of billing's export, validated; :class:`CodeBackfillError` lists every
    bad line (numbered from 1, the header) so the whole file can be fixed in one go.

    The header is ``account_id`` alone: any other column is refused, so that no
    personal data (names, emails, phones) is read into this system by mistake.
    Blank lines are skipped; an account on two lines is an error.
    """
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        while header is not None and not any(f.strip() for f in header):
            header = next(reader, None)
        if header is None:
            raise CodeBackfillError([f"the file is empty: expected the header {COLUMN} and rows"])
        names = [h.strip().lower() for h in header]
        if names != [COLUMN]:
            others = [repr(n) for n in names if n != COLUMN]
            found = f"; found {', '.join(others)}" if others else ""
            raise CodeBackfillError(
                [
                    f"line {reader.line_num}: wrong header {','.join(header)!r}: expected the one "
                    f"column {COLUMN} (export the account ids only: no names, emails or other "
                    f"columns{found})"
                ]
            )
        rows: list[BackfillRow] = []
        errors: list[str] = []
        first_line_of: dict[str, int] = {}
        for fields in reader:
            line = reader.line_num
            if not any(f.strip() for f in fields):
                continue
            if len(fields) != 1:
                errors.append(f"line {line}: expected 1 field, found {len(fields)}")
                continue
            account = fields[0].strip()
            problem = _account_problem(account)
            if problem is not None:
                errors.append(f"line {line}: {problem}")
            elif account in first_line_of:
                errors.append(
                    f"line {line}: account {account} is already on line {first_line_of[account]}"
                )
            else:
                first_line_of[account] = line
                rows.append(BackfillRow(line, account))
    except csv.Error as exc:
        raise CodeBackfillError([f"line {reader.line_num}: not valid CSV ({exc})"]) from None
    if errors:
        raise CodeBackfillError(errors)
    if not rows:
        raise CodeBackfillError(["the file has a header but no rows"])
    return rows


@dataclass(frozen=True)
class CodesBackfilled:
    file: str
    rows: int
    new_accounts: int  # accounts this system had not seen before
    assigned: tuple[tuple[str, str], ...]  # (account, stored code), in file order
    dry_run: bool = False

    @property
    def already_had(self) -> int:
        return self.rows - len(self.assigned)


_NEW_ACCOUNTS = """
insert into accounts (account_id) select unnest($1::text[])
on conflict do nothing returning account_id
"""

_WITHOUT_CODE = """
select a.account_id
from unnest($1::text[]) as f(account_id)
join accounts a using (account_id)
where not exists (select 1 from referral_codes c
                  where c.account_id = a.account_id and c.status = 'active')
order by a.account_id
for no key update of a
"""

# No conflict target: a code already taken (primary key) and an account that got an
# active code meanwhile (the partial unique index) are both skipped, not errors.
_ASSIGN = """
insert into referral_codes (code, account_id, status)
select c, a, 'active' from unnest($1::text[], $2::text[]) as t(c, a)
on conflict do nothing returning account_id, code
"""


async def backfill_codes(
    conn: asyncpg.Connection,
    rows: Sequence[BackfillRow],
    *,
    file: str,
    actor: str,
    out: Outbound,
    randbits: Callable[[int], int],
    dry_run: bool = False,
) -> CodesBackfilled:
    """Give every account of ``rows`` without an active code one, announced; all or nothing.

    Accounts not seen before are created (as the consumer creates them). The
    accounts' rows are locked while their codes are assigned, the same lock the
    consumer's batches take on the accounts they write. ``dry_run`` does it all
    in a transaction that is rolled back: the result says what would happen.
    """
    actor = checked_actor(actor)
    if not rows:
        raise CodeBackfillError(["the file has a header but no rows"])
    accounts = [r.account_id for r in rows]
    try:
        async with conn.transaction():
            new = await conn.fetch(_NEW_ACCOUNTS, sorted(accounts))
            pending = [r["account_id"] for r in await conn.fetch(_WITHOUT_CODE, accounts)]
            assigned: dict[str, str] = {}
            for _ in range(_MAX_ROUNDS):
                if not pending:
                    break
                proposal = {account: codes.generate(randbits) for account in pending}
                taken = await conn.fetch(_ASSIGN, list(proposal.values()), list(proposal))
                assigned.update((r["account_id"], r["code"]) for r in taken)
                # Retry only collisions: an account that got a code elsewhere has one now.
                pending = await _still_without_code(conn, [a for a in pending if a not in assigned])
            else:
                raise RuntimeError(f"codes still colliding after {_MAX_ROUNDS} rounds")
            order = {account: i for i, account in enumerate(accounts)}
            result = CodesBackfilled(
                file,
                len(rows),
                len(new),
                tuple(sorted(assigned.items(), key=lambda kv: order[kv[0]])),
                dry_run,
            )
            if dry_run:
                raise _DryRunDone(result)
            await enqueue(
                conn, [code_assigned_message(out, a, code, None) for a, code in result.assigned]
            )
            await audit(
                conn,
                actor,
                "codes.backfill",
                file,
                {
                    "file": file,
                    "rows": result.rows,
                    "new_accounts": result.new_accounts,
                    "assigned": len(result.assigned),
                    "already_had": result.already_had,
                },
            )
    except _DryRunDone as done:
        return done.result
    return result


async def _still_without_code(conn: asyncpg.Connection, accounts: list[str]) -> list[str]:
    if not accounts:
        return []
    rows = await conn.fetch(
        """select a.account_id from unnest($1::text[]) as a(account_id)
           where not exists (select 1 from referral_codes c
                             where c.account_id = a.account_id and c.status = 'active')""",
        accounts,
    )
    return [r["account_id"] for r in rows]


class _DryRunDone(Exception):
    """Raised out of the transaction to roll a dry run back."""

    def __init__(self, result: CodesBackfilled) -> None:
        super().__init__("dry run")
        self.result = result

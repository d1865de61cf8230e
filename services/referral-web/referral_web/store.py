"""referral-web's SQL: what a code is, how often an account's link was opened, and the one
write it makes (landing visits, added in one statement per flush)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date

from referral_runtime.db import Conn

_CODE = """
select c.status, c.account_id, cur.code as current_code
from referral_codes c
left join referral_codes cur on cur.account_id = c.account_id and cur.status = 'active'
where c.code = $1
"""

_VISITS_OF_ACCOUNT = """
select coalesce(sum(v.visits) filter (where v.day >= $2), 0)::bigint as recent,
       coalesce(sum(v.visits), 0)::bigint as total
from referral_codes c
join code_visits v using (code)
where c.account_id = $1
"""

_ADD_VISITS = """
insert into code_visits as v (code, day, visits)
select * from unnest($1::text[], $2::date[], $3::bigint[])
on conflict (code, day) do update set visits = v.visits + excluded.visits
"""


@dataclass(frozen=True)
class CodeState:
    """A stored code's status and the code its owner uses now (``None``: no active code)."""

    status: str  # active, alias or revoked
    current_code: str | None

    @property
    def attributes(self) -> bool:
        """Whether a sign-up with this code is still attributed (active or alias)."""
        return self.status in ("active", "alias")


async def code_state(conn: Conn, code: str) -> CodeState | None:
    """The state of a code in its stored form; ``None`` if no account has it."""
    row = await conn.fetchrow(_CODE, code)
    if row is None:
        return None
    return CodeState(row["status"], row["current_code"])


async def visits_of_account(conn: Conn, account_id: str, since: date) -> tuple[int, int]:
    """Landing visits of every code the account has had: (from ``since`` on, in all)."""
    row = await conn.fetchrow(_VISITS_OF_ACCOUNT, account_id, since)
    assert row is not None  # an aggregate always returns a row
    return int(row["recent"]), int(row["total"])


async def add_visits(conn: Conn, counts: Mapping[tuple[str, date], int]) -> None:
    """Add buffered visit counts to ``code_visits`` (one statement for all of them)."""
    if not counts:
        return
    keys = list(counts)
    await conn.execute(
        _ADD_VISITS, [code for code, _ in keys], [day for _, day in keys], list(counts.values())
    )

"""Support rotates and revokes referral codes; the old code stays an alias unless revoked."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import asyncpg
import asyncpg.pool

from referral_ops.support import (
    CodeAlreadyRevoked,
    UnknownCode,
    WrongAccount,
    audit,
    checked_account,
    checked_actor,
    lock_account,
    parse_code,
)
from referral_program import codes
from referral_runtime.outbox import enqueue
from referral_runtime.referral_state import (
    Outbound,
    code_assigned_message,
    reattribute,
)

#: A 40-bit code collides rarely; this many misses in a row means ``randbits`` is broken.
_MAX_CODE_ATTEMPTS = 32


async def _new_active_code(
    conn: asyncpg.Connection, account_id: str, randbits: Callable[[int], int]
) -> str:
    for _ in range(_MAX_CODE_ATTEMPTS):
        code = codes.generate(randbits)
        inserted = await conn.fetchval(
            """insert into referral_codes (code, account_id, status) values ($1, $2, 'active')
               on conflict do nothing returning code""",
            code,
            account_id,
        )
        if inserted is not None:
            return str(inserted)
    raise RuntimeError(f"no unused code in {_MAX_CODE_ATTEMPTS} attempts: is randbits random?")


@dataclass(frozen=True)
class CodeRotated:
    account_id: str
    code: str  # stored form
    replaces: str | None  # the previous active code, now an alias


async def rotate_code(
    conn: asyncpg.Connection,
    account_id: str,
    *,
    actor: str,
    out: Outbound,
    randbits: Callable[[int], int],
) -> CodeRotated:
    """Give ``account_id`` a new active code; the old one becomes an alias that still attributes.

    The new code is announced (``referral_code.assigned`` with ``replaces``).
    """
    account_id = checked_account(account_id)
    actor = checked_actor(actor)
    async with conn.transaction():
        await lock_account(conn, account_id)
        old = await conn.fetchval(
            """update referral_codes set status = 'alias', retired_at = now()
               where account_id = $1 and status = 'active' returning code""",
            account_id,
        )
        new = await _new_active_code(conn, account_id, randbits)
        await enqueue(conn, [code_assigned_message(out, account_id, new, old)])
        await audit(
            conn,
            actor,
            "code.rotate",
            account_id,
            {"code": codes.display(new), "replaces": codes.display(old) if old else None},
        )
    return CodeRotated(account_id, new, old)


@dataclass(frozen=True)
class CodeRevoked:
    account_id: str
    code: str  # stored form
    was: str  # "active" or "alias"
    replacement: str | None  # the new active code when the active one was revoked
    #: Referees whose sign-up with the code, dated at or after the revocation, had been
    #: consumed before it: the code no longer attributes them.
    withdrawn: tuple[str, ...] = ()
    #: Of those, the ones left with no referral (the others are attributed by another code).
    unreferred: tuple[str, ...] = ()


# Sign-ups dated at or after the revocation that were consumed before it no longer attribute
# (codes.attributes; the consumer resolves later arrivals the same way when it inserts them).
# Through the referrer index: a code attributes only to its owner.
_WITHDRAW_LATER_SIGNUPS = """
update subscriptions s set code_outcome = 'revoked', referrer_account_id = null
from referral_codes c
where c.code = $1 and s.referrer_account_id = c.account_id and s.referral_code = c.code
  and s.created_at >= c.retired_at
returning s.account_id
"""


async def revoke_code(
    conn: asyncpg.Connection,
    raw_code: str,
    *,
    account_id: str | None = None,
    actor: str,
    out: Outbound,
    randbits: Callable[[int], int],
    tz: ZoneInfo,
) -> CodeRevoked:
    """Revoke a code so it attributes no sign-up made from now on.

    Revocation counts from this instant in business time (docs/rules.md, referral
    codes): a sign-up dated before it still attributes, however late it is consumed,
    and one dated at or after it does not, even if it was consumed before; such
    sign-ups are withdrawn here and their referrals recomputed (``tz``: the program
    time zone). Decided referrals are history and keep their attribution.

    ``account_id``, when given, must own the code (a guard against typos).
    Revoking the active code gives the account a new one, announced with
    ``replaces`` = the revoked code: an account always has one usable code.
    """
    code = parse_code(raw_code)
    if account_id is not None:
        account_id = checked_account(account_id)
    actor = checked_actor(actor)
    shown = codes.display(code)
    async with conn.transaction():
        owner = await conn.fetchval("select account_id from referral_codes where code = $1", code)
        if owner is None:
            raise UnknownCode(f"code {shown} is not known: no account has it")
        if account_id is not None and owner != account_id:
            raise WrongAccount(
                f"code {shown} belongs to account {owner}, not {account_id}; check the code"
            )
        # Account first, then its codes: the same lock order as rotate_code.
        await lock_account(conn, owner)
        row = await conn.fetchrow(
            "select status, retired_at from referral_codes where code = $1 for update", code
        )
        assert row is not None  # codes are never deleted
        if row["status"] == "revoked":
            raise CodeAlreadyRevoked(
                f"code {shown} of account {owner} is already revoked "
                f"(since {row['retired_at']:%Y-%m-%d %H:%M} UTC); it attributes nothing"
            )
        await conn.execute(
            "update referral_codes set status = 'revoked', retired_at = now() where code = $1",
            code,
        )
        withdrawn = sorted(
            {r["account_id"] for r in await conn.fetch(_WITHDRAW_LATER_SIGNUPS, code)}
        )
        # The owner is held FOR UPDATE: no batch recomputes one of its referees meanwhile.
        redone = await reattribute(conn, withdrawn, held={owner}, tz=tz)
        replacement = None
        if row["status"] == "active":
            replacement = await _new_active_code(conn, owner, randbits)
            await enqueue(conn, [code_assigned_message(out, owner, replacement, code)])
        await audit(
            conn,
            actor,
            "code.revoke",
            owner,
            {
                "code": shown,
                "was": row["status"],
                "replacement": codes.display(replacement) if replacement else None,
                "withdrawn": withdrawn,
                "unreferred": list(redone.forgotten),
            },
        )
    return CodeRevoked(owner, code, row["status"], replacement, tuple(withdrawn), redone.forgotten)

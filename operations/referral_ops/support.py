"""What every support operation shares: its errors, input checks, the account lock and the audit log.

The operations themselves are one module each: ``code_changes``, ``payees``,
``partners``, ``legacy``; ``listing`` is the read model.

Every change runs in one transaction that also writes an ``audit_log`` row
(who, what, on what, details, when). Wrong input raises a :class:`SupportError`
whose message says what is wrong and how to fix it; nothing is changed then.
The functions take an asyncpg connection and never read the clock or the
environment themselves: ``now``, ``randbits`` and the actor are passed in.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg
import asyncpg.pool

from referral_program import codes


class SupportError(Exception):
    """Input a person has to correct; the message says what is wrong and how to fix it."""


class UnknownAccount(SupportError):
    def __init__(self, account_id: str) -> None:
        super().__init__(f"account {account_id} is not known (no billing event seen for it)")


class UnknownCode(SupportError):
    """No account has this code."""


class CodeAlreadyRevoked(SupportError):
    """The code was revoked before; it attributes nothing already."""


class WrongAccount(SupportError):
    """The code or referral belongs to another account than the one given."""


class UnknownReferral(SupportError):
    """The referee was never referred (no subscription with a known code)."""


class PayoutAlreadyDecided(SupportError):
    """The referral's payout is history; what it was paid to can't change."""


class InvalidInput(SupportError):
    """A value that is malformed on its own (empty id, malformed code, ...)."""


class LegacyImportError(SupportError):
    """Every problem found in a legacy CSV file, one ``line N: ...`` entry each."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        noun = "problem" if len(self.errors) == 1 else "problems"
        super().__init__(
            f"{len(self.errors)} {noun}, nothing was imported:\n  " + "\n  ".join(self.errors)
        )


class CodeBackfillError(SupportError):
    """Every problem found in billing's export of accounts, one ``line N: ...`` entry each."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        noun = "problem" if len(self.errors) == 1 else "problems"
        super().__init__(
            f"{len(self.errors)} {noun}, no code was assigned:\n  " + "\n  ".join(self.errors)
        )


def csv_text(data: bytes, error: Callable[[list[str]], SupportError], *, advice: str) -> str:
    """A CSV file's text: a UTF-8 byte-order mark is allowed, anything not UTF-8 is refused
    with ``error([...])`` naming the line and the byte, then ``advice`` (how to fix it)."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise error(
            [f"line {line}: not UTF-8 text (byte 0x{data[exc.start]:02X}); {advice}"]
        ) from None


def checked_actor(actor: str | None) -> str:
    """The actor recorded in the audit log; empty is refused (someone must own the change)."""
    value = (actor or "").strip()
    if not value:
        raise InvalidInput(
            "who is doing this? pass --actor NAME or set REFERRALS_ACTOR (it goes in the audit log)"
        )
    return value


def checked_account(account_id: str, what: str = "account") -> str:
    """An account id as given by a person: surrounding spaces dropped, empty refused."""
    value = account_id.strip()
    if not value:
        raise InvalidInput(f"the {what} id is empty")
    return value


def parse_code(raw: str) -> str:
    """The stored form of a code typed by a person, or :class:`InvalidInput` saying why not."""
    try:
        code: str = codes.normalise(raw)
    except codes.InvalidCode as exc:
        raise InvalidInput(f"{raw!r} is not a referral code: {exc}") from None
    return code


async def audit(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
    actor: str,
    action: str,
    subject: str,
    details: dict[str, Any],
) -> None:
    """Record who did what on what, in the caller's transaction."""
    # Sent as text and cast, so it works whether or not the connection has a jsonb codec.
    await conn.execute(
        """insert into audit_log (actor, action, subject, details)
           values ($1, $2, $3, $4::text::jsonb)""",
        actor,
        action,
        subject,
        json.dumps(details, sort_keys=True, default=str),
    )


async def lock_account(conn: asyncpg.Connection, account_id: str) -> asyncpg.Record:
    """The account row, locked for the caller's transaction; :class:`UnknownAccount` if none."""
    row = await conn.fetchrow(
        "select account_id, is_partner, payee from accounts where account_id = $1 for update",
        account_id,
    )
    if row is None:
        raise UnknownAccount(account_id)
    return row

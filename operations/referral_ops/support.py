"""Support's operations (SPEC §5): codes, payees, partners, legacy imports, and the referral list.

Every change runs in one transaction that also writes an ``audit_log`` row
(who, what, on what, details, when). Wrong input raises a :class:`SupportError`
whose message says what is wrong and how to fix it; nothing is changed then.
The functions take an asyncpg connection and never read the clock or the
environment themselves: ``now``, ``randbits`` and the actor are passed in.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import asyncpg.pool

from referral_program import calendar, codes
from referral_program.table import REWARD_CENTS, Outcome, Status, best_family
from referral_runtime.outbox import enqueue
from referral_runtime.referral_state import (
    REFERRAL_STATE_LOCK,
    Outbound,
    code_assigned_message,
    credit_earned_message,
    recompute_referrals,
)
from referral_runtime.settings import Settings

#: A 40-bit code collides rarely; this many misses in a row means ``randbits`` is broken.
_MAX_CODE_ATTEMPTS = 32
_MAX_PAYEE_LENGTH = 200
_BIGINT_MAX = 2**63 - 1


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


async def _audit(
    conn: asyncpg.Connection, actor: str, action: str, subject: str, details: dict[str, Any]
) -> None:
    # Sent as text and cast, so it works whether or not the connection has a jsonb codec.
    await conn.execute(
        """insert into audit_log (actor, action, subject, details)
           values ($1, $2, $3, $4::text::jsonb)""",
        actor,
        action,
        subject,
        json.dumps(details, sort_keys=True, default=str),
    )


async def _lock_account(conn: asyncpg.Connection, account_id: str) -> asyncpg.Record:
    row = await conn.fetchrow(
        "select account_id, is_partner, payee from accounts where account_id = $1 for update",
        account_id,
    )
    if row is None:
        raise UnknownAccount(account_id)
    return row


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


# --- codes ---------------------------------------------------------------------------------


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
        await _lock_account(conn, account_id)
        old = await conn.fetchval(
            """update referral_codes set status = 'alias', retired_at = now()
               where account_id = $1 and status = 'active' returning code""",
            account_id,
        )
        new = await _new_active_code(conn, account_id, randbits)
        await enqueue(conn, [code_assigned_message(out, account_id, new, old)])
        await _audit(
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


async def revoke_code(
    conn: asyncpg.Connection,
    raw_code: str,
    *,
    account_id: str | None = None,
    actor: str,
    out: Outbound,
    randbits: Callable[[int], int],
) -> CodeRevoked:
    """Revoke a code so it attributes nothing from now on.

    ``account_id``, when given, must own the code (a guard against typos).
    Revoking the active code gives the account a new one, announced with
    ``replaces`` = the revoked code: an account always has one usable code.
    Referrals already made with the code keep their attribution.
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
        await _lock_account(conn, owner)
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
        replacement = None
        if row["status"] == "active":
            replacement = await _new_active_code(conn, owner, randbits)
            await enqueue(conn, [code_assigned_message(out, owner, replacement, code)])
        await _audit(
            conn,
            actor,
            "code.revoke",
            owner,
            {
                "code": shown,
                "was": row["status"],
                "replacement": codes.display(replacement) if replacement else None,
            },
        )
    return CodeRevoked(owner, code, row["status"], replacement)


# --- payee ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PayeeSet:
    referrer_account_id: str
    payee: str
    referee_account_id: str | None  # None: the referrer's default payee
    previous: str | None
    #: For the default payee: undecided referrals that follow it, those with their own payee,
    #: and decided ones (which keep the payee they were decided with).
    following: int = 0
    own_payee: int = 0
    decided: int = 0


def checked_payee(payee: str) -> str:
    """A payee as typed: trimmed, not empty, printable, at most 200 characters."""
    value = payee.strip()
    if not value:
        raise InvalidInput("the payee is empty; give who receives the cash")
    if len(value) > _MAX_PAYEE_LENGTH:
        raise InvalidInput(f"the payee is {len(value)} characters; at most {_MAX_PAYEE_LENGTH}")
    if not value.isprintable():
        raise InvalidInput("the payee contains control characters (tabs, newlines, ...)")
    return value


async def set_payee(
    conn: asyncpg.Connection,
    referrer_account_id: str,
    payee: str,
    *,
    referee_account_id: str | None = None,
    actor: str,
) -> PayeeSet:
    """Set who receives the cash: for one referral (``referee_account_id``) or by default for
    all of the referrer's referrals. A referral whose payout was decided can't change."""
    referrer = checked_account(referrer_account_id, "referrer account")
    referee = checked_account(referee_account_id, "referee account") if referee_account_id else None
    payee = checked_payee(payee)
    actor = checked_actor(actor)
    async with conn.transaction():
        # Row locks keep this and a payout decision apart: the scheduler locks the referral
        # row it decides (FOR UPDATE), and this locks the referrer's account row.
        account = await _lock_account(conn, referrer)
        if referee is None:
            counts = await conn.fetchrow(
                """select count(*) filter (where p.referral_id is null and r.payee is null)
                              as following,
                          count(*) filter (where p.referral_id is null and r.payee is not null)
                              as own_payee,
                          count(p.referral_id) as decided
                   from referrals r left join payouts p using (referral_id)
                   where r.referrer_account_id = $1""",
                referrer,
            )
            assert counts is not None
            await conn.execute(
                "update accounts set payee = $2 where account_id = $1", referrer, payee
            )
            result = PayeeSet(
                referrer,
                payee,
                None,
                account["payee"],
                following=counts["following"],
                own_payee=counts["own_payee"],
                decided=counts["decided"],
            )
            subject = referrer
        else:
            row = await conn.fetchrow(
                """select referral_id, referrer_account_id, payee from referrals
                   where referee_account_id = $1 for update""",
                referee,
            )
            if row is None:
                raise UnknownReferral(
                    f"account {referee} was not referred by anyone "
                    "(no subscription of it carried a known code)"
                )
            if row["referrer_account_id"] != referrer:
                raise WrongAccount(
                    f"account {referee} was referred by {row['referrer_account_id']}, "
                    f"not by {referrer}"
                )
            # A separate statement: after waiting for a deciding scheduler's lock, it sees
            # the payout that transaction committed.
            decided = await conn.fetchrow(
                "select as_of, outcome from payouts where referral_id = $1", row["referral_id"]
            )
            if decided is not None:
                raise PayoutAlreadyDecided(
                    f"payout already decided on {decided['as_of']:%Y-%m-%d} "
                    f"({decided['outcome']}); payee can't change"
                )
            await conn.execute(
                "update referrals set payee = $2, updated_at = now() where referral_id = $1",
                row["referral_id"],
                payee,
            )
            result = PayeeSet(referrer, payee, referee, row["payee"])
            subject = referrer
        await _audit(
            conn,
            actor,
            "payee.set",
            subject,
            {"referee": referee, "payee": payee, "previous": result.previous},
        )
    return result


# --- partners ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PartnerSet:
    account_id: str
    is_partner: bool
    changed: bool  # False: it already was so; nothing was written
    referrals_changed: int = 0  # undecided referrals whose state the flip changed
    decided: int = 0  # decided referrals, which the flip does not touch


async def set_partner(
    conn: asyncpg.Connection, account_id: str, is_partner: bool, *, actor: str
) -> PartnerSet:
    """Make an account a partner (its undecided referrals become ``partner_ineligible``) or
    not (they are recomputed back). Decided referrals are history and stay as they are."""
    account_id = checked_account(account_id)
    actor = checked_actor(actor)
    async with conn.transaction():
        # Recomputing reads other accounts' facts; serialise with the consumer's batches.
        await conn.execute("select pg_advisory_xact_lock($1)", REFERRAL_STATE_LOCK)
        account = await _lock_account(conn, account_id)
        if account["is_partner"] == is_partner:
            return PartnerSet(account_id, is_partner, changed=False)
        await conn.execute(
            "update accounts set is_partner = $2 where account_id = $1", account_id, is_partner
        )
        changed = (await recompute_referrals(conn, [], [account_id])).total()
        # Through the referrals' referrer index: payouts has none on the referrer (an index
        # there would cost every decision of a pass a write, for this rare count).
        decided = await conn.fetchval(
            "select count(*) from referrals r join payouts p using (referral_id)"
            " where r.referrer_account_id = $1",
            account_id,
        )
        await _audit(
            conn,
            actor,
            "partner.set" if is_partner else "partner.unset",
            account_id,
            {"referrals_changed": changed, "decided_unchanged": decided},
        )
    return PartnerSet(account_id, is_partner, True, changed, decided)


# --- the referral list (CLI `referrals list` and the HTTP read API) -------------------------


@dataclass(frozen=True)
class ReferralLine:
    """One referral as support and the referrer see it; money in integer cents."""

    referee_account_id: str
    plan_family: str | None  # the family the reward is (or would be) based on
    plans: tuple[str, ...]  # every plan family the referee has subscribed to
    status: str  # due/forfeited/ineligible when decided, else pending/qualified/ineligible
    reason: str | None
    amount_cents: int  # decided: the payout; undecided: what it earns if it stays so
    currency: str
    referral_code: str  # display form
    referred_on: date
    first_payment_on: date | None
    eligible_on: date | None
    pay_by: date | None
    decided: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "referee_account_id": self.referee_account_id,
            "plan_family": self.plan_family,
            "plans": list(self.plans),
            "status": self.status,
            "reason": self.reason,
            "amount_cents": self.amount_cents,
            "currency": self.currency,
            "referral_code": self.referral_code,
            "referred_on": self.referred_on.isoformat(),
            "first_payment_on": _iso(self.first_payment_on),
            "eligible_on": _iso(self.eligible_on),
            "pay_by": _iso(self.pay_by),
            "decided": self.decided,
        }


@dataclass(frozen=True)
class ReferralsPage:
    """A referrer's code, link and referrals: ``referrals list`` and the read API."""

    account_id: str
    code: str | None  # active code, display form
    link: str | None
    referrals: list[ReferralLine]

    def to_json(self) -> dict[str, Any]:
        return {
            "account_id": self.account_id,
            "code": self.code,
            "link": self.link,
            "referrals": [line.to_json() for line in self.referrals],
        }


def _iso(day: date | None) -> str | None:
    return day.isoformat() if day else None


_ACCOUNT_CODE = """
select a.account_id, c.code
from accounts a
left join referral_codes c on c.account_id = a.account_id and c.status = 'active'
where a.account_id = $1
"""

_REFERRALS_OF = """
select r.referee_account_id, r.referral_code, r.status, r.reason, r.attributed_at,
       r.first_payment_at, r.currency,
       p.outcome, p.reason as decided_reason, p.plan_family as decided_plan, p.amount_cents,
       p.currency as decided_currency, p.eligible_on, p.pay_by,
       f.plans, f.held
from referrals r
left join payouts p using (referral_id)
cross join lateral (
    select coalesce(array_agg(distinct s.plan_family), '{}') as plans,
           coalesce(array_agg(distinct s.plan_family) filter (
               where not exists (select 1 from cancellations c
                                 where c.subscription_id = s.subscription_id
                                   and c.effective_at <= $2)), '{}') as held
    from subscriptions s
    where s.account_id = r.referee_account_id
) f
where r.referrer_account_id = $1
order by r.attributed_at, r.referee_account_id
"""


async def referrals_page(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
    account_id: str,
    settings: Settings,
    now: datetime,
) -> ReferralsPage:
    """The referrals of ``account_id`` as of ``now``; :class:`UnknownAccount` if never seen."""
    account_id = checked_account(account_id)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        account = await conn.fetchrow(_ACCOUNT_CODE, account_id)
        if account is None:
            raise UnknownAccount(account_id)
        rows = await conn.fetch(_REFERRALS_OF, account_id, now)
    code = account["code"]
    return ReferralsPage(
        account_id=account_id,
        code=codes.display(code) if code else None,
        link=codes.link(settings.referral_link_base, code) if code else None,
        referrals=[referral_line(row, settings.tz) for row in rows],
    )


def referral_line(row: asyncpg.Record | dict[str, Any], tz: ZoneInfo) -> ReferralLine:
    """One row of the referral query as a :class:`ReferralLine` (pure)."""
    first_payment_at: datetime | None = row["first_payment_at"]
    common = {
        "referee_account_id": row["referee_account_id"],
        "plans": tuple(sorted(row["plans"])),
        "referral_code": codes.display(row["referral_code"]),
        "referred_on": row["attributed_at"].astimezone(tz).date(),
        "first_payment_on": first_payment_at.astimezone(tz).date() if first_payment_at else None,
    }
    if row["outcome"] is not None:
        return ReferralLine(
            plan_family=row["decided_plan"],
            status=row["outcome"],
            reason=row["decided_reason"],
            amount_cents=row["amount_cents"],
            currency=row["decided_currency"],
            eligible_on=row["eligible_on"],
            pay_by=row["pay_by"] if row["outcome"] == Outcome.DUE else None,
            decided=True,
            **common,
        )
    family = best_family(row["held"])
    eligible = pay_by = None
    if row["status"] == Status.QUALIFIED and first_payment_at is not None:
        eligible = calendar.eligible_on(first_payment_at, tz)
        pay_by = calendar.pay_by(eligible)
    return ReferralLine(
        plan_family=family,
        status=row["status"],
        reason=row["reason"],
        amount_cents=REWARD_CENTS[family] if family and row["status"] != Status.INELIGIBLE else 0,
        currency=row["currency"],
        eligible_on=eligible,
        pay_by=pay_by,
        decided=False,
        **common,
    )


# --- legacy program import -----------------------------------------------------------------

_COLUMNS = ("referrer_account_id", "referee_account_id", "monthly_credit_cents")
_COLUMN_ALIASES = {"referrer": "referrer_account_id", "referee": "referee_account_id"}
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_INTEGER = re.compile(r"^[+-]?[0-9]+$")


@dataclass(frozen=True)
class LegacyRow:
    """One legacy referral from the CSV, with the line it came from."""

    line: int
    referrer_account_id: str
    referee_account_id: str
    monthly_credit_cents: int
    currency: str


def decode_legacy_csv(data: bytes) -> str:
    """The file's text; a UTF-8 byte-order mark is allowed, anything not UTF-8 is refused."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise LegacyImportError(
            [
                f"line {line}: not UTF-8 text (byte 0x{data[exc.start]:02X}); "
                "save the file as CSV UTF-8 and import it again"
            ]
        ) from None


def _header(names: list[str]) -> tuple[dict[str, int] | None, str | None]:
    found = [n.strip().lower() for n in names]
    canonical = [_COLUMN_ALIASES.get(n, n) for n in found]
    problems = []
    missing = [c for c in _COLUMNS if c not in canonical]
    if missing:
        problems.append("missing " + ", ".join(missing))
    unknown = [n for n, c in zip(found, canonical, strict=True) if c not in (*_COLUMNS, "currency")]
    if unknown:
        problems.append("unknown " + ", ".join(repr(n) for n in unknown))
    duplicated = sorted({c for c in canonical if canonical.count(c) > 1})
    if duplicated:
        problems.append("repeated " + ", ".join(duplicated))
    if problems:
        return None, (
            "line 1: wrong header ("
            + "; ".join(problems)
            + f"): expected {','.join(_COLUMNS)} with an optional currency column "
            + "(referrer,referee,monthly_credit_cents also accepted), found "
            + repr(",".join(names))
        )
    return {c: i for i, c in enumerate(canonical)}, None


def _cents(value: str) -> tuple[int | None, str | None]:
    text = value.strip()
    if not text:
        return None, "monthly_credit_cents is empty"
    if not _INTEGER.match(text):
        try:
            amount = Decimal(text)
        except InvalidOperation:
            return None, f"monthly_credit_cents {text!r} is not a number of cents"
        if amount.is_finite() and amount > 0:
            hint = amount * 100
            as_cents = (
                f" (for {text} write {int(hint)})" if hint == hint.to_integral_value() else ""
            )
            return None, (
                f"monthly_credit_cents {text!r} is not a whole number: cents are integers{as_cents}"
            )
        return None, f"monthly_credit_cents {text!r} is not a whole number: cents are integers"
    cents = int(text)
    if cents <= 0:
        return None, f"monthly_credit_cents must be more than 0, found {cents}"
    if cents > _BIGINT_MAX:
        return None, f"monthly_credit_cents {cents} is too large"
    return cents, None


def parse_legacy_csv(text: str, program_currency: str) -> list[LegacyRow]:
    """Every row of a legacy referral CSV, validated; :class:`LegacyImportError` lists every
    bad line (numbered from 1, the header) so the whole file can be fixed in one go.

    Header ``referrer_account_id,referee_account_id,monthly_credit_cents`` (or
    ``referrer,referee,...``) in any order, optional ``currency`` (default and
    only accepted value: ``program_currency``). Blank lines are skipped.
    """
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        while header is not None and not any(f.strip() for f in header):
            header = next(reader, None)
        if header is None:
            raise LegacyImportError(
                [f"the file is empty: expected the header {','.join(_COLUMNS)} and rows"]
            )
        columns, problem = _header(header)
        if columns is None:
            raise LegacyImportError([problem or "line 1: wrong header"])
        rows: list[LegacyRow] = []
        errors: list[str] = []
        first_line_of: dict[str, int] = {}
        for fields in reader:
            line = reader.line_num
            if not any(f.strip() for f in fields):
                continue
            if len(fields) != len(header):
                errors.append(f"line {line}: expected {len(header)} fields, found {len(fields)}")
                continue
            row_errors = []
            referrer = fields[columns["referrer_account_id"]].strip()
            referee = fields[columns["referee_account_id"]].strip()
            if not referrer:
                row_errors.append("referrer_account_id is empty")
            if not referee:
                row_errors.append("referee_account_id is empty")
            cents, cents_error = _cents(fields[columns["monthly_credit_cents"]])
            if cents_error:
                row_errors.append(cents_error)
            currency = program_currency
            if "currency" in columns:
                currency = fields[columns["currency"]].strip().upper() or program_currency
                if not _CURRENCY.match(currency):
                    row_errors.append(f"currency {currency!r} is not an ISO 4217 code like USD")
                elif currency != program_currency:
                    row_errors.append(
                        f"currency {currency} is not the program currency {program_currency}"
                    )
            if referrer and referrer == referee:
                row_errors.append(
                    f"referrer and referee are the same account ({referee}); "
                    "nobody earns for referring themselves"
                )
            if referee in first_line_of:
                row_errors.append(
                    f"referee {referee} is already on line {first_line_of[referee]}; "
                    "a referee has one legacy referral"
                )
            elif referee:
                first_line_of[referee] = line
            if row_errors:
                errors.extend(f"line {line}: {e}" for e in row_errors)
            elif cents is not None:
                rows.append(LegacyRow(line, referrer, referee, cents, currency))
    except csv.Error as exc:
        raise LegacyImportError([f"line {reader.line_num}: not valid CSV ({exc})"]) from None
    if errors:
        raise LegacyImportError(errors)
    if not rows:
        raise LegacyImportError(["the file has a header but no rows"])
    return rows


@dataclass(frozen=True)
class LegacyImported:
    file: str
    rows: int
    new: int
    credits: int  # credits backfilled for invoices paid before the import

    @property
    def already_imported(self) -> int:
        return self.rows - self.new


_INSERT_LEGACY = """
insert into legacy_referrals (referee_account_id, referrer_account_id, monthly_credit_cents,
    currency, imported_by)
select e, r, c, cur, $5 from unnest($1::text[], $2::text[], $3::bigint[], $4::text[])
    as t(e, r, c, cur)
on conflict (referee_account_id) do nothing
returning referee_account_id
"""

_BACKFILL_CREDITS = """
insert into legacy_credits (invoice_id, referee_account_id, referrer_account_id, amount_cents,
    currency)
select i.invoice_id, i.account_id, l.referrer_account_id, l.monthly_credit_cents, l.currency
from invoices i
join legacy_referrals l on l.referee_account_id = i.account_id
where i.account_id = any($1::text[])
  and i.amount_paid_cents > 0
  and ($2::timestamptz is null or i.paid_at >= $2)
order by i.paid_at, i.invoice_id
on conflict do nothing
returning invoice_id, referee_account_id, referrer_account_id, amount_cents, currency
"""


async def import_legacy(
    conn: asyncpg.Connection,
    rows: Sequence[LegacyRow],
    *,
    file: str,
    actor: str,
    out: Outbound,
    credit_from: datetime | None = None,
) -> LegacyImported:
    """Import legacy referrals, all or nothing, and credit the invoices already paid.

    Re-importing identical rows changes nothing. A row whose referee already has
    a *different* legacy referral fails the whole import. Every known paid
    invoice of an imported referee (from ``credit_from`` on, if given) gets one
    ``referral.credit.earned``; the consumer credits the invoices that arrive later.
    """
    actor = checked_actor(actor)
    if not rows:
        raise LegacyImportError(["the file has a header but no rows"])
    referees = [r.referee_account_id for r in rows]
    async with conn.transaction():
        # The consumer credits new invoices under this lock: holding it here means every
        # invoice is seen either by this backfill or by a batch that sees these rows.
        await conn.execute("select pg_advisory_xact_lock($1)", REFERRAL_STATE_LOCK)
        existing = {
            r["referee_account_id"]: r
            for r in await conn.fetch(
                """select referee_account_id, referrer_account_id, monthly_credit_cents,
                          currency, imported_at, imported_by
                   from legacy_referrals where referee_account_id = any($1::text[])""",
                referees,
            )
        }
        errors = []
        for row in rows:
            had = existing.get(row.referee_account_id)
            if had is not None and (
                had["referrer_account_id"],
                had["monthly_credit_cents"],
                had["currency"],
            ) != (row.referrer_account_id, row.monthly_credit_cents, row.currency):
                errors.append(
                    f"line {row.line}: referee {row.referee_account_id} already has a legacy "
                    f"referral from {had['referrer_account_id']} at "
                    f"{had['monthly_credit_cents']} {had['currency']} cents a month "
                    f"(imported {had['imported_at']:%Y-%m-%d} by {had['imported_by']}); "
                    "remove the row or fix it"
                )
        if errors:
            raise LegacyImportError(errors)
        new = await conn.fetch(
            _INSERT_LEGACY,
            referees,
            [r.referrer_account_id for r in rows],
            [r.monthly_credit_cents for r in rows],
            [r.currency for r in rows],
            actor,
        )
        credits = await conn.fetch(_BACKFILL_CREDITS, referees, credit_from)
        await enqueue(conn, [credit_earned_message(out.credit_earned, c) for c in credits])
        result = LegacyImported(file, len(rows), len(new), len(credits))
        await _audit(
            conn,
            actor,
            "legacy.import",
            file,
            {
                "file": file,
                "rows": result.rows,
                "new": result.new,
                "already_imported": result.already_imported,
                "credits_backfilled": result.credits,
                "credit_from": credit_from.isoformat() if credit_from else None,
            },
        )
    return result

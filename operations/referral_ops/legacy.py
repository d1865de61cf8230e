"""The legacy monthly-credit program: CSV import of legacy referrals and their credits."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation

import asyncpg
import asyncpg.pool

from referral_ops.support import (
    LegacyImportError,
    audit,
    checked_actor,
    csv_text,
)
from referral_runtime.outbox import enqueue
from referral_runtime.referral_state import (
    LEGACY_IMPORT_LOCK,
    Outbound,
    credit_earned_message,
)

_BIGINT_MAX = 2**63 - 1


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
    """The file's text (UTF-8, a byte-order mark allowed), or :class:`LegacyImportError`."""
    return csv_text(
        data, LegacyImportError, advice="save the file as CSV UTF-8 and import it again"
    )


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
class LegacyCredit:
    """A credit for an invoice already paid when its referral was imported."""

    invoice_id: str
    referee_account_id: str
    referrer_account_id: str
    amount_cents: int
    currency: str


@dataclass(frozen=True)
class KeptCreditStart:
    """A referee imported before with another credit start, which it keeps."""

    referee_account_id: str
    credit_from: datetime


@dataclass(frozen=True)
class LegacyImported:
    file: str
    rows: int
    new: int
    credits: int  # credits backfilled for invoices paid before the import
    #: The referees imported now (not already imported), in file order.
    imported: tuple[LegacyRow, ...] = ()
    #: The backfilled credits, oldest invoice first.
    credited: tuple[LegacyCredit, ...] = ()
    credit_from: datetime | None = None
    #: Nothing was written: this is what the import would do.
    dry_run: bool = False
    #: Referees already imported with another credit start: nothing already imported
    #: changes, so they keep theirs (in file order).
    kept_credit_from: tuple[KeptCreditStart, ...] = ()

    @property
    def already_imported(self) -> int:
        return self.rows - self.new


_INSERT_LEGACY = """
insert into legacy_referrals (referee_account_id, referrer_account_id, monthly_credit_cents,
    currency, imported_by, credit_from)
select e, r, c, cur, $5, $6 from unnest($1::text[], $2::text[], $3::bigint[], $4::text[])
    as t(e, r, c, cur)
on conflict (referee_account_id) do nothing
returning referee_account_id
"""

# Only the referees imported now, from the credit start stored with each: re-importing a
# file (with another --credit-from too) credits nothing already imported.
_BACKFILL_CREDITS = """
insert into legacy_credits (invoice_id, referee_account_id, referrer_account_id, amount_cents,
    currency)
select i.invoice_id, i.account_id, l.referrer_account_id, l.monthly_credit_cents, l.currency
from unnest($1::text[]) as w(account_id)
join invoices i using (account_id)
join legacy_referrals l on l.referee_account_id = i.account_id
where i.amount_paid_cents > 0 and i.paid_at >= l.credit_from
order by i.paid_at, i.invoice_id
on conflict do nothing
returning invoice_id, referee_account_id, referrer_account_id, amount_cents, currency
"""

# One reward per referee, ever: a referee with a cash referral (any status, decided or not)
# cannot also earn legacy credit.
_CASH_REFERRALS = """
select r.referee_account_id, r.referrer_account_id, coalesce(p.outcome, r.status) as status
from unnest($1::text[]) as w(referee_account_id)
join referrals r using (referee_account_id)
left join payouts p using (referral_id)
"""


async def import_legacy(
    conn: asyncpg.Connection,
    rows: Sequence[LegacyRow],
    *,
    file: str,
    actor: str,
    out: Outbound,
    credit_from: datetime,
    dry_run: bool = False,
) -> LegacyImported:
    """Import legacy referrals, all or nothing, and credit the invoices already paid.

    One reward per referee, ever: a row whose referee already has a cash referral,
    or a *different* legacy referral, fails the whole import, each such row listed.
    Re-importing rows changes nothing already imported, whatever ``credit_from``:
    those referees keep the credit start they were imported with (listed in the
    result when it differs). ``credit_from`` is stored with each new row: every
    paid invoice of the referee from then on gets one ``referral.credit.earned``,
    the known ones now and the later ones by the consumer, however late it applies
    them; the old system credited the invoices before it.

    ``dry_run`` does the whole import in a transaction that is rolled back: the
    result says what would be imported and credited, and nothing is written
    (no rows, no outbox message, no audit entry).
    """
    actor = checked_actor(actor)
    if not rows:
        raise LegacyImportError(["the file has a header but no rows"])
    referees = [r.referee_account_id for r in rows]
    try:
        return await _import(conn, rows, referees, file, actor, out, credit_from, dry_run)
    except _DryRunDone as done:
        return done.result


class _DryRunDone(Exception):
    """Raised out of the import's transaction to roll a dry run back."""

    def __init__(self, result: LegacyImported) -> None:
        super().__init__("dry run")
        self.result = result


async def _import(
    conn: asyncpg.Connection,
    rows: Sequence[LegacyRow],
    referees: list[str],
    file: str,
    actor: str,
    out: Outbound,
    credit_from: datetime,
    dry_run: bool,
) -> LegacyImported:
    async with conn.transaction():
        # See LEGACY_IMPORT_LOCK: no invoice is credited twice or missed.
        await conn.execute("select pg_advisory_xact_lock($1)", LEGACY_IMPORT_LOCK)
        existing = {
            r["referee_account_id"]: r
            for r in await conn.fetch(
                """select referee_account_id, referrer_account_id, monthly_credit_cents,
                          currency, imported_at, imported_by, credit_from
                   from legacy_referrals where referee_account_id = any($1::text[])""",
                referees,
            )
        }
        cash = {
            r["referee_account_id"]: r
            for r in await conn.fetch(_CASH_REFERRALS, [r for r in referees if r not in existing])
        }
        errors = []
        for row in rows:
            referral = cash.get(row.referee_account_id)
            if referral is not None:
                errors.append(
                    f"line {row.line}: referee {row.referee_account_id} already has a cash "
                    f"referral from {referral['referrer_account_id']} "
                    f"(status {referral['status']}); one reward per referee: remove the row"
                )
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
            credit_from,
        )
        fresh = {r["referee_account_id"] for r in new}
        credits = await conn.fetch(_BACKFILL_CREDITS, [r for r in referees if r in fresh])
        await enqueue(conn, [credit_earned_message(out.credit_earned, c) for c in credits])
        kept = tuple(
            KeptCreditStart(r.referee_account_id, had["credit_from"])
            for r in rows
            if (had := existing.get(r.referee_account_id)) is not None
            and had["credit_from"] != credit_from
        )
        result = LegacyImported(
            file,
            len(rows),
            len(new),
            len(credits),
            imported=tuple(r for r in rows if r.referee_account_id in fresh),
            credited=tuple(
                LegacyCredit(
                    c["invoice_id"],
                    c["referee_account_id"],
                    c["referrer_account_id"],
                    c["amount_cents"],
                    c["currency"],
                )
                for c in credits
            ),
            credit_from=credit_from,
            dry_run=dry_run,
            kept_credit_from=kept,
        )
        if dry_run:
            raise _DryRunDone(result)
        await audit(
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
                "credit_from": credit_from.isoformat(),
                "kept_credit_from": [k.referee_account_id for k in kept],
            },
        )
    return result

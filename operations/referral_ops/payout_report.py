"""Finance's and support's view of the due payouts: `referrals payouts`.

Every due payout with its referrer, payee, referee, amount, ``eligible_on``,
``pay_by``, current attempt, status (``overdue`` for a due one whose ``pay_by``
day has ended), what finance reported (paid date and reference, or the
failure), and totals per month of ``eligible_on`` and status. Rendered as an
aligned table, as JSON (integer cents, ISO dates) or as CSV a spreadsheet
opens as it is:

- UTF-8 with a byte order mark (so Excel reads non-ASCII payees right; other
  programs ignore it), comma-separated, CRLF line ends (RFC 4180), one header row;
- dates ISO 8601 (``2027-04-21``), times RFC 3339 in UTC;
- ``amount`` a plain decimal (``1000.00``: a dot, no symbol, no thousands
  separator) beside ``amount_cents``, the exact integer;
- a text cell that a spreadsheet would read as a formula (starting with ``=``,
  ``+``, ``-``, ``@``, a tab or a carriage return) is prefixed with ``'``.

The CSV holds the payouts only; the totals are in the table and JSON forms
(a spreadsheet sums the rows itself).
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import asyncpg
import asyncpg.pool

from referral_ops.support import InvalidInput
from referral_program.payouts import shown_status
from referral_program.table import OVERDUE, PayoutStatus, format_money

#: What ``--status`` accepts: the stored statuses and ``overdue``.
STATUSES = (
    PayoutStatus.DUE.value,
    OVERDUE,
    PayoutStatus.FAILED.value,
    PayoutStatus.PAID.value,
    PayoutStatus.MISMATCHED.value,
    PayoutStatus.PAID_TWICE.value,
)


@dataclass(frozen=True)
class PayoutLine:
    """One due payout as finance sees it; money in integer cents."""

    payout_id: UUID
    referrer_account_id: str
    payee: str
    referee_account_id: str
    plan_family: str
    amount_cents: int
    currency: str
    eligible_on: date
    pay_by: date
    attempt: int
    status: str  # a PayoutStatus value, or overdue
    paid_at: datetime | None
    paid_on: date | None  # paid_at in the program time zone
    paid_attempt: int | None
    paid_amount_cents: int | None
    paid_currency: str | None
    reference: str | None
    failed_at: datetime | None
    failure_reason: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "payout_id": str(self.payout_id),
            "referrer_account_id": self.referrer_account_id,
            "payee": self.payee,
            "referee_account_id": self.referee_account_id,
            "plan_family": self.plan_family,
            "amount_cents": self.amount_cents,
            "currency": self.currency,
            "eligible_on": self.eligible_on.isoformat(),
            "pay_by": self.pay_by.isoformat(),
            "attempt": self.attempt,
            "status": self.status,
            "paid_on": _iso(self.paid_on),
            "paid_at": _instant(self.paid_at),
            "paid_attempt": self.paid_attempt,
            "paid_amount_cents": self.paid_amount_cents,
            "paid_currency": self.paid_currency,
            "reference": self.reference,
            "failed_at": _instant(self.failed_at),
            "failure_reason": self.failure_reason,
        }

    @property
    def note(self) -> str:
        """What a person reading the table must know beyond the status."""
        if self.status == PayoutStatus.FAILED:
            return self.failure_reason or ""
        if self.status in (PayoutStatus.MISMATCHED, PayoutStatus.PAID_TWICE):
            assert self.paid_amount_cents is not None and self.paid_currency is not None
            return f"paid {format_money(self.paid_amount_cents, self.paid_currency)}"
        if self.status == OVERDUE:
            return "unpaid past pay_by"
        return ""


@dataclass(frozen=True)
class Total:
    month: str  # YYYY-MM of eligible_on, or "all"
    status: str
    payouts: int
    amount_cents: int
    currency: str

    def to_json(self) -> dict[str, Any]:
        return {
            "month": self.month,
            "status": self.status,
            "payouts": self.payouts,
            "amount_cents": self.amount_cents,
            "currency": self.currency,
        }


@dataclass(frozen=True)
class PayoutReport:
    today: date
    month: str | None
    statuses: tuple[str, ...]
    payouts: list[PayoutLine]

    def totals(self) -> list[Total]:
        """Per month of ``eligible_on`` and status, then per status over every month."""
        by_month: Counter[tuple[str, str, str]] = Counter()
        cents: Counter[tuple[str, str, str]] = Counter()
        for p in self.payouts:
            for month in (f"{p.eligible_on:%Y-%m}", "all"):
                key = (month, p.status, p.currency)
                by_month[key] += 1
                cents[key] += p.amount_cents
        order = {status: i for i, status in enumerate(STATUSES)}
        keys = sorted(by_month, key=lambda k: (k[0] == "all", k[0], order.get(k[1], 99), k[2]))
        return [Total(m, s, by_month[(m, s, c)], cents[(m, s, c)], c) for m, s, c in keys]

    def to_json(self) -> dict[str, Any]:
        return {
            "today": self.today.isoformat(),
            "month": self.month,
            "statuses": list(self.statuses),
            "payouts": [p.to_json() for p in self.payouts],
            "totals": [t.to_json() for t in self.totals()],
        }


def parse_month(text: str) -> date:
    """``--month YYYY-MM`` as the 1st of that month."""
    try:
        year, month = text.split("-")
        if len(year) != 4 or len(month) != 2:
            raise ValueError
        return date(int(year), int(month), 1)
    except ValueError:
        raise InvalidInput(f"--month {text!r}: expected a month like 2027-04") from None


def parse_statuses(text: str | None) -> tuple[str, ...]:
    """``--status due,overdue`` as a tuple; every status when not given."""
    if text is None:
        return STATUSES
    wanted = tuple(dict.fromkeys(s.strip().lower() for s in text.split(",") if s.strip()))
    unknown = [s for s in wanted if s not in STATUSES]
    if unknown or not wanted:
        raise InvalidInput(
            f"--status {text!r}: unknown status {', '.join(unknown) or '(none given)'}; "
            f"choose among {', '.join(STATUSES)} (comma-separated)"
        )
    return wanted


_PAYOUTS = """
select payout_id, referrer_account_id, payee, referee_account_id, plan_family, amount_cents,
       currency, eligible_on, pay_by, attempt, status, paid_at, paid_attempt, paid_amount_cents,
       paid_currency, paid_reference, failed_at, failure_reason
from payouts
where outcome = 'due'
  and ($1::date is null or (eligible_on >= $1 and eligible_on < ($1 + interval '1 month')))
order by eligible_on, pay_by, referrer_account_id, referee_account_id
"""


async def payout_report(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
    *,
    today: date,
    tz: ZoneInfo,
    month: date | None = None,
    statuses: Sequence[str] = STATUSES,
) -> PayoutReport:
    """The due payouts (of ``month``'s ``eligible_on`` if given) whose shown status is one of
    ``statuses``; ``today`` (program time zone) decides which due ones are overdue."""
    rows = await conn.fetch(_PAYOUTS, month)
    lines = [payout_line(row, today, tz) for row in rows]
    wanted = set(statuses)
    return PayoutReport(
        today,
        f"{month:%Y-%m}" if month else None,
        tuple(statuses),
        [line for line in lines if line.status in wanted],
    )


def payout_line(row: asyncpg.Record | dict[str, Any], today: date, tz: ZoneInfo) -> PayoutLine:
    """One ``payouts`` row as a :class:`PayoutLine` (pure)."""
    paid_at: datetime | None = row["paid_at"]
    return PayoutLine(
        payout_id=row["payout_id"],
        referrer_account_id=row["referrer_account_id"],
        payee=row["payee"],
        referee_account_id=row["referee_account_id"],
        plan_family=row["plan_family"],
        amount_cents=row["amount_cents"],
        currency=row["currency"],
        eligible_on=row["eligible_on"],
        pay_by=row["pay_by"],
        attempt=row["attempt"],
        status=shown_status(row["status"], row["pay_by"], today),
        paid_at=paid_at,
        paid_on=paid_at.astimezone(tz).date() if paid_at else None,
        paid_attempt=row["paid_attempt"],
        paid_amount_cents=row["paid_amount_cents"],
        paid_currency=row["paid_currency"],
        reference=row["paid_reference"],
        failed_at=row["failed_at"],
        failure_reason=row["failure_reason"],
    )


# --- rendering -------------------------------------------------------------------------------

_TABLE = (
    "PAYOUT_ID",
    "REFERRER",
    "PAYEE",
    "REFEREE",
    "AMOUNT",
    "ELIGIBLE_ON",
    "PAY_BY",
    "ATTEMPT",
    "STATUS",
    "PAID_ON",
    "REFERENCE",
    "NOTE",
)
_RIGHT = {_TABLE.index("AMOUNT"), _TABLE.index("ATTEMPT")}


def render_table(report: PayoutReport) -> str:
    """The payouts as aligned columns, then the totals per month and status."""
    scope = f"eligible in {report.month}" if report.month else "all months"
    title = f"payouts, {scope}, status {','.join(report.statuses)} (today {report.today})"
    if not report.payouts:
        return f"{title}\n\nno payouts"
    rows = [
        (
            str(p.payout_id),
            p.referrer_account_id,
            p.payee,
            p.referee_account_id,
            format_money(p.amount_cents, p.currency),
            p.eligible_on.isoformat(),
            p.pay_by.isoformat(),
            str(p.attempt),
            p.status,
            _iso(p.paid_on) or "-",
            p.reference or "-",
            p.note,
        )
        for p in report.payouts
    ]
    totals = [
        (t.month, t.status, str(t.payouts), format_money(t.amount_cents, t.currency))
        for t in report.totals()
    ]
    return "\n".join(
        [
            title,
            "",
            *_aligned(_TABLE, rows, _RIGHT),
            "",
            "totals",
            *_aligned(("MONTH", "STATUS", "PAYOUTS", "AMOUNT"), totals, {2, 3}),
        ]
    )


def _aligned(header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return [line(header), *(line(r) for r in rows)]


#: The CSV columns, in order.
CSV_COLUMNS = (
    "payout_id",
    "referrer_account_id",
    "payee",
    "referee_account_id",
    "plan_family",
    "amount",
    "amount_cents",
    "currency",
    "eligible_on",
    "pay_by",
    "attempt",
    "status",
    "paid_on",
    "paid_at",
    "paid_attempt",
    "paid_amount",
    "paid_currency",
    "reference",
    "failed_at",
    "failure_reason",
)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
BOM = "\ufeff"


def spreadsheet_safe(text: str | None) -> str:
    """A text cell a spreadsheet shows as text: never read as a formula (CSV injection)."""
    if not text:
        return ""
    return "'" + text if text.startswith(_FORMULA_START) else text


def decimal_amount(cents: int | None) -> str:
    """``123456`` -> ``1234.56``: exact, a dot, no symbol, no thousands separator."""
    if cents is None:
        return ""
    sign = "-" if cents < 0 else ""
    whole, part = divmod(abs(cents), 100)
    return f"{sign}{whole}.{part:02d}"


def render_csv(report: PayoutReport) -> str:
    """The payouts as CSV text, starting with a byte order mark (see the module docstring)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for p in report.payouts:
        writer.writerow(
            [
                str(p.payout_id),
                spreadsheet_safe(p.referrer_account_id),
                spreadsheet_safe(p.payee),
                spreadsheet_safe(p.referee_account_id),
                spreadsheet_safe(p.plan_family),
                decimal_amount(p.amount_cents),
                p.amount_cents,
                p.currency,
                p.eligible_on.isoformat(),
                p.pay_by.isoformat(),
                p.attempt,
                p.status,
                _iso(p.paid_on) or "",
                _instant(p.paid_at) or "",
                p.paid_attempt if p.paid_attempt is not None else "",
                decimal_amount(p.paid_amount_cents),
                spreadsheet_safe(p.paid_currency),
                spreadsheet_safe(p.reference),
                _instant(p.failed_at) or "",
                spreadsheet_safe(p.failure_reason),
            ]
        )
    return BOM + out.getvalue()


def _iso(day: date | None) -> str | None:
    return day.isoformat() if day else None


def _instant(at: datetime | None) -> str | None:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z") if at else None

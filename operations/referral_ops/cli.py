"""`referrals`: the operator's commands (migrate, support operations, the referral list).

Developer commands (`referrals dev up/down`, `referrals demo`) come from the
``referral_rewards.cli`` entry points of the developer tools, installed with
the ``dev`` extra only; production never imports them.

Exit status: 0 done (what was done is printed), 2 wrong input or configuration
(the message says how to fix it; nothing was changed), 1 the database could not
be used (one line says why). These commands need ``DATABASE_URL`` only: they
never reach Kafka (what they announce goes through the outbox).
Changes are recorded in the audit log under ``--actor`` (default:
``$REFERRALS_ACTOR``, else the OS user).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import secrets
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, date, datetime, time
from importlib.metadata import entry_points
from pathlib import Path
from typing import TypeAlias
from zoneinfo import ZoneInfo

import asyncpg

from referral_ops import (
    backfill,
    code_changes,
    legacy,
    listing,
    partners,
    payees,
    payout_report,
    recompute,
    reissue,
    set_aside,
    support,
)
from referral_program import codes
from referral_program.table import RULES_VERSION, format_money
from referral_runtime.build_info import add_version_argument
from referral_runtime.db import connect
from referral_runtime.logs import configure_logging
from referral_runtime.migrate import upgrade
from referral_runtime.page_links import DEFAULT_DAYS, MAX_DAYS, PageLinks
from referral_runtime.recompute import Recomputation
from referral_runtime.referral_state import Outbound
from referral_runtime.settings import DatabaseSettings, load_settings

Operation = Callable[[asyncpg.Connection, DatabaseSettings], Awaitable[str]]

_DB_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.InvalidCatalogNameError,
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,
    asyncpg.exceptions.InvalidPasswordError,
    TimeoutError,
)


def _default_actor() -> str | None:
    if actor := os.environ.get("REFERRALS_ACTOR"):
        return actor
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in some containers
        return None


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def _database_error(message: str) -> None:
    # One line, whatever the driver's text held: operators grep and alert on these.
    _error(" ".join(message.split()))


def _run(
    operation: Operation,
    settings: DatabaseSettings | None = None,
    emit: Callable[[str], object] = print,
) -> int:
    """Connect, run one operation, ``emit`` its report; map failures to exit statuses."""
    settings = settings or load_settings(DatabaseSettings)

    async def run() -> str:
        conn = await connect(settings.database_url)
        try:
            return await operation(conn, settings)
        finally:
            await conn.close()

    try:
        report = asyncio.run(run())
    except support.SupportError as exc:
        _error(str(exc))
        return 2
    except asyncpg.exceptions.UndefinedTableError:
        _error("the database has no referral tables yet: run `referrals migrate` first")
        return 1
    except asyncpg.exceptions.ClientConfigurationError as exc:
        # A connection option in DATABASE_URL that asyncpg refuses (e.g. a wrong sslmode).
        _database_error(f"DATABASE_URL is not usable: {exc}")
        return 2
    except _DB_UNAVAILABLE as exc:
        _database_error(f"can't use the database ({type(exc).__name__}: {exc}); check DATABASE_URL")
        return 1
    except asyncpg.exceptions.PostgresError as exc:
        _database_error(f"the database refused ({type(exc).__name__}: {exc})")
        return 1
    emit(report)
    return 0


def _read_file(path: Path) -> bytes:
    """A file a person named, or :class:`support.InvalidInput` saying why it can't be read."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise support.InvalidInput(f"{path}: no such file") from None
    except OSError as exc:
        raise support.InvalidInput(f"{path}: can't read it ({exc.strerror})") from None


def _actor(args: argparse.Namespace) -> str:
    return support.checked_actor(args.actor)


def _guarded(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Input checks that fail before the database is touched exit 2 as well."""

    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except support.SupportError as exc:
            _error(str(exc))
            return 2

    return run


# --- commands --------------------------------------------------------------------------------


def cmd_migrate(args: argparse.Namespace) -> int:
    async def op(conn: asyncpg.Connection, settings: DatabaseSettings) -> str:
        done = await upgrade(conn, settings.tz)
        lines = [
            f"applied migrations: {done.applied}" if done.applied else "database is up to date"
        ]
        if done.rules is not None:
            was = f"version {done.rules.previous}" if done.rules.previous else "no recorded version"
            lines.append(
                f"rules version {done.rules.version} installed (was {was}): "
                + render_recomputation(done.rules.recomputation, details=False)
            )
        return "\n".join(lines)

    return _run(op)


def cmd_recompute(args: argparse.Namespace) -> int:
    actor = _actor(args)

    async def op(conn: asyncpg.Connection, settings: DatabaseSettings) -> str:
        done = await recompute.recompute(conn, actor=actor, tz=settings.tz, dry_run=args.dry_run)
        return render_recomputation(done)

    return _run(op)


def cmd_outbox_set_aside(args: argparse.Namespace) -> int:
    async def op(conn: asyncpg.Connection, settings: DatabaseSettings) -> str:
        rows = await set_aside.set_aside_rows(conn, include_dismissed=args.all)
        if not rows:
            return "no outbox rows set aside" + ("" if args.all else " waiting for a person")
        lines = [f"{len(rows)} outbox rows set aside (refused by the broker for good):"]
        for r in rows:
            state = f", dismissed {r.dismissed_at:%Y-%m-%d %H:%M}" if r.dismissed_at else ""
            source = ""
            if "dlq.source.topic" in r.headers:
                source = (
                    f", dead letter of {r.headers['dlq.source.topic']} partition "
                    f"{r.headers.get('dlq.source.partition')} offset "
                    f"{r.headers.get('dlq.source.offset')}"
                )
            lines.append(
                f"  {r.id}: {r.topic}, {r.size:,} bytes, set aside "
                f"{r.set_aside_at:%Y-%m-%d %H:%M}{state}{source}: {r.reason}"
            )
        return "\n".join(lines)

    return _run(op)


def cmd_outbox_retry(args: argparse.Namespace) -> int:
    actor = _actor(args)

    async def op(conn: asyncpg.Connection, settings: DatabaseSettings) -> str:
        n = await set_aside.retry(conn, args.ids, actor=actor)
        return f"{n} outbox row(s) back in the queue: the relays publish them within a poll"

    return _run(op)


def cmd_outbox_dismiss(args: argparse.Namespace) -> int:
    actor = _actor(args)

    async def op(conn: asyncpg.Connection, settings: DatabaseSettings) -> str:
        n = await set_aside.dismiss(conn, args.ids, actor=actor, note=args.note)
        return f"{n} outbox row(s) dismissed: kept, set aside, never published"

    return _run(op)


def render_recomputation(done: Recomputation, *, details: bool = True) -> str:
    """Counts, then (with ``details``) every referral changed: before -> after."""
    verb = "would change" if done.dry_run else "changed"
    head = (
        f"{'dry run, nothing written: ' if done.dry_run else ''}recomputed "
        f"{done.examined} undecided referrals under rules version {RULES_VERSION}: "
        f"{len(done.changes)} {verb}"
    )
    kinds = sorted(done.by_kind().items())
    if kinds:
        head += " (" + ", ".join(f"{b} -> {a}: {n}" for (b, a), n in kinds) + ")"
    if not details:
        return head
    lines = [head]
    for change in done.changes:
        before, after = change.before, change.after
        if after is None:
            assert before is not None
            lines.append(
                f"  referee {change.referee_account_id} (referrer {before.referrer_account_id}): "
                f"{before.label()} -> none (no sign-up attributes it any more)"
            )
            continue
        line = (
            f"  referee {change.referee_account_id} (referrer {after.referrer_account_id}): "
            f"{before.label() if before else 'none'} -> {after.label()}"
        )
        if before and before.referrer_account_id != after.referrer_account_id:
            line += f"; referrer was {before.referrer_account_id}"
        if before and before.first_payment_at != after.first_payment_at:
            line += f"; first payment {_instant(before.first_payment_at)} -> {_instant(after.first_payment_at)}"
        lines.append(line)
    return "\n".join(lines)


def _instant(value: datetime | None) -> str:
    return value.isoformat() if value else "none"


def cmd_code_rotate(args: argparse.Namespace) -> int:
    actor = _actor(args)

    async def op(conn: asyncpg.Connection, settings: DatabaseSettings) -> str:
        done = await code_changes.rotate_code(
            conn,
            args.account,
            actor=actor,
            out=Outbound.from_settings(settings),
            randbits=secrets.randbits,
        )
        report = (
            f"account {done.account_id}: new code {codes.display(done.code)} "
            f"({codes.link(settings.referral_link_base, done.code)}), announcement queued"
        )
        if done.replaces:
            report += f"\n{codes.display(done.replaces)} is now an alias: it still attributes"
        return report

    return _run(op)


def cmd_code_revoke(args: argparse.Namespace) -> int:
    actor = _actor(args)

    async def op(conn: asyncpg.Connection, settings: DatabaseSettings) -> str:
        done = await code_changes.revoke_code(
            conn,
            args.code,
            account_id=args.account,
            actor=actor,
            out=Outbound.from_settings(settings),
            randbits=secrets.randbits,
            tz=settings.tz,
        )
        report = (
            f"code {codes.display(done.code)} of account {done.account_id} revoked "
            f"(was {done.was}): it attributes no sign-up made from now on"
        )
        if done.withdrawn:
            report += (
                f"\n{len(done.withdrawn)} sign-ups made since then no longer attribute: "
                + ", ".join(done.withdrawn)
                + (
                    f" ({len(done.unreferred)} of them now have no referral)"
                    if done.unreferred
                    else ""
                )
            )
        if done.replacement:
            link = codes.link(settings.referral_link_base, done.replacement)
            report += (
                f"\nnew active code {codes.display(done.replacement)} ({link}), announcement queued"
            )
        return report

    return _run(op)


def cmd_payee_set(args: argparse.Namespace) -> int:
    actor = _actor(args)

    async def op(conn: asyncpg.Connection, settings: DatabaseSettings) -> str:
        done = await payees.set_payee(
            conn, args.referrer, args.payee, referee_account_id=args.referee, actor=actor
        )
        was = f" (was {done.previous})" if done.previous else ""
        if done.referee_account_id:
            report = (
                f"payee of the referral of {done.referee_account_id} "
                f"(referrer {done.referrer_account_id}) set to {done.payee}{was}"
            )
            if done.failed_payout:
                report += "; its payout failed: `referrals payout reissue` pays it to them"
            return report
        report = (
            f"default payee of {done.referrer_account_id} set to {done.payee}{was}: "
            f"{done.following} undecided referrals follow it, "
            f"{done.own_payee} keep their own payee, "
            f"{done.decided} already decided keep theirs"
        )
        if done.failed_following:
            report += (
                f" ({done.failed_following} of them failed: a re-issue pays those to {done.payee})"
            )
        return report

    return _run(op)


def _cmd_partner(is_partner: bool) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        actor = _actor(args)

        async def op(conn: asyncpg.Connection, settings: DatabaseSettings) -> str:
            done = await partners.set_partner(
                conn, args.account, is_partner, actor=actor, tz=settings.tz
            )
            state = "a partner" if is_partner else "not a partner"
            if not done.changed:
                return f"account {done.account_id} is already {state}; nothing changed"
            return (
                f"account {done.account_id} is now {state}: "
                f"{done.referrals_changed} undecided referrals changed, "
                f"{done.decided} decided ones unchanged"
            )

        return _run(op)

    return command


def cmd_list(args: argparse.Namespace) -> int:
    async def op(conn: asyncpg.Connection, settings: DatabaseSettings) -> str:
        legacy_lines = await listing.legacy_lines(conn, args.referrer, settings.tz)
        try:
            page = await listing.referrals_page(conn, args.referrer, settings, datetime.now(UTC))
        except support.UnknownAccount:
            if not legacy_lines:
                raise
            # A referrer known only from the legacy import (its account not seen by billing yet).
            page = listing.ReferralsPage(support.checked_account(args.referrer), None, None, [])
        if args.format == "json":
            return json.dumps(
                {**page.to_json(), "legacy": [line.to_json() for line in legacy_lines]}, indent=2
            )
        if not legacy_lines:
            return render_table(page)
        cash = render_table(page) if page.referrals else f"no cash referrals for {page.account_id}"
        return cash + "\n\n" + render_legacy(legacy_lines)

    return _run(op)


def cmd_legacy_import(args: argparse.Namespace) -> int:
    actor = _actor(args)
    settings = load_settings(DatabaseSettings)
    path = Path(args.file)
    data = _read_file(path)
    try:
        rows = legacy.parse_legacy_csv(legacy.decode_legacy_csv(data), settings.program_currency)
    except support.LegacyImportError as exc:
        raise support.LegacyImportError([f"{path}: {e}" for e in exc.errors]) from None
    # The old system credited every invoice before the import: by default credits start today.
    credit_day = args.credit_from or datetime.now(settings.tz).date()
    credit_from = datetime.combine(credit_day, time(0), tzinfo=settings.tz)

    async def op(conn: asyncpg.Connection, settings: DatabaseSettings) -> str:
        done = await legacy.import_legacy(
            conn,
            rows,
            file=str(path),
            actor=actor,
            out=Outbound.from_settings(settings),
            credit_from=credit_from,
            dry_run=args.dry_run,
        )
        return render_legacy_import(done, credit_day, settings.tz)

    return _run(op, settings)


def cmd_payouts(args: argparse.Namespace) -> int:
    month = payout_report.parse_month(args.month) if args.month else None
    statuses = payout_report.parse_statuses(args.status)

    async def op(conn: asyncpg.Connection, settings: DatabaseSettings) -> str:
        report = await payout_report.payout_report(
            conn,
            today=datetime.now(settings.tz).date(),
            tz=settings.tz,
            month=month,
            statuses=statuses,
        )
        if args.format == "json":
            return json.dumps(report.to_json(), indent=2)
        if args.format == "csv":
            return payout_report.render_csv(report)
        return payout_report.render_table(report)

    if args.format == "csv":
        # Bytes, whatever the terminal's encoding: the file is UTF-8 with its byte order mark.
        return _run(op, emit=lambda text: sys.stdout.buffer.write(text.encode()))
    return _run(op)


def cmd_payout_reissue(args: argparse.Namespace) -> int:
    actor = _actor(args)
    payout_id = reissue.parse_payout_id(args.payout_id)

    async def op(conn: asyncpg.Connection, settings: DatabaseSettings) -> str:
        done = await reissue.reissue_payout(
            conn,
            payout_id,
            actor=actor,
            topic=settings.topics.payout_due,
            now=datetime.now(UTC),
        )
        was = f" (was {done.previous_payee})" if done.previous_payee != done.payee else ""
        failed = f" after it failed ({done.failure_reason})" if done.failure_reason else ""
        return (
            f"payout {done.payout_id} re-issued{failed}: attempt {done.attempt}, "
            f"{format_money(done.amount_cents, done.currency)} to {done.payee}{was}; "
            "payout.due queued for finance"
        )

    return _run(op)


def _credit_day(instant: datetime, tz: ZoneInfo) -> str:
    """A stored credit start as the day it was given (program time zone)."""
    if instant.year == 1:  # -infinity: imported before credit starts were stored, without one
        return "the beginning"
    return instant.astimezone(tz).date().isoformat()


def render_legacy_import(done: legacy.LegacyImported, credit_day: date, tz: ZoneInfo) -> str:
    """What an import did, or with ``--dry-run`` would do: counts, referees that keep their
    credit start, then (dry run) every row."""
    would = done.dry_run
    head = (
        f"{'dry run, nothing written: would import' if would else 'imported'} {done.file}: "
        f"{done.rows} rows, {done.new} new, {done.already_imported} already imported; "
        f"{done.credits} credits for invoices already paid since {credit_day.isoformat()}"
    )
    lines = [head]
    if done.kept_credit_from:
        lines.append(
            f"{len(done.kept_credit_from)} already imported keep the credit start they were "
            f"imported with, not {credit_day.isoformat()}:"
        )
        lines += [
            f"  {k.referee_account_id}: credited from {_credit_day(k.credit_from, tz)}"
            for k in done.kept_credit_from
        ]
    if not would:
        return "\n".join(lines)
    lines += [
        f"  import: referee {r.referee_account_id} of referrer {r.referrer_account_id}, "
        f"{format_money(r.monthly_credit_cents, r.currency)} a month (line {r.line})"
        for r in done.imported
    ]
    lines += [
        f"  credit: invoice {c.invoice_id} of {c.referee_account_id} -> "
        f"{c.referrer_account_id} {format_money(c.amount_cents, c.currency)}"
        for c in done.credited
    ]
    return "\n".join(lines)


# --- referral-web: page links and codes for existing accounts ------------------------------


def cmd_page_link(args: argparse.Namespace) -> int:
    account = support.checked_account(args.account)
    settings = load_settings()
    if settings.page_signing_key is None:
        raise support.InvalidInput(
            "PAGE_SIGNING_KEY is not set: page links are signed with it (the same value "
            "referral-web checks them with)"
        )
    links = PageLinks(settings.page_signing_key.get_secret_value(), settings.page_link_base)

    async def op(conn: asyncpg.Connection, settings: DatabaseSettings) -> str:
        known = await conn.fetchval(
            """select exists (select 1 from accounts where account_id = $1)
                   or exists (select 1 from legacy_referrals where referrer_account_id = $1)""",
            account,
        )
        if not known:
            raise support.UnknownAccount(account)
        return links.link(account, now=datetime.now(UTC), days=args.days)

    return _run(op, settings)


def cmd_codes_backfill(args: argparse.Namespace) -> int:
    actor = _actor(args)
    path = Path(args.file)
    data = _read_file(path)
    try:
        rows = backfill.parse_backfill_csv(backfill.decode_csv(data))
    except support.CodeBackfillError as exc:
        raise support.CodeBackfillError([f"{path}: {e}" for e in exc.errors]) from None

    async def op(conn: asyncpg.Connection, settings: DatabaseSettings) -> str:
        done = await backfill.backfill_codes(
            conn,
            rows,
            file=str(path),
            actor=actor,
            out=Outbound.from_settings(settings),
            randbits=secrets.randbits,
            dry_run=args.dry_run,
        )
        return render_backfill(done)

    return _run(op)


def render_backfill(done: backfill.CodesBackfilled, *, shown: int = 20) -> str:
    """What a backfill did (or, dry, would do): counts, then the first accounts given a code."""
    head = (
        f"{'dry run, nothing written: would assign' if done.dry_run else 'assigned'} codes to "
        f"{len(done.assigned)} accounts of {done.file} ({done.rows} rows: "
        f"{done.already_had} already had a code, {done.new_accounts} not seen before)"
    )
    if not done.dry_run:
        return head + f"; {len(done.assigned)} referral_code.assigned announcements queued"
    lines = [head, *(f"  {account}" for account, _ in done.assigned[:shown])]
    if len(done.assigned) > shown:
        lines.append(f"  ... and {len(done.assigned) - shown} more")
    return "\n".join(lines)


def _days(text: str) -> int:
    try:
        days = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of days: {text!r}") from None
    if not 1 <= days <= MAX_DAYS:
        raise argparse.ArgumentTypeError(f"a link lives 1 to {MAX_DAYS} days, not {days}")
    return days


def _add_web_commands(sub: Subcommands, audited: argparse.ArgumentParser) -> None:
    page_link = sub.add_parser(
        "page-link",
        help="print the signed, expiring link to a referrer's page",
        description="Print <PAGE_LINK_BASE>/<token>: the referrer's page of ACCOUNT, served by "
        "referral-web, for whoever holds the link until it expires. Needs PAGE_SIGNING_KEY.",
    )
    page_link.add_argument("account", help="the referrer's account id")
    page_link.add_argument(
        "--days",
        type=_days,
        default=DEFAULT_DAYS,
        help=f"how long the link works (default {DEFAULT_DAYS}, at most {MAX_DAYS})",
    )
    page_link.set_defaults(func=_guarded(cmd_page_link))

    codes_cmd = sub.add_parser("codes", help="referral codes of many accounts at once")
    codes_sub = codes_cmd.add_subparsers(dest="codes_command", required=True)
    codes_backfill = codes_sub.add_parser(
        "backfill",
        parents=[audited],
        help="assign and announce codes for existing accounts (billing's CSV export) that have "
        "none; idempotent",
        description="CSV with the one column account_id (billing's export of existing "
        "accounts). Every row is checked first; one bad row assigns nothing. Accounts that "
        "already have a code keep it.",
    )
    codes_backfill.add_argument("file", help="the CSV file (UTF-8)")
    codes_backfill.add_argument(
        "--dry-run",
        action="store_true",
        help="check the file and show how many accounts would get a code, writing nothing",
    )
    codes_backfill.set_defaults(func=_guarded(cmd_codes_backfill))


# --- the referral table ----------------------------------------------------------------------


_TABLE_COLUMNS = (
    "REFEREE",
    "PLAN",
    "STATUS",
    "REASON",
    "AMOUNT",
    "CODE",
    "REFERRED",
    "FIRST_PAID",
    "ELIGIBLE_ON",
    "PAY_BY",
)


def render_table(page: listing.ReferralsPage) -> str:
    """The referrals of one referrer as aligned columns (amounts right-aligned)."""
    title = f"referrals of {page.account_id}"
    if page.code:
        title += f" (code {page.code}, {page.link})"
    if not page.referrals:
        return f"no referrals for {page.account_id}"
    rows = [
        (
            r.referee_account_id,
            r.plan_family or ",".join(r.plans) or "-",
            r.status,
            r.reason or "-",
            format_money(r.amount_cents, r.currency),
            r.referral_code,
            r.referred_on.isoformat(),
            _day(r.first_payment_on),
            _day(r.eligible_on),
            _day(r.pay_by),
        )
        for r in page.referrals
    ]
    widths = [max(len(row[i]) for row in [_TABLE_COLUMNS, *rows]) for i in range(len(rows[0]))]
    amount = _TABLE_COLUMNS.index("AMOUNT")

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            c.rjust(w) if i == amount else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    by_status: dict[str, int] = {}
    for r in page.referrals:
        by_status[r.status] = by_status.get(r.status, 0) + 1
    summary = ", ".join(f"{n} {status}" for status, n in sorted(by_status.items()))
    return "\n".join(
        [
            title,
            "",
            line(_TABLE_COLUMNS),
            *(line(r) for r in rows),
            "",
            f"{len(rows)} referrals: {summary}",
        ]
    )


_LEGACY_COLUMNS = ("REFEREE", "MONTHLY_CREDIT", "IMPORTED", "CREDITS", "CREDITED")


def render_legacy(lines: Sequence[listing.LegacyLine]) -> str:
    """The legacy monthly-credit referrals (account credit, not cash) as aligned columns."""
    rows = [
        (
            line.referee_account_id,
            format_money(line.monthly_credit_cents, line.currency),
            line.imported_on.isoformat(),
            str(line.credits),
            format_money(line.credited_cents, line.currency),
        )
        for line in lines
    ]
    widths = [max(len(row[i]) for row in [_LEGACY_COLUMNS, *rows]) for i in range(5)]
    right = {1, 3, 4}

    def fmt(cells: tuple[str, ...]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    currencies = {line.currency for line in lines}
    total = (
        format_money(sum(line.credited_cents for line in lines), currencies.pop())
        if len(currencies) == 1
        else "; ".join(
            format_money(sum(x.credited_cents for x in lines if x.currency == c), c)
            for c in sorted(currencies)
        )
    )
    credits = sum(line.credits for line in lines)
    return "\n".join(
        [
            "legacy referrals (monthly account credit, not cash)",
            "",
            fmt(_LEGACY_COLUMNS),
            *(fmt(r) for r in rows),
            "",
            f"{len(rows)} legacy referrals: {credits} credits, {total} credited in total",
        ]
    )


def _day(value: date | None) -> str:
    return value.isoformat() if value else "-"


# --- argument parsing ------------------------------------------------------------------------


def _iso_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2027-01-31") from None


Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
#: Entry-point group through which other installed packages add sub-commands.
PLUGIN_GROUP = "referral_rewards.cli"


def build_parser() -> argparse.ArgumentParser:
    """The ``referrals`` parser: operator commands, then any installed plugin commands."""
    parser = argparse.ArgumentParser(prog="referrals", description=__doc__.split("\n\n")[0])
    add_version_argument(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "migrate",
        help="apply database migrations (idempotent), and recompute the undecided referrals "
        "when this release changes the rules",
    ).set_defaults(func=cmd_migrate)
    _add_support_commands(sub)
    for plugin in entry_points(group=PLUGIN_GROUP):
        try:
            register = plugin.load()
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.split(".")[0].startswith("referral_"):
                raise  # our own code is broken, not merely an optional extra missing
            continue  # installed without its extra (production has no laptop wheels)
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    configure_logging("WARNING", "console")
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


def _add_support_commands(sub: Subcommands) -> None:
    audited = argparse.ArgumentParser(add_help=False)
    audited.add_argument(
        "--actor",
        default=_default_actor(),
        help="who does this, for the audit log (default: $REFERRALS_ACTOR, else your user name)",
    )

    code = sub.add_parser("code", help="rotate or revoke an account's referral code")
    code_sub = code.add_subparsers(dest="code_command", required=True)
    rotate = code_sub.add_parser(
        "rotate", parents=[audited], help="new code; the old one stays an alias"
    )
    rotate.add_argument("--account", required=True, help="the account whose code to rotate")
    rotate.set_defaults(func=_guarded(cmd_code_rotate))
    revoke = code_sub.add_parser(
        "revoke", parents=[audited], help="the code attributes no sign-up made from now on"
    )
    revoke.add_argument("--code", required=True, help="the code, e.g. ABCD-EFGH")
    revoke.add_argument("--account", help="the owner, as a check against typos")
    revoke.set_defaults(func=_guarded(cmd_code_revoke))

    payee = sub.add_parser("payee", help="who receives a referrer's cash")
    payee_sub = payee.add_subparsers(dest="payee_command", required=True)
    payee_set = payee_sub.add_parser(
        "set", parents=[audited], help="for one referral, or the referrer's default"
    )
    payee_set.add_argument("--referrer", required=True, help="the referring account")
    payee_set.add_argument("--payee", required=True, help="who receives the cash")
    payee_set.add_argument("--referee", help="only this referral (default: all undecided)")
    payee_set.set_defaults(func=_guarded(cmd_payee_set))

    partner = sub.add_parser("partner", help="partner accounts earn no cash")
    partner_sub = partner.add_subparsers(dest="partner_command", required=True)
    for name, is_partner, text in (
        ("set", True, "make the account a partner"),
        ("unset", False, "the account is no longer a partner"),
    ):
        command = partner_sub.add_parser(name, parents=[audited], help=text)
        command.add_argument("--account", required=True)
        command.set_defaults(func=_guarded(_cmd_partner(is_partner)))

    listing = sub.add_parser("list", help="a referrer's referrals: status, reason, amount, dates")
    listing.add_argument("--referrer", required=True, help="the referring account")
    listing.add_argument("--format", choices=("table", "json"), default="table")
    listing.set_defaults(func=_guarded(cmd_list))

    payouts = sub.add_parser(
        "payouts",
        help="finance's view of the due payouts: payee, amount, pay_by, attempt, status, paid",
        description="Every due payout with referrer, payee, referee, amount, eligible_on, "
        "pay_by, attempt, status (overdue: due and its pay_by day has ended), paid date and "
        "finance's reference; totals per month of eligible_on and status. CSV: UTF-8 with a "
        "byte order mark, comma-separated, ISO dates, amount as a plain decimal beside "
        "amount_cents, text cells safe from formula injection.",
    )
    payouts.add_argument(
        "--month", metavar="YYYY-MM", help="only payouts whose eligible_on is in this month"
    )
    payouts.add_argument(
        "--status",
        metavar="STATUS[,STATUS...]",
        help=f"only these statuses, among {', '.join(payout_report.STATUSES)} (default: all)",
    )
    payouts.add_argument("--format", choices=("table", "csv", "json"), default="table")
    payouts.set_defaults(func=_guarded(cmd_payouts))

    payout = sub.add_parser("payout", help="support's operations on one payout")
    payout_sub = payout.add_subparsers(dest="payout_command", required=True)
    payout_reissue = payout_sub.add_parser(
        "reissue",
        parents=[audited],
        help="re-announce a failed payout with the next attempt (refused if due or paid)",
        description="Re-announce a payout that finance reported failed: the same payout_id, "
        "the next attempt, the payee as it is now (`referrals payee set` first if it was "
        "wrong) and the same amount. Refused, with the reason, for a payout that is still due "
        "or that was paid.",
    )
    payout_reissue.add_argument("payout_id", help="the payout's id (see `referrals payouts`)")
    payout_reissue.set_defaults(func=_guarded(cmd_payout_reissue))

    legacy = sub.add_parser("legacy", help="the legacy monthly-credit program")
    legacy_sub = legacy.add_subparsers(dest="legacy_command", required=True)
    legacy_import = legacy_sub.add_parser(
        "import",
        parents=[audited],
        help="import legacy referrals from CSV (all rows or none) and credit paid invoices",
        description="CSV header: referrer_account_id,referee_account_id,monthly_credit_cents"
        "[,currency]. Every row is checked first; one bad row imports nothing.",
    )
    legacy_import.add_argument("file", help="the CSV file (UTF-8)")
    legacy_import.add_argument(
        "--credit-from",
        type=_iso_date,
        metavar="YYYY-MM-DD",
        help="credit the invoices already paid from this day on (program time zone). "
        "Default: today in PROGRAM_TIMEZONE, so nothing the old system already credited is "
        "credited again; give an earlier day only for invoices it did not credit",
    )
    legacy_import.add_argument(
        "--dry-run",
        action="store_true",
        help="check the file and show what would be imported and credited (counts and rows) "
        "without writing anything",
    )
    legacy_import.set_defaults(func=_guarded(cmd_legacy_import))

    recompute_parser = sub.add_parser(
        "recompute",
        parents=[audited],
        help="recompute every undecided referral from its facts under the rules installed now",
        description="Recompute every referral without a payout decision from its facts, under "
        "the rules of this release, and show each one that changes (before -> after) and the "
        "counts. Decided referrals never change. `referrals migrate` does this by itself when "
        "a release changes the rules.",
    )
    recompute_parser.add_argument(
        "--dry-run",
        action="store_true",
        help="show what would change without writing anything",
    )
    recompute_parser.set_defaults(func=_guarded(cmd_recompute))

    outbox = sub.add_parser("outbox", help="outbox rows the broker refused for good and set aside")
    outbox_sub = outbox.add_subparsers(dest="outbox_command", required=True)
    listed = outbox_sub.add_parser("set-aside", help="list the rows set aside")
    listed.add_argument("--all", action="store_true", help="dismissed ones too")
    listed.set_defaults(func=_guarded(cmd_outbox_set_aside))
    retried = outbox_sub.add_parser(
        "retry", parents=[audited], help="put rows set aside back in the queue (cause fixed)"
    )
    retried.add_argument("ids", nargs="+", type=int, metavar="ID")
    retried.set_defaults(func=_guarded(cmd_outbox_retry))
    dismissed = outbox_sub.add_parser(
        "dismiss",
        parents=[audited],
        help="record that rows set aside were handled and are not to be published",
    )
    dismissed.add_argument("ids", nargs="+", type=int, metavar="ID")
    dismissed.add_argument("--note", required=True, help="why (kept in the audit log)")
    dismissed.set_defaults(func=_guarded(cmd_outbox_dismiss))
    _add_web_commands(sub, audited)


if __name__ == "__main__":
    raise SystemExit(main())

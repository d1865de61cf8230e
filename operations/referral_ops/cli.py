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

import asyncpg

from referral_ops import code_changes, legacy, listing, partners, payees, support
from referral_program import codes
from referral_program.table import format_money
from referral_runtime.build_info import add_version_argument
from referral_runtime.db import connect
from referral_runtime.logs import configure_logging
from referral_runtime.migrate import migrate
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


def _run(operation: Operation, settings: DatabaseSettings | None = None) -> int:
    """Connect, run one operation, print its report; map failures to exit statuses."""
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
    print(report)
    return 0


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
        applied = await migrate(conn)
        return f"applied migrations: {applied}" if applied else "database is up to date"

    return _run(op)


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
        )
        report = (
            f"code {codes.display(done.code)} of account {done.account_id} revoked "
            f"(was {done.was}): it attributes nothing from now on"
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
            return (
                f"payee of the referral of {done.referee_account_id} "
                f"(referrer {done.referrer_account_id}) set to {done.payee}{was}"
            )
        return (
            f"default payee of {done.referrer_account_id} set to {done.payee}{was}: "
            f"{done.following} undecided referrals follow it, "
            f"{done.own_payee} keep their own payee, "
            f"{done.decided} already decided keep theirs"
        )

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
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise support.InvalidInput(f"{path}: no such file") from None
    except OSError as exc:
        raise support.InvalidInput(f"{path}: can't read it ({exc.strerror})") from None
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
        return render_legacy_import(done, credit_day)

    return _run(op, settings)


def render_legacy_import(done: legacy.LegacyImported, credit_day: date) -> str:
    """What an import did, or with ``--dry-run`` would do: counts, then every row."""
    would = done.dry_run
    head = (
        f"{'dry run, nothing written: would import' if would else 'imported'} {done.file}: "
        f"{done.rows} rows, {done.new} new, {done.already_imported} already imported; "
        f"{done.credits} credits for invoices already paid since {credit_day.isoformat()}"
    )
    if not would:
        return head
    lines = [head]
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
    sub.add_parser("migrate", help="apply database migrations (idempotent)").set_defaults(
        func=cmd_migrate
    )
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
        "revoke", parents=[audited], help="the code attributes nothing from now on"
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


if __name__ == "__main__":
    raise SystemExit(main())

"""`referrals`: operator commands (SPEC §5). Each validates its input and says what is wrong."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from referrals.settings import DEV_ENV_FILE, Topics

Command = Callable[[argparse.Namespace], int]
#: Extra sub-command registrars (support operations, demo) add themselves here.
REGISTRARS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = []


def _dev_root() -> Path:
    return Path(DEV_ENV_FILE).parent


def cmd_migrate(args: argparse.Namespace) -> int:
    from referrals.db import connect
    from referrals.migrate import migrate
    from referrals.settings import load_settings

    settings = load_settings()

    async def run() -> list[int]:
        conn = await connect(settings.database_url)
        try:
            return await migrate(conn)
        finally:
            await conn.close()

    applied = asyncio.run(run())
    print(f"applied migrations: {applied}" if applied else "database is up to date")
    return 0


def cmd_dev_up(args: argparse.Namespace) -> int:
    from referrals import devstack

    try:
        info = devstack.up(_dev_root(), Topics().all, partitions=args.partitions)
    except devstack.StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"postgres: {info.database_url}")
    print(f"kafka:    {info.kafka_bootstrap_servers} (Tansu, pid {info.broker_pid})")
    print(f"wrote {_dev_root() / 'stack.env'}")
    return 0


def cmd_dev_down(args: argparse.Namespace) -> int:
    from referrals import devstack

    devstack.down(_dev_root())
    print("embedded stack stopped")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="referrals", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("migrate", help="apply database migrations (idempotent)").set_defaults(
        func=cmd_migrate
    )

    dev = sub.add_parser("dev", help="the embedded stack: PostgreSQL + Tansu, no Docker")
    dev_sub = dev.add_subparsers(dest="dev_command", required=True)
    up = dev_sub.add_parser("up", help="start the stack and write .dev/stack.env")
    up.add_argument("--partitions", type=int, default=4, help="partitions per topic (default 4)")
    up.set_defaults(func=cmd_dev_up)
    dev_sub.add_parser("down", help="stop the stack").set_defaults(func=cmd_dev_down)

    _load_registrars()
    for register in REGISTRARS:
        register(sub)
    return parser


def _load_registrars() -> None:
    """Import the modules that contribute sub-commands (kept out of the import of this module)."""
    import importlib

    for module in ("payout_scheduler.support_cli", "payout_scheduler.demo"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


def main(argv: Sequence[str] | None = None) -> int:
    from referrals.logs import configure_logging

    configure_logging("WARNING", "console")
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())

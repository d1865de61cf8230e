"""Developer commands added to ``referrals`` through its plugin entry point (the ``dev`` extra)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from referral_devtools import demo, devstack
from referral_runtime.settings import DEV_ENV_FILE, Topics


def _dev_root() -> Path:
    return Path(DEV_ENV_FILE).parent


def cmd_dev_up(args: argparse.Namespace) -> int:
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
    devstack.down(_dev_root())
    print("embedded stack stopped")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``referrals dev up/down`` and ``referrals demo``."""
    dev = sub.add_parser("dev", help="the embedded stack: PostgreSQL + Tansu, no Docker")
    dev_sub = dev.add_subparsers(dest="dev_command", required=True)
    up = dev_sub.add_parser("up", help="start the stack and write .dev/stack.env")
    up.add_argument("--partitions", type=int, default=4, help="partitions per topic (default 4)")
    up.set_defaults(func=cmd_dev_up)
    dev_sub.add_parser("down", help="stop the stack").set_defaults(func=cmd_dev_down)
    demo.register(sub)

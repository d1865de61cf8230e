"""`payout-scheduler`: run the scheduler until SIGTERM, or `tick --as-of YYYY-MM-DD` once.

Exit status of ``tick``: 0 when the pass committed and the outbox is published,
1 when the database or the broker could not be used (decisions that committed
stand; their messages wait in the outbox for the next tick or the running
scheduler), 2 for wrong arguments or configuration, including an ``--as-of``
after today in the program time zone without ``--allow-future``, 3 when the
pass was held back: the consumer group had not applied every billing event
published before the pass began within ``SCHEDULER_FACTS_WAIT_SECONDS``, so
nothing was decided (the outbox is published all the same); run it again once
the consumer has caught up.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from datetime import date, datetime

import uvicorn
from aiokafka.errors import KafkaError

from payout_scheduler.app import create_app
from payout_scheduler.metrics import SchedulerMetrics
from payout_scheduler.service import SchedulerService, tick
from referral_runtime.build_info import add_version_argument
from referral_runtime.db import TRANSIENT_DB_ERRORS
from referral_runtime.logs import configure_logging
from referral_runtime.settings import Settings, load_settings

#: ``tick``'s exit status when the pass was held back (nothing decided).
HELD_BACK = 3


def as_of_date(text: str) -> date:
    """``--as-of`` as a date; argparse shows the message of a malformed one."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected YYYY-MM-DD, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="payout-scheduler",
        description="Decide due referral payouts and publish payout.due through the outbox. "
        "Without a command: run the decision loop, the outbox relay and the subscriber that "
        "applies finance's payout.paid / payout.failed until SIGTERM.",
    )
    add_version_argument(parser)
    sub = parser.add_subparsers(dest="command")
    tick = sub.add_parser("tick", help="one decision pass as of a date, publish what is due, exit")
    tick.add_argument(
        "--as-of",
        type=as_of_date,
        required=True,
        metavar="YYYY-MM-DD",
        help="decide what is decidable on this date (program time zone); a date after today "
        "there is refused, since decisions are irreversible, unless --allow-future",
    )
    tick.add_argument(
        "--allow-future",
        action="store_true",
        help="accept an --as-of after today (simulations and tests only: the pass decides "
        "and publishes as if that day had come)",
    )
    return parser


def future_refusal(as_of: date, today: date) -> str | None:
    """Why a tick as of ``as_of`` must not run on ``today`` (both in the program time zone)."""
    if as_of <= today:
        return None
    return (
        f"error: --as-of {as_of.isoformat()} is after today ({today.isoformat()} in "
        "PROGRAM_TIMEZONE): a decision pass is irreversible and would decide and publish "
        "payouts ahead of time, before the facts it depends on can have arrived. Pass "
        "--allow-future for a simulation or a test."
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    if args.command is None:
        asyncio.run(run_forever(settings))
        return 0
    if not args.allow_future:
        refusal = future_refusal(args.as_of, datetime.now(settings.tz).date())
        if refusal is not None:
            print(refusal, file=sys.stderr)
            return 2
    try:
        result = asyncio.run(tick(settings, args.as_of, SchedulerMetrics()))
    except (*TRANSIENT_DB_ERRORS, KafkaError) as exc:
        print(
            f"error: {type(exc).__name__}: {exc}. Committed decisions stand; unpublished "
            "messages stay in the outbox and go out with the next tick or the running "
            "scheduler.",
            file=sys.stderr,
        )
        return 1
    print(
        f"{result.decision_pass.summary()} Published {result.published} outbox "
        f"message(s); {result.backlog} left unpublished."
    )
    if result.decision_pass.held_back:
        print(
            "error: decisions held back: the consumer has not applied every billing event "
            "published before the pass began, and a decision on incomplete facts cannot be "
            "undone. Check the consumer (running, lag, CONSUMER_GROUP) and run the tick again.",
            file=sys.stderr,
        )
        return HELD_BACK
    return 0


async def run_forever(settings: Settings) -> None:
    """Serve ``/healthz``, ``/readyz`` and ``/metrics`` and run the scheduler until SIGTERM."""
    service = SchedulerService(settings)
    config = uvicorn.Config(
        create_app(service),
        host="0.0.0.0",
        port=settings.http_port,
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    # uvicorn re-raises the signal it caught once shut down; a no-op handler
    # turns that into a normal return (exit status 0).
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    await uvicorn.Server(config).serve()


if __name__ == "__main__":
    raise SystemExit(main())

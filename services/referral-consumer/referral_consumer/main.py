"""`referral-consumer`: run the consumer until SIGTERM (finish the batch, commit, exit)."""

from __future__ import annotations

import argparse
import gc
from collections.abc import Sequence

from referral_runtime.build_info import add_version_argument
from referral_runtime.logs import configure_logging
from referral_runtime.serve import serve
from referral_runtime.settings import ConsumerSettings, load_settings

#: Container objects the collector tracks per record of a parsed batch, with headroom
#: (measured: 2.0 for subscription.created with every customer field, since validation
#: builds msgspec structs the collector does not track; 10.0 when it built pydantic
#: models). The headroom also covers a second batch transaction in flight.
TRACKED_PER_RECORD = 12


def young_generation_size(max_batch: int) -> int:
    """The cyclic collector's generation-0 threshold for batches of ``max_batch`` records.

    The collector runs when tracked objects allocated minus freed pass the
    threshold, and each run walks every young object still alive. With
    overlap, two batches (one written, the next validated) and the statement
    arrays are alive at once: a threshold below that working set makes the
    collector walk all of it every few thousand records, for nothing, since
    batches hold no cycles. Three batches' worth keeps it for real growth.
    """
    return max(50_000, 3 * TRACKED_PER_RECORD * max_batch)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="referral-consumer",
        description="Consume the billing topics into PostgreSQL until SIGTERM (the batch in "
        "hand is finished and committed first); serves /healthz, /readyz and /metrics on "
        "HTTP_PORT (the read API is referral-web's). Configured by environment variables: KAFKA_BOOTSTRAP_SERVERS, "
        "DATABASE_URL, CONSUMER_GROUP, LOG_LEVEL, LOG_FORMAT, ... (see the README). Starts and "
        "stays up while the database or the broker is unreachable, reporting not ready.",
    )
    add_version_argument(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    build_parser().parse_args(argv)
    settings = load_settings(ConsumerSettings)
    gc.set_threshold(young_generation_size(settings.consumer_max_batch), 20, 100)
    configure_logging(settings.log_level, settings.log_format)
    from referral_consumer.app import create_app

    serve(create_app(settings), settings.http_port)


if __name__ == "__main__":
    main()

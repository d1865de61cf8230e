"""`referral-consumer`: run the consumer until SIGTERM (finish the batch, commit, exit)."""

from __future__ import annotations

import gc

from referrals.logs import configure_logging
from referrals.serve import serve
from referrals.settings import load_settings


def main() -> None:
    settings = load_settings()
    # Batches of thousands of short-lived objects trip the cyclic GC's default
    # thresholds constantly; collections were a visible share of batch time.
    gc.set_threshold(50_000, 20, 100)
    configure_logging(settings.log_level, settings.log_format)
    from referral_consumer.app import create_app

    serve(create_app(settings), settings.http_port)


if __name__ == "__main__":
    main()

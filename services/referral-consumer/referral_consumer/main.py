"""`referral-consumer`: run the consumer until SIGTERM (finish the batch, commit, exit)."""

from __future__ import annotations

import uvicorn

from referrals.logs import configure_logging
from referrals.settings import load_settings


def main() -> None:
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    from referral_consumer.app import create_app

    uvicorn.run(
        create_app(settings),
        host="0.0.0.0",
        port=settings.http_port,
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=9,
    )


if __name__ == "__main__":
    main()

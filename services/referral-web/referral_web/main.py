"""`referral-web`: serve the referrer's page, the landing page and the read API until SIGTERM."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from referral_runtime.build_info import add_version_argument
from referral_runtime.logs import configure_logging
from referral_runtime.serve import serve
from referral_runtime.settings import DatabaseSettings, load_settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="referral-web",
        description="Serve, on HTTP_PORT, the friend's landing page (<REFERRAL_LINK_BASE>/<CODE>), "
        "the referrer's page (<PAGE_LINK_BASE>/<signed token>, made by `referrals page-link`), "
        "the JSON read API under /v1/ (bearer API_TOKEN, described by /openapi.json), and "
        "/healthz, /readyz, /metrics. Reads only, as the referral_web database role (it may "
        "also add landing visit counts). Needs DATABASE_URL and PAGE_SIGNING_KEY; see the "
        "README for the other settings. Starts and stays up while the database is "
        "unreachable, reporting not ready.",
    )
    add_version_argument(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    build_parser().parse_args(argv)
    # The pages and the API read the database only: no broker setting is needed.
    settings = load_settings(DatabaseSettings)
    configure_logging(settings.log_level, settings.log_format)
    from referral_web.app import ConfigurationError, create_app

    try:
        app = create_app(settings)
    except ConfigurationError as exc:
        print(f"configuration error:\n  {exc}", file=sys.stderr)
        return 2
    serve(app, settings.http_port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

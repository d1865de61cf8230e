"""The read API's OpenAPI document: served at ``/openapi.json`` and committed as
``schemas/openapi.json``.

    python -m referral_web.openapi            # rewrite schemas/openapi.json
    python -m referral_web.openapi --check    # exit 1 if the committed one is stale

The document is a pure function of the API's code (FastAPI reads the routes
and their pydantic models), written with sorted keys and a trailing newline,
so a diff in the committed file is a diff in the API.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI

#: schemas/ beside the event contract; the source tree's, not an installed copy's.
COMMITTED = Path(__file__).resolve().parents[3] / "schemas" / "openapi.json"
STALE_MESSAGE = "schemas/openapi.json is stale: run `make schemas`"


def without_unused_validation_errors(document: dict[str, Any]) -> dict[str, Any]:
    """FastAPI documents a 422 for every operation with parameters; the API's parameters are
    plain strings that it checks itself (a malformed code is a 400), so no 422 is ever sent."""
    for path in document.get("paths", {}).values():
        for operation in path.values():
            operation.get("responses", {}).pop("422", None)
    schemas = document.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    return document


def document(app: FastAPI | None = None) -> dict[str, Any]:
    """The OpenAPI document of ``app`` (default: an app built with placeholder settings, which
    the document does not depend on)."""
    if app is None:
        app = _placeholder_app()
    return app.openapi()


def render(app: FastAPI | None = None) -> str:
    """The document as committed: sorted keys, 2-space indent, trailing newline."""
    return json.dumps(document(app), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _placeholder_app() -> FastAPI:
    from pydantic import SecretStr

    from referral_runtime.settings import Settings
    from referral_web.app import WebService, create_app

    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        kafka_bootstrap_servers="unused:9092",
        database_url="postgresql://unused/unused",
        page_signing_key=SecretStr("placeholder-key-for-the-document-only"),
    )
    return create_app(service=WebService(settings))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m referral_web.openapi", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    parser.add_argument("--out", type=Path, default=COMMITTED, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    text = render()
    current = args.out.read_text() if args.out.is_file() else None
    if args.check:
        if current != text:
            print(STALE_MESSAGE, file=sys.stderr)
            return 1
        return 0
    if current != text:
        args.out.write_text(text)
        print(f"wrote: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""HTTP read API (see the README), behind ``Authorization: Bearer $API_TOKEN``.

``GET /v1/codes/{code}``
    For the sign-up page: 200 ``{"valid": true, "code", "account_id",
    "referee_discount_cents", "currency"}`` for an active or alias code, 404
    ``{"valid": false}`` for an unknown or revoked one, 400 for text that can't
    be a code (with the reason).
``GET /v1/accounts/{id}/referrals``
    For the referrer's page: its code, link and referrals (the same document as
    ``referrals list --format json``); 404 for an account never seen.

A raw ASGI app, because FastStream's ``AsgiFastStream`` routes exact paths
only and these carry parameters: mount it for every path under ``/v1/``.
Responses carry account ids and program facts only, no personal data.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

import asyncpg
import structlog

from referral_ops.listing import referrals_page
from referral_ops.support import UnknownAccount
from referral_program import codes
from referral_runtime.db import TRANSIENT_DB_ERRORS
from referral_runtime.settings import Settings

log = structlog.get_logger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_CODE_STATUS = "select account_id, status from referral_codes where code = $1"


class ReadApi:
    """The read API as one ASGI callable for every path under ``prefix``.

    ``get_pool`` returns the service's pool, or ``None`` while it is not started
    (the API then answers 503). ``clock`` gives "now" for the referral list.
    """

    def __init__(
        self,
        get_pool: Callable[[], asyncpg.Pool | None],
        settings: Settings,
        *,
        prefix: str = "/v1",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._get_pool = get_pool
        self._settings = settings
        self._prefix = prefix.rstrip("/")
        self._clock = clock

    def handles(self, path: str) -> bool:
        """True for the paths this app answers (everything under the prefix)."""
        return path == self._prefix or path.startswith(self._prefix + "/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        status, body, headers = await self._respond(scope)
        raw_headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
            *((k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": body})

    async def _respond(self, scope: Scope) -> tuple[int, bytes, dict[str, str]]:
        token = self._settings.api_token
        if not token:
            return _json(503, {"error": "API_TOKEN not configured"})
        if not _authorised(scope, token):
            return _json(
                401,
                {"error": "missing or wrong bearer token"},
                {"www-authenticate": 'Bearer realm="referrals"'},
            )
        if scope["method"] != "GET":
            return _json(405, {"error": "only GET is supported"}, {"allow": "GET"})
        segments = self._segments(scope)
        pool = self._get_pool()
        if pool is None:
            return _json(503, {"error": "not ready"}, {"retry-after": "5"})
        try:
            match segments:
                case ["codes", code]:
                    return await self._code(pool, code)
                case ["accounts", account_id, "referrals"]:
                    return await self._referrals(pool, account_id)
                case _:
                    return _json(404, {"error": "no such endpoint"})
        except TRANSIENT_DB_ERRORS as exc:
            log.warning("read_api_db_unavailable", error=type(exc).__name__)
            return _json(503, {"error": "database unavailable"}, {"retry-after": "5"})

    def _segments(self, scope: Scope) -> list[str]:
        # The raw path keeps an escaped "/" inside an account id as part of its segment.
        raw = scope.get("raw_path")
        path = raw.decode("latin-1") if raw else scope["path"]
        rest = path[len(self._prefix) :] if path.startswith(self._prefix) else path
        return [unquote(part) for part in rest.strip("/").split("/")]

    async def _code(self, pool: asyncpg.Pool, raw: str) -> tuple[int, bytes, dict[str, str]]:
        try:
            code = codes.normalise(raw)
        except codes.InvalidCode as exc:
            return _json(400, {"valid": False, "error": str(exc)})
        async with pool.acquire() as conn:
            row = await conn.fetchrow(_CODE_STATUS, code)
        if row is None or row["status"] == "revoked":
            return _json(404, {"valid": False})
        return _json(
            200,
            {
                "valid": True,
                "code": codes.display(code),
                "account_id": row["account_id"],
                "referee_discount_cents": self._settings.referee_discount_cents,
                "currency": self._settings.program_currency,
            },
        )

    async def _referrals(
        self, pool: asyncpg.Pool, account_id: str
    ) -> tuple[int, bytes, dict[str, str]]:
        if not account_id.strip():
            return _json(404, {"error": "no such endpoint"})
        try:
            async with pool.acquire() as conn:
                page = await referrals_page(conn, account_id, self._settings, self._clock())
        except UnknownAccount:
            return _json(404, {"error": "unknown account", "account_id": account_id})
        return _json(200, page.to_json())


def _authorised(scope: Scope, token: str) -> bool:
    for name, value in scope.get("headers", []):
        if name.lower() == b"authorization":
            scheme, _, given = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer":
                return hmac.compare_digest(given.strip().encode(), token.encode())
    return False


def _json(
    status: int, document: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, bytes, dict[str, str]]:
    return status, json.dumps(document).encode(), headers or {}

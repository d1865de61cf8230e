"""The HTTP read API (README: commands) as an ASGI app over the real Postgres."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote

import asyncpg
import pytest

from referral_devtools import synthetic as bill
from referral_ops import code_changes, listing
from referral_ops.read_api import ReadApi
from referral_program import codes
from referral_runtime.db import create_pool
from referral_runtime.referral_state import Outbound
from referral_runtime.settings import Settings
from tests.e2e.test_support_ops import T0, active_code, feed

TOKEN = "s3cret-token"
NOW = datetime(2026, 11, 1, tzinfo=UTC)


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def call(
    api: ReadApi,
    path: str,
    *,
    token: str | None = TOKEN,
    method: str = "GET",
    scheme: str = "Bearer",
) -> Response:
    """One request, the way uvicorn hands it to an ASGI app."""
    headers = [(b"host", b"localhost")]
    if token is not None:
        headers.append((b"authorization", f"{scheme} {token}".encode()))
    scope = {
        "type": "http",
        "method": method,
        "path": unquote(path),
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": headers,
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await api(scope, receive, send)
    start, body = sent
    assert start["type"] == "http.response.start"
    return Response(
        start["status"],
        {k.decode(): v.decode() for k, v in start["headers"]},
        body["body"],
    )


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(settings.database_url, size=2)
    yield pool
    await pool.close()


@pytest.fixture
def api(settings: Settings, pool: asyncpg.Pool) -> ReadApi:
    return ReadApi(
        lambda: pool, settings.model_copy(update={"api_token": TOKEN}), clock=lambda: NOW
    )


async def test_without_a_configured_token_the_api_is_unavailable(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    api = ReadApi(lambda: pool, settings.model_copy(update={"api_token": None}))
    response = await call(api, "/v1/codes/ABCD-EFGH")
    assert response.status == 503
    assert response.json() == {"error": "API_TOKEN not configured"}
    assert response.headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    ("token", "scheme"), [(None, "Bearer"), ("wrong", "Bearer"), (TOKEN, "Basic"), ("", "Bearer")]
)
async def test_a_missing_or_wrong_token_is_401(
    api: ReadApi, db: asyncpg.Connection, token: str | None, scheme: str
) -> None:
    response = await call(api, "/v1/codes/ABCD-EFGH", token=token, scheme=scheme)
    assert response.status == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json() == {"error": "missing or wrong bearer token"}


async def test_code_lookup_for_the_sign_up_page(
    api: ReadApi, settings: Settings, db: asyncpg.Connection
) -> None:
    await feed(db, settings, bill.subscription_created("ref-1", "s-1", "chat", T0))
    first = await active_code(db, "ref-1")
    out = Outbound.from_settings(settings)
    await code_changes.rotate_code(db, "ref-1", actor="t", out=out, randbits=secrets.randbits)
    second = await active_code(db, "ref-1")
    await code_changes.revoke_code(
        db, second, actor="t", out=out, randbits=secrets.randbits, tz=settings.tz
    )

    typed = codes.display(first).lower().replace("-", " ").replace("0", "o")
    alias = await call(api, "/v1/codes/" + typed.replace(" ", "%20"))
    assert alias.status == 200
    assert alias.headers["content-type"] == "application/json"
    assert alias.json() == {
        "valid": True,
        "code": codes.display(first),
        "account_id": "ref-1",
        "referee_discount_cents": 10_000,
        "currency": "USD",
    }
    active = await call(api, "/v1/codes/" + codes.display(await active_code(db, "ref-1")))
    assert (active.status, active.json()["account_id"]) == (200, "ref-1")

    revoked = await call(api, "/v1/codes/" + codes.display(second))
    assert (revoked.status, revoked.json()) == (404, {"valid": False})
    unknown = await call(api, "/v1/codes/ZZZZ-ZZZZ")
    assert (unknown.status, unknown.json()) == (404, {"valid": False})
    malformed = await call(api, "/v1/codes/ABCU-EFGH")
    assert (malformed.status, malformed.json()) == (
        400,
        {"valid": False, "error": "not Crockford base32 symbols: U"},
    )


async def test_a_referrers_page(
    api: ReadApi, pool: asyncpg.Pool, settings: Settings, db: asyncpg.Connection
) -> None:
    await feed(
        db,
        settings,
        bill.subscription_created(
            "ref/1", "s-1", "chat", T0, email="owner@acme-dental.com", payment_fingerprint="fp-1"
        ),
    )
    code = codes.display(await active_code(db, "ref/1"))
    t = T0 + timedelta(days=1)
    await feed(
        db,
        settings,
        bill.subscription_created(
            "vr", "s-vr", "virtual_receptionist", t, code=code, email="boss@vr-clinic.com"
        ),
        bill.invoice_paid("vr", "s-vr", "i-vr", 29900, t),
        bill.subscription_created(
            "staff", "s-staff", "voice_assistant", t, code=code, email="x@acme-dental.com"
        ),
    )

    response = await call(api, "/v1/accounts/ref%2F1/referrals")

    assert response.status == 200, response.body
    page = response.json()
    async with pool.acquire() as conn:
        expected = await listing.referrals_page(conn, "ref/1", settings, NOW)
    assert page == expected.to_json()  # the same document as `referrals list --format json`
    assert page["code"] == code
    assert page["link"] == f"{settings.referral_link_base}/{code}"
    statuses = {r["referee_account_id"]: (r["status"], r["reason"]) for r in page["referrals"]}
    assert statuses == {
        "vr": ("qualified", None),
        "staff": ("ineligible", "same_email_domain"),
    }
    for personal in (b"acme-dental", b"vr-clinic", b"@", b"fp-1"):
        assert personal not in response.body


async def test_unknown_accounts_paths_and_methods(
    api: ReadApi, settings: Settings, db: asyncpg.Connection
) -> None:
    unknown = await call(api, "/v1/accounts/nobody/referrals")
    assert (unknown.status, unknown.json()) == (
        404,
        {"error": "unknown account", "account_id": "nobody"},
    )
    for path in ("/v1/accounts/nobody", "/v1/codes", "/v1/", "/v1/codes/A/B"):
        response = await call(api, path)
        assert (response.status, response.json()) == (404, {"error": "no such endpoint"}), path
    post = await call(api, "/v1/codes/ABCD-EFGH", method="POST")
    assert post.status == 405
    assert post.headers["allow"] == "GET"


async def test_not_ready_until_the_pool_exists(settings: Settings) -> None:
    api = ReadApi(lambda: None, settings.model_copy(update={"api_token": TOKEN}))
    response = await call(api, "/v1/codes/ABCD-EFGH")
    assert (response.status, response.json()) == (503, {"error": "not ready"})
    assert api.handles("/v1/codes/X") and api.handles("/v1")
    assert not api.handles("/v10/codes") and not api.handles("/metrics")

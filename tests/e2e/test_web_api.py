"""The JSON read API, served by referral-web over HTTP on the real Postgres; its OpenAPI
document, served and committed; and a property test of the API from that document."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig

from referral_devtools import synthetic as bill
from referral_ops import code_changes, listing
from referral_program import codes
from referral_runtime.referral_state import Outbound
from referral_runtime.settings import Settings
from referral_web import openapi
from tests.conftest import Stack, create_database
from tests.e2e.test_support_ops import T0, active_code, feed
from tests.e2e.web import API_TOKEN, Web, serving

NOW = datetime(2026, 11, 1, tzinfo=UTC)
COMMITTED = Path(__file__).resolve().parents[2] / "schemas" / "openapi.json"


async def test_without_a_configured_token_the_api_is_unavailable(
    db: asyncpg.Connection, settings: Settings
) -> None:
    with serving(settings, api_token=None) as web:
        response = web.get("/v1/codes/ABCD-EFGH", token=API_TOKEN)
    assert response.status == 503
    assert response.json() == {"error": "API_TOKEN not configured"}
    assert response.headers["content-type"] == "application/json"


async def test_a_missing_or_wrong_token_is_401(db: asyncpg.Connection, settings: Settings) -> None:
    with serving(settings) as web:
        answers = [
            web.get("/v1/codes/ABCD-EFGH"),
            web.get("/v1/codes/ABCD-EFGH", token="wrong"),
            web.get("/v1/codes/ABCD-EFGH", token=""),
            web.get("/v1/accounts/ref-1/referrals", token=API_TOKEN.upper()),
        ]
    for response in answers:
        assert response.status == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json() == {"error": "missing or wrong bearer token"}


async def test_code_lookup_for_the_sign_up_page_names_no_account(
    db: asyncpg.Connection, settings: Settings
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

    with serving(settings) as web:
        alias = web.get("/v1/codes/" + typed.replace(" ", "%20"), token=API_TOKEN)
        active = web.get("/v1/codes/" + codes.display(await active_code(db, "ref-1")),
                         token=API_TOKEN)  # fmt: skip
        revoked = web.get("/v1/codes/" + codes.display(second), token=API_TOKEN)
        unknown = web.get("/v1/codes/ZZZZ-ZZZZ", token=API_TOKEN)
        malformed = web.get("/v1/codes/ABCU-EFGH", token=API_TOKEN)

    assert alias.status == 200
    assert alias.headers["content-type"] == "application/json"
    assert alias.json() == {
        "valid": True,
        "code": codes.display(first),
        "referee_discount_cents": 10_000,
        "currency": "USD",
    }
    assert active.status == 200 and "account_id" not in active.json()
    assert b"ref-1" not in alias.body + active.body
    assert (revoked.status, revoked.json()) == (404, {"valid": False})
    assert (unknown.status, unknown.json()) == (404, {"valid": False})
    assert (malformed.status, malformed.json()) == (
        400,
        {"valid": False, "error": "not Crockford base32 symbols: U"},
    )


async def test_a_referrers_referrals_for_support_tools(
    db: asyncpg.Connection, settings: Settings
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

    with serving(settings, clock=lambda: NOW) as web:
        response = web.get("/v1/accounts/ref%2F1/referrals", token=API_TOKEN)

    assert response.status == 200, response.body
    page = response.json()
    expected = await listing.referrals_page(db, "ref/1", web.settings, NOW)
    assert page == expected.to_json()  # the same document as `referrals list --format json`
    assert page["code"] == code
    assert page["link"] == f"{web.settings.referral_link_base}/{code}"
    statuses = {r["referee_account_id"]: (r["status"], r["reason"]) for r in page["referrals"]}
    assert statuses == {"vr": ("qualified", None), "staff": ("ineligible", "same_email_domain")}
    for personal in (b"acme-dental", b"vr-clinic", b"@", b"fp-1"):
        assert personal not in response.body


async def test_unknown_accounts_paths_and_methods(
    db: asyncpg.Connection, settings: Settings
) -> None:
    with serving(settings) as web:
        unknown = web.get("/v1/accounts/nobody/referrals", token=API_TOKEN)
        blank = web.get("/v1/accounts/%20/referrals", token=API_TOKEN)
        nul = web.get("/v1/accounts/a%00b/referrals", token=API_TOKEN)
        line_break = web.get("/v1/accounts/a%0Ab%0A/referrals", token=API_TOKEN)
        not_found = [
            web.get(path, token=API_TOKEN)
            for path in ("/v1/accounts/nobody", "/v1/codes", "/v1/", "/v1/codes/A/B")
        ]
        post = web.get("/v1/codes/ABCD-EFGH", token=API_TOKEN, method="POST")
    assert (unknown.status, unknown.json()) == (
        404,
        {"error": "unknown account", "account_id": "nobody"},
    )
    assert blank.status == 404 and nul.status == 404
    # found by the property test: a line break in the id must not miss the route
    assert (line_break.status, line_break.json()) == (
        404,
        {"error": "unknown account", "account_id": "a\nb\n"},
    )
    for response in not_found:
        assert response.status == 404
    assert post.status == 405
    assert post.headers["allow"] == "GET"


def test_the_committed_openapi_document_is_what_the_code_describes() -> None:
    """Fails when the API changed and `make schemas` was not run."""
    assert COMMITTED.read_text() == openapi.render(), openapi.STALE_MESSAGE
    check = subprocess.run(
        [sys.executable, "-m", "referral_web.openapi", "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert check.returncode == 0, check.stderr


def test_a_stale_document_is_reported(tmp_path: Path) -> None:
    stale = tmp_path / "openapi.json"
    stale.write_text(COMMITTED.read_text().replace("lookupCode", "lookupCodeOld"))
    assert openapi.main(["--check", "--out", str(stale)]) == 1
    assert openapi.main(["--out", str(stale)]) == 0
    assert stale.read_text() == COMMITTED.read_text()


async def test_the_served_document_is_the_committed_one(
    db: asyncpg.Connection, settings: Settings
) -> None:
    with serving(settings) as web:
        served = web.get("/openapi.json")
    assert served.status == 200
    assert served.json() == json.loads(COMMITTED.read_text())
    document = served.json()
    assert set(document["paths"]) == {"/v1/codes/{code}", "/v1/accounts/{account_id}/referrals"}
    assert "account_id" not in document["components"]["schemas"]["ValidCode"]["properties"]
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


# --- the property test: every answer of the running API agrees with its document -------------

EXAMPLE_ACCOUNT = "acct-7f3a9c21"  # the examples the document gives, made real below
EXAMPLE_CODE = "K3F79QXM"


@pytest.fixture(scope="module")
async def api_database(stack: Stack) -> AsyncIterator[str]:
    """A database of its own for the whole property test, with the document's examples."""
    url = await create_database(stack, f"schemathesis{secrets.token_hex(4)}")
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("insert into accounts (account_id) values ($1)", EXAMPLE_ACCOUNT)
        await conn.execute(
            "insert into referral_codes (code, account_id, status) values ($1, $2, 'active')",
            EXAMPLE_CODE,
            EXAMPLE_ACCOUNT,
        )
    finally:
        await conn.close()
    yield url


@pytest.fixture(scope="module")
def live_api(stack: Stack, api_database: str) -> Iterator[Web]:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        kafka_bootstrap_servers=stack.bootstrap,
        database_url=api_database,
    )
    with serving(settings) as web:
        yield web


schema = schemathesis.openapi.from_path(
    COMMITTED,
    config=SchemathesisConfig.from_dict(
        {
            "checks": {
                # Any text is a valid path parameter: the answer to one that cannot be a
                # code (400) or names nothing (404) is documented, not a rejection.
                "positive_data_acceptance": {"expected-statuses": [200, 400, 404]},
            },
            "generation": {"max-examples": 60},
        }
    ),
)


@schema.parametrize()
def test_every_answer_agrees_with_the_document(case: schemathesis.Case, live_api: Web) -> None:
    case.call_and_validate(base_url=live_api.base, headers={"Authorization": f"Bearer {API_TOKEN}"})

"""The referrer's page and the landing page, served by referral-web over HTTP on the real
Postgres (as the referral_web role), for the story of a referrer with every status."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import asyncpg
import pytest

from referral_runtime.page_links import PageLinks
from referral_runtime.settings import Settings
from referral_web.referrer_view import mask_account
from tests.conftest import wait_for
from tests.e2e.web import SIGNING_KEY, SIGNUP_URL, element_text, serving, table_rows
from tests.e2e.web_story import OTHER, PERSONAL, REFERRER, referrer_with_every_status

NEW_LINK_ADVICE = "How to get a new link"


async def test_a_referrer_sees_every_status_in_plain_words(
    db: asyncpg.Connection, settings: Settings
) -> None:
    story = await referrer_with_every_status(db, settings)
    with serving(settings) as web:
        page = web.get(web.page_link(REFERRER))
    assert page.status == 200, page.text
    assert page.headers["content-type"].startswith("text/html")
    html = page.text

    rows = {row[0]: row for row in table_rows(html, "referrals")}
    assert len(rows) == len(story.expected)
    for expected in story.expected:
        _friend, _plan, words, _referred, _eligible, _pay_by, amount = rows[
            mask_account(expected.referee)
        ]
        assert (words, amount) == (expected.words, expected.amount), expected.referee
    assert element_text(html, "code") == story.code
    assert f'value="{web.settings.referral_link_base}/{story.code}"' in html
    assert element_text(html, "total-paid") == "$1,000"
    assert element_text(html, "total-due") == "$2,200"
    assert element_text(html, "total-pending") == "$2,000"
    # the legacy monthly credit is shown apart from the cash
    assert table_rows(html, "legacy") == [
        [mask_account("acct-legacy-friend-12"), "$25 a month", "1", "$25"]
    ]
    assert element_text(html, "legacy-total") == "Account credit so far: $25"
    assert "$100 off their first month" in html


async def test_neither_page_shows_personal_data_or_an_account_id(
    db: asyncpg.Connection, settings: Settings
) -> None:
    story = await referrer_with_every_status(db, settings)
    with serving(settings) as web:
        pages = {
            "referrer": web.get(web.page_link(REFERRER)),
            "other referrer": web.get(web.page_link(OTHER)),
            "landing": web.get(f"/r/{story.code}"),
            "alias landing": web.get(f"/r/{story.alias}"),
            "revoked landing": web.get(f"/r/{story.revoked}"),
        }
    for name, page in pages.items():
        assert page.status == 200, name
        html = page.text.lower()
        for secret in PERSONAL:
            assert secret.lower() not in html, f"{secret} in the {name} page"
        for account in story.accounts:
            assert account.lower() not in html, f"account id {account} in the {name} page"
        assert "@" not in html, f"something like an email in the {name} page"


async def test_a_link_shows_its_own_account_and_nothing_of_another(
    db: asyncpg.Connection, settings: Settings
) -> None:
    story = await referrer_with_every_status(db, settings)
    with serving(settings) as web:
        other = web.get(web.page_link(OTHER)).text
        mine = web.get(web.page_link(REFERRER)).text
    assert [row[0] for row in table_rows(other, "referrals")] == [
        mask_account("acct-other-friend-11")
    ]
    assert element_text(other, "code") == story.other_code
    for expected in story.expected:
        assert mask_account(expected.referee) not in other
    assert story.code not in other and story.other_code not in mine
    assert 'data-testid="legacy"' not in other


def _swap_payload(token: str, account: str) -> str:
    """``token`` with its signed payload replaced by one naming ``account``; the signature of
    the original kept."""
    _payload, signature = token.rsplit(".", 1)
    forged = json.dumps({"a": account, "e": 4102444800}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(forged).decode().rstrip("=") + "." + signature


async def test_a_missing_tampered_forged_or_expired_link_gets_403_and_how_to_get_a_new_one(
    db: asyncpg.Connection, settings: Settings
) -> None:
    await referrer_with_every_status(db, settings)
    with serving(settings) as web:
        good = web.links.token(REFERRER, now=datetime.now(UTC))
        # The signature's first character: its last one carries bits base64 decoding
        # drops, so changing it can leave the signature's bytes as they were.
        head, _, signature = good.rpartition(".")
        flipped = f"{head}.{'B' if signature[0] == 'A' else 'A'}{signature[1:]}"
        other_key = PageLinks("another-signing-key-of-32-characters!!", web.settings.page_link_base)
        cases = {
            "missing": ["/my-referrals", "/my-referrals/"],
            "tampered": [
                f"/my-referrals/{flipped}",
                f"/my-referrals/{_swap_payload(good, OTHER)}",
                f"/my-referrals/{other_key.token(REFERRER, now=datetime.now(UTC))}",
                "/my-referrals/" + quote(json.dumps({"a": REFERRER})),
                "/my-referrals/not-a-token",
            ],
            "expired": [
                "/my-referrals/"
                + web.links.token(REFERRER, now=datetime.now(UTC) - timedelta(days=2), days=1)
            ],
        }
        answers = {reason: [web.get(path) for path in paths] for reason, paths in cases.items()}
        metrics = web.get("/metrics").text
        still_good = web.get(f"/my-referrals/{good}")
    for reason, responses in answers.items():
        for response in responses:
            assert response.status == 403, reason
            assert NEW_LINK_ADVICE in response.text, reason
            assert 'data-testid="referrals"' not in response.text
            assert response.headers["cache-control"] == "no-store"
    assert "has expired" in answers["expired"][0].text
    assert "has been changed" in answers["tampered"][0].text
    for reason, paths in cases.items():
        line = f'referrals_web_page_links_total{{result="{reason}"}} {float(len(paths))}'
        assert line in metrics, line
    assert still_good.status == 200


async def test_the_landing_page_of_a_valid_an_alias_a_revoked_and_an_unknown_code(
    db: asyncpg.Connection, settings: Settings
) -> None:
    story = await referrer_with_every_status(db, settings)
    with serving(settings) as web:
        active = web.get(f"/r/{story.code}")
        alias = web.get("/r/" + quote(story.alias.lower().replace("-", " ")))
        revoked = web.get(f"/r/{story.revoked}")
        unknown = web.get("/r/ZZZZ-ZZZZ")
        malformed = web.get("/r/hello")
        truncated = web.get("/r/")
        metrics = web.get("/metrics").text
    signup_with = SIGNUP_URL + "&amp;referral_code=" + story.code
    for page in (active, alias):
        assert page.status == 200
        assert "$100 off" in page.text and "first month" in page.text
        assert element_text(page.text, "code") == story.code  # the alias lands on the current code
        assert f'href="{signup_with}"' in page.text
    for page in (revoked, unknown, malformed, truncated):
        assert page.status == 200, "an unknown or revoked code still lands"
        assert "$100" not in page.text
        assert "no longer active" in page.text
        assert f'href="{SIGNUP_URL}"' in page.text.replace("&amp;", "&")
        assert "referral_code" not in page.text
    for kind, seen in (
        ("active", 1),
        ("alias", 1),
        ("revoked", 1),
        ("unknown", 1),
        ("malformed", 2),
    ):
        assert f'referrals_web_landings_total{{kind="{kind}"}} {seen:.1f}' in metrics, kind


async def test_visits_are_counted_per_code_and_day_in_memory_and_written_together(
    db: asyncpg.Connection, settings: Settings
) -> None:
    story = await referrer_with_every_status(db, settings)
    # No flush while the visits arrive: nothing may be written per visit.
    with serving(settings, visit_flush_seconds=300) as web:
        for _ in range(30):
            assert web.get(f"/r/{story.code}").status == 200
        for _ in range(12):
            assert web.get(f"/r/{story.alias.lower()}").status == 200
        for path in (f"/r/{story.revoked}", "/r/ZZZZ-ZZZZ", "/r/nope"):
            assert web.get(path).status == 200
        assert await db.fetchval("select count(*) from code_visits") == 0
        metrics = web.get("/metrics").text
        assert "referrals_web_visits_buffered 42.0" in metrics
    # Stopping writes what was counted, in one statement.
    today = datetime.now(settings.tz).date()
    rows = await db.fetch("select code, day, visits from code_visits order by visits desc")
    assert [(r["code"], r["day"], r["visits"]) for r in rows] == [
        (story.code.replace("-", ""), today, 30),
        (story.alias.replace("-", ""), today, 12),
    ]
    with serving(settings) as web:
        assert web.get(f"/r/{story.code}").status == 200

        async def written() -> bool:
            return await db.fetchval("select sum(visits) from code_visits") == 43

        await wait_for(written, timeout=10)
        page = web.get(web.page_link(REFERRER)).text
    assert element_text(page, "visits") == (
        "Your link was opened 43 times in the last 30 days (43 in all)."
    )


async def test_every_page_forbids_caching_framing_and_foreign_content(
    db: asyncpg.Connection, settings: Settings
) -> None:
    story = await referrer_with_every_status(db, settings)
    with serving(settings) as web:
        responses = [
            web.get(web.page_link(REFERRER)),
            web.get(f"/r/{story.code}"),
            web.get("/my-referrals/x"),
        ]
        css = web.get("/referral-assets/site.css")
        script = web.get("/referral-assets/copy.js")
    for response in responses:
        headers = response.headers
        assert "default-src 'none'" in headers["content-security-policy"]
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert headers["referrer-policy"] == "no-referrer"
        assert headers["cache-control"] == "no-store"
        assert headers["x-content-type-options"] == "nosniff"
        assert "<script>" not in response.text, "no inline script: the CSP forbids it"
    assert css.status == 200 and css.headers["content-type"].startswith("text/css")
    assert script.status == 200 and "clipboard" in script.text


async def test_the_service_reads_as_the_referral_web_role_which_can_write_only_visits(
    db: asyncpg.Connection, settings: Settings
) -> None:
    await referrer_with_every_status(db, settings)
    with serving(settings) as web:
        assert web.service is not None and web.service.pool is not None
        pool = web.service.pool

        async def check() -> list[str]:
            denied = []
            for _ in range(3):  # the role survives the pool's reset between uses
                async with pool.acquire() as conn:
                    assert await conn.fetchval("select current_user") == "referral_web"
            async with pool.acquire() as conn:
                assert await conn.fetchval("select count(*) from referrals") > 0
                for statement in (
                    "update referrals set status = 'pending'",
                    "delete from payouts",
                    "insert into referral_codes (code, account_id, status) "
                    "values ('ZZZZZZZZ', 'x', 'active')",
                    "select payment_fingerprint_hash from subscriptions",
                    "select email_domain from subscriptions",
                    "select * from outbox",
                    "select * from audit_log",
                    "select * from inbox",
                ):
                    try:
                        await conn.execute(statement)
                    except asyncpg.InsufficientPrivilegeError:
                        denied.append(statement)
                await conn.execute(
                    "insert into code_visits (code, day, visits) values ('ZZZZZZZZ', now(), 1)"
                )
            return denied

        assert web.loop is not None  # the pool belongs to the server's event loop
        denied = await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(check(), web.loop))
    assert len(denied) == 8, denied
    assert await db.fetchval("select count(*) from code_visits") == 1


@pytest.mark.parametrize("path", ["/r/ABCD-EFGH", "/my-referrals/x", "/v1/codes/ABCD-EFGH"])
async def test_without_the_database_the_service_stays_up_and_says_so(
    settings: Settings, path: str
) -> None:
    down = settings.model_copy(update={"database_url": "postgresql://u@127.0.0.1:9/none"})
    with serving(down, ready=False) as web:
        assert web.get("/healthz").status == 200
        assert web.get("/readyz").status == 503
        response = web.get(path, token="s3cret-token")
        metrics = web.get("/metrics").text
    assert response.status in (403, 503), path
    if path.startswith("/r/"):
        assert response.status == 503 and "Back in a moment" in response.text
    if path.startswith("/v1/"):
        assert (response.status, response.json()) == (503, {"error": "not ready"})
    assert "referrals_web_ready 0.0" in metrics


def test_the_signing_key_is_required(settings: Settings) -> None:
    from referral_web.app import ConfigurationError, WebService

    with pytest.raises(ConfigurationError, match="PAGE_SIGNING_KEY"):
        WebService(settings.model_copy(update={"page_signing_key": None}))
    assert len(SIGNING_KEY) >= 32

"""`referrals page-link ACCOUNT [--days N]`: a signed link that opens that account's page only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from referral_devtools import synthetic as bill
from referral_runtime.settings import Settings
from tests.e2e.test_support_ops import T0, Cli, feed, run_cli
from tests.e2e.web import SIGNING_KEY, serving

__all__ = ["run_cli"]  # the fixture, used by the tests below


async def test_the_printed_link_opens_the_accounts_page_until_it_expires(
    db: asyncpg.Connection, settings: Settings, run_cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    await feed(db, settings, bill.subscription_created("acct-referrer-1", "s-1", "chat", T0))
    with serving(settings) as web:
        monkeypatch.setenv("PAGE_SIGNING_KEY", SIGNING_KEY)
        monkeypatch.setenv("PAGE_LINK_BASE", web.settings.page_link_base)
        before = datetime.now(UTC)
        ran = await run_cli("page-link", "acct-referrer-1", "--days", "3")
        assert ran.status == 0, ran.err
        link = ran.out.strip()
        assert link.startswith(web.settings.page_link_base + "/")
        grant = web.links.check(link.rsplit("/", 1)[1], now=datetime.now(UTC))
        assert grant.account_id == "acct-referrer-1"
        assert before + timedelta(days=3) - timedelta(seconds=2) <= grant.expires_at
        assert grant.expires_at <= datetime.now(UTC) + timedelta(days=3)
        page = web.get(link)
        assert page.status == 200 and "Your referral page" in page.text
        default = await run_cli("page-link", "acct-referrer-1")
        expires = web.links.check(default.out.strip().rsplit("/", 1)[1], now=before).expires_at
        assert timedelta(days=29) < expires - before <= timedelta(days=30, seconds=5)


async def test_unknown_accounts_bad_lifetimes_and_a_missing_key_are_refused(
    db: asyncpg.Connection, settings: Settings, run_cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PAGE_SIGNING_KEY", raising=False)
    no_key = await run_cli("page-link", "acct-1")
    assert no_key.status == 2 and "PAGE_SIGNING_KEY is not set" in no_key.err
    monkeypatch.setenv("PAGE_SIGNING_KEY", SIGNING_KEY)
    unknown = await run_cli("page-link", "acct-nobody")
    assert unknown.status == 2
    assert "account acct-nobody is not known" in unknown.err and not unknown.out
    for days in ("0", "367", "x"):
        bad = await run_cli("page-link", "acct-1", "--days", days)
        assert bad.status == 2, days
        assert "--days" in bad.err
    monkeypatch.setenv("PAGE_SIGNING_KEY", "too-short")
    short = await run_cli("page-link", "acct-1")
    assert short.status == 2 and "PAGE_SIGNING_KEY" in short.err

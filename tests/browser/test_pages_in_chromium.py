"""The referrer's page and the landing page in a real browser (Debian's headless Chromium),
served by the `referral-web` console script on the real Postgres."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from referral_devtools.browser import PHONE
from referral_runtime.settings import Settings
from referral_web.referrer_view import mask_account
from tests.e2e.web import SIGNUP_URL, Web, web_process
from tests.e2e.web_story import REFERRER, Story, referrer_with_every_status


@pytest.fixture
async def story(db: asyncpg.Connection, settings: Settings) -> Story:
    return await referrer_with_every_status(db, settings)


@pytest.fixture
def web(story: Story, settings: Settings, tmp_path: Path) -> Iterator[Web]:
    with web_process(settings, tmp_path / "referral-web.log") as (running, _proc):
        yield running


def _open(browser: WebDriver, url: str) -> int:
    """Load ``url``; returns the HTTP status the browser got for the page itself."""
    browser.get(url)
    status = browser.execute_script(
        "return performance.getEntriesByType('navigation')[0].responseStatus"
    )
    return int(status)


def _text(browser: WebDriver, testid: str) -> str:
    return browser.find_element(By.CSS_SELECTOR, f'[data-testid="{testid}"]').text


def _axe_violations(browser: WebDriver, axe_source: str) -> list[dict[str, Any]]:
    """axe-core's serious and critical violations of the page (axe injected into it)."""
    browser.execute_script(axe_source)
    violations: list[dict[str, Any]] = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {resultTypes: ['violations']})"
        "  .then(r => done(r.violations), e => done([{id: 'axe-error', impact: 'critical',"
        "                                              help: String(e), nodes: []}]));"
    )
    return [v for v in violations if v.get("impact") in ("serious", "critical")]


def _describe(violations: list[dict[str, Any]]) -> str:
    return "\n".join(
        f"{v['id']} ({v['impact']}): {v['help']} at "
        + ", ".join(str(n.get("target")) for n in v.get("nodes", [])[:3])
        for v in violations
    )


def test_a_referrer_with_referrals_in_every_status_sees_the_right_words_and_amounts(
    browser: WebDriver, web: Web, story: Story
) -> None:
    assert _open(browser, web.page_link(REFERRER)) == 200
    assert browser.find_element(By.TAG_NAME, "h1").text == "Your referral page"
    rows = {}
    for tr in browser.find_elements(By.CSS_SELECTOR, '[data-testid="referrals"] tbody tr'):
        cells = [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
        rows[cells[0]] = cells
    assert len(rows) == len(story.expected)
    for expected in story.expected:
        cells = rows[mask_account(expected.referee)]
        assert (cells[2], cells[6]) == (expected.words, expected.amount), expected.referee
    assert _text(browser, "code") == story.code
    assert _text(browser, "total-paid") == "$1,000"
    assert _text(browser, "total-due") == "$2,200"
    assert _text(browser, "total-pending") == "$2,000"
    assert _text(browser, "legacy-total") == "Account credit so far: $25"


def test_the_copy_button_copies_the_link(browser: WebDriver, web: Web, story: Story) -> None:
    browser.execute_cdp_cmd(
        "Browser.grantPermissions",
        {"origin": web.base, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]},
    )
    assert _open(browser, web.page_link(REFERRER)) == 200
    link = browser.find_element(By.ID, "referral-link").get_attribute("value")
    assert link == f"{web.settings.referral_link_base}/{story.code}"
    browser.execute_async_script(
        "navigator.clipboard.writeText('something else').then(arguments[0])"
    )
    browser.find_element(By.ID, "copy-link").click()
    WebDriverWait(browser, 10).until(lambda b: _text_of(b, "copy-status") == "Link copied")
    pasted = browser.execute_async_script(
        "navigator.clipboard.readText().then(arguments[0], e => arguments[0]('error: ' + e))"
    )
    assert pasted == link


def _text_of(browser: WebDriver, element_id: str) -> str:
    return str(browser.find_element(By.ID, element_id).text)


def test_a_tampered_link_gets_403_and_says_how_to_get_a_new_one(
    browser: WebDriver, web: Web
) -> None:
    link = web.page_link(REFERRER)
    tampered = link[:-3] + ("xyz" if not link.endswith("xyz") else "abc")
    assert _open(browser, tampered) == 403
    assert browser.find_element(By.TAG_NAME, "h1").text == "This link can’t be opened"
    assert "How to get a new link" in browser.page_source
    assert not browser.find_elements(By.CSS_SELECTOR, '[data-testid="referrals"]')


def test_the_landing_page_of_a_valid_an_alias_and_a_revoked_code(
    browser: WebDriver, web: Web, story: Story
) -> None:
    base = web.settings.referral_link_base
    for code in (story.code, story.alias):
        assert _open(browser, f"{base}/{code}") == 200
        assert "$100 off" in browser.find_element(By.CSS_SELECTOR, ".offer").text
        assert _text(browser, "code") == story.code  # an alias lands on the current code
        button = browser.find_element(By.CSS_SELECTOR, '[data-testid="signup"]')
        assert button.text == f"Sign up with code {story.code}"
        assert button.get_attribute("href") == f"{SIGNUP_URL}&referral_code={story.code}"
    assert _open(browser, f"{base}/{story.revoked}") == 200
    assert "no longer active" in browser.find_element(By.TAG_NAME, "h1").text
    assert not browser.find_elements(By.CSS_SELECTOR, ".offer")
    assert (
        browser.find_element(By.CSS_SELECTOR, '[data-testid="signup"]').get_attribute("href")
        == SIGNUP_URL
    )


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_both_pages_have_no_serious_accessibility_violations(
    browser: WebDriver, web: Web, story: Story, axe_source: str, size: str
) -> None:
    if size == "phone":
        browser.set_window_size(*PHONE)
    pages = {
        "referrer": web.page_link(REFERRER),
        "landing": f"{web.settings.referral_link_base}/{story.code}",
        "landing of a revoked code": f"{web.settings.referral_link_base}/{story.revoked}",
        "expired link": web.page_link(REFERRER, days=1).replace(
            "/my-referrals/", "/my-referrals/x"
        ),
    }
    for name, url in pages.items():
        _open(browser, url)
        violations = _axe_violations(browser, axe_source)
        assert not violations, f"{name} ({size}):\n{_describe(violations)}"


def test_the_pages_fit_a_phone_screen(browser: WebDriver, web: Web, story: Story) -> None:
    browser.set_window_size(*PHONE)
    for url in (web.page_link(REFERRER), f"{web.settings.referral_link_base}/{story.code}"):
        _open(browser, url)
        overflow = browser.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"{url} scrolls sideways by {overflow}px on a phone"
    # On a phone each referral is a card whose cells say what they are.
    _open(browser, web.page_link(REFERRER))
    cell = browser.find_element(By.CSS_SELECTOR, '[data-testid="referrals"] tbody td.status')
    label = browser.execute_script(
        "return getComputedStyle(arguments[0], '::before').content", cell
    )
    assert label == '"Status"'

"""Headless Chromium from Debian's packages, driven by Selenium, for the browser tests.

Nothing is downloaded at test time: the browser and its driver are
``/usr/bin/chromium`` and ``/usr/bin/chromedriver`` (`make deps` installs the
``chromium`` and ``chromium-driver`` packages), Selenium Manager fails if
anything calls it (``referral_devtools.browser``), and axe-core comes from the
``node_modules`` that `make deps` installed from the pinned
``package-lock.json`` beside this file.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.chrome.webdriver import WebDriver

from referral_devtools.browser import DESKTOP, BrowserMissing, start_chromium

AXE = Path(__file__).resolve().parent / "node_modules" / "axe-core" / "axe.min.js"


@pytest.fixture(scope="session")
def chromium() -> Iterator[WebDriver]:
    """One browser for the session (each test opens its own pages)."""
    profile = tempfile.mkdtemp(prefix="referrals-chromium-")
    try:
        driver = start_chromium(Path(profile))
    except BrowserMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def browser(chromium: WebDriver) -> WebDriver:
    """The session's browser at desktop size."""
    chromium.set_window_size(*DESKTOP)
    return chromium


@pytest.fixture(scope="session")
def axe_source() -> str:
    if not AXE.is_file():
        pytest.fail(
            f"{AXE} is missing: `make deps` installs axe-core from tests/browser/package-lock.json",
            pytrace=False,
        )
    return AXE.read_text()

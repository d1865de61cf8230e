"""Debian's headless Chromium, driven by Selenium, for the browser tests and the demo's
screenshots.

The browser and its driver are ``/usr/bin/chromium`` and ``/usr/bin/chromedriver``
(Debian's ``chromium`` and ``chromium-driver`` packages; `make deps` installs
them). Selenium is given both paths, so it never runs Selenium Manager, which
would download a browser or a driver; :func:`start_chromium` also makes any call
to it fail, so that a change that would reach it is caught.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common import selenium_manager

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
#: Quiet, offline, throw-away: no sync, no updates, no background traffic, no GPU, no QUIC.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)
DESKTOP = (1280, 900)
PHONE = (390, 844)


class BrowserMissing(RuntimeError):
    """Debian's chromium or chromium-driver is not installed."""


def _never_selenium_manager(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("Selenium Manager must not run: it would download a browser or driver")


def start_chromium(user_data_dir: Path, *, window: tuple[int, int] = DESKTOP) -> WebDriver:
    """Debian's Chromium through Debian's chromedriver, with a fresh profile in
    ``user_data_dir``; :class:`BrowserMissing` if either is not installed."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        raise BrowserMissing(
            f"{', '.join(missing)} missing: install Debian's chromium and chromium-driver "
            "packages (`make deps` does)"
        )
    selenium_manager.SeleniumManager.binary_paths = _never_selenium_manager  # type: ignore[method-assign]
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={user_data_dir}")
    options.add_argument(f"--window-size={window[0]},{window[1]}")
    service = webdriver.ChromeService(executable_path=str(CHROMEDRIVER))
    return webdriver.Chrome(options=options, service=service)


def full_page_screenshot(driver: WebDriver, path: Path, *, width: int) -> Path:
    """A PNG of the whole page laid out at ``width`` CSS pixels, however long it is."""

    def emulate(height: int) -> None:
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600},
        )

    emulate(800)  # lay the page out at this width first, then measure it
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    emulate(max(height, 600))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(path))
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    return path

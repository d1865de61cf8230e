"""The demo's pictures: a referrer's page and a landing page, as a person sees them.

After the demo's year, referral-web (its own app, in the demo's event loop, on
a free port of 127.0.0.1) serves the demo's database; Debian's headless
Chromium opens a friend's landing page, then the page of a referrer whose
referrals show many statuses, through a signed link, and saves PNGs of both,
at desktop and phone widths.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import uvicorn
from pydantic import SecretStr

from referral_devtools.devstack import free_port
from referral_program import codes
from referral_runtime.page_links import PageLinks
from referral_runtime.settings import Settings
from referral_web.app import WebService, create_app

#: A referrer whose referrals show many different statuses, and not too many of them.
_SHOWCASE_REFERRER = """
select r.referrer_account_id, c.code
from referrals r
left join payouts p using (referral_id)
join referral_codes c on c.account_id = r.referrer_account_id and c.status = 'active'
group by r.referrer_account_id, c.code
having count(*) <= 14
order by count(distinct coalesce(p.outcome, r.status) || coalesce(p.reason, r.reason, '')) desc,
         count(*) desc, r.referrer_account_id
limit 1
"""


@dataclass(frozen=True)
class Screenshots:
    """Where the pictures are, or why there are none."""

    files: tuple[Path, ...] = ()
    missing: str | None = None


@contextlib.asynccontextmanager
async def _serving(settings: Settings) -> AsyncIterator[None]:
    service = WebService(settings)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(service=service),
            host="127.0.0.1",
            port=settings.http_port,
            lifespan="on",
            log_config=None,
            access_log=False,
        )
    )
    task = asyncio.create_task(server.serve(), name="demo-referral-web")
    try:
        async with asyncio.timeout(30):
            while not (server.started and service.ready()):
                if task.done():
                    task.result()
                await asyncio.sleep(0.05)
        yield
    finally:
        server.should_exit = True
        await task


async def take(pool: asyncpg.Pool, settings: Settings, out_dir: Path) -> Screenshots:
    """PNGs of a referrer's page and of its landing page in ``out_dir``."""
    from referral_devtools.browser import CHROMEDRIVER, CHROMIUM

    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        return Screenshots(
            missing=f"{', '.join(missing)} not installed (`make deps` installs them)"
        )
    async with pool.acquire() as conn:
        row = await conn.fetchrow(_SHOWCASE_REFERRER)
    if row is None:
        return Screenshots(missing="no referrer with referrals to show")
    port = free_port()
    web = settings.model_copy(
        update={
            "http_port": port,
            "page_signing_key": SecretStr(secrets.token_urlsafe(36)),
            "referral_link_base": f"http://127.0.0.1:{port}/r",
            "page_link_base": f"http://127.0.0.1:{port}/my-referrals",
            "signup_url": "https://app.example.com/signup",
            "visit_flush_seconds": 0.1,
        }
    )
    assert web.page_signing_key is not None
    links = PageLinks(web.page_signing_key.get_secret_value(), web.page_link_base)
    async with _serving(web):
        page = links.link(row["referrer_account_id"], now=datetime.now(UTC), days=1)
        landing = f"{web.referral_link_base}/{codes.display(row['code'])}"
        files = await asyncio.to_thread(_photograph, landing, page, out_dir)
    return Screenshots(files=files)


def _photograph(landing: str, page: str, out_dir: Path) -> tuple[Path, ...]:
    from referral_devtools.browser import DESKTOP, PHONE, full_page_screenshot, start_chromium

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="referrals-demo-chromium-") as profile:
        driver = start_chromium(Path(profile))
        try:
            driver.get(landing)
            files = [
                full_page_screenshot(driver, out_dir / "landing-page.png", width=DESKTOP[0]),
                full_page_screenshot(driver, out_dir / "landing-page-phone.png", width=PHONE[0]),
            ]
            driver.get(page)
            # The landing visit is counted in memory and written a moment later.
            deadline = time.monotonic() + 5
            while "opened <strong>0</strong>" in driver.page_source:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.1)
                driver.refresh()
            files += [
                full_page_screenshot(driver, out_dir / "referrer-page.png", width=DESKTOP[0]),
                full_page_screenshot(driver, out_dir / "referrer-page-phone.png", width=PHONE[0]),
            ]
        finally:
            driver.quit()
    return tuple(files)

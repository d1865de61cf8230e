"""referral-web under test: its app served by uvicorn on a real port (in a thread, or as the
`referral-web` console script), and plain HTTP requests to it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from html import unescape
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import uvicorn
from pydantic import SecretStr

from referral_devtools.devstack import free_port
from referral_runtime.page_links import PageLinks
from referral_runtime.settings import Settings
from referral_web.app import WebService, create_app
from tests.e2e.harness import spawn, terminate

SIGNING_KEY = "test-page-signing-key-0123456789abcdef"
API_TOKEN = "s3cret-token"
SIGNUP_URL = "https://signup.example.com/start?plan=any"


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self) -> Any:
        return json.loads(self.body)


def request(url: str, *, token: str | None = None, method: str = "GET") -> Response:
    """One HTTP request; an error status is a response like any other (0: nothing answered)."""
    req = urllib.request.Request(url, method=method)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as answer:
            return Response(answer.status, {k.lower(): v for k, v in answer.headers.items()},
                            answer.read())  # fmt: skip
    except urllib.error.HTTPError as exc:
        return Response(exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read())
    except OSError:
        return Response(0, {}, b"")


def web_settings(settings: Settings, port: int, **overrides: Any) -> Settings:
    """``settings`` for a referral-web listening on ``port`` of 127.0.0.1."""
    base = f"http://127.0.0.1:{port}"
    update: dict[str, Any] = {
        "page_signing_key": SecretStr(SIGNING_KEY),
        "api_token": API_TOKEN,
        "referral_link_base": f"{base}/r",
        "page_link_base": f"{base}/my-referrals",
        "signup_url": SIGNUP_URL,
        "visit_flush_seconds": 0.2,
        "health_probe_seconds": 0.5,
        "http_port": port,
    }
    update.update(overrides)
    return settings.model_copy(update=update)


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "it") -> None:
    """Poll ``predicate`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


@dataclass
class Web:
    """A running referral-web: where it answers and how to make links to its pages."""

    base: str
    settings: Settings
    service: WebService | None = None
    loop: asyncio.AbstractEventLoop | None = None  # the server's, when served in a thread

    @property
    def links(self) -> PageLinks:
        return PageLinks(SIGNING_KEY, self.settings.page_link_base)

    def page_link(self, account: str, *, now: datetime | None = None, days: int = 30) -> str:
        return self.links.link(account, now=now or datetime.now(UTC), days=days)

    def get(self, path: str, *, token: str | None = None, method: str = "GET") -> Response:
        url = path if path.startswith("http") else self.base + path
        return request(url, token=token, method=method)


@contextlib.contextmanager
def serving(
    settings: Settings,
    *,
    clock: Callable[[], datetime] | None = None,
    ready: bool = True,
    port: int | None = None,
    **overrides: Any,
) -> Iterator[Web]:
    """referral-web's app on a free port, served by uvicorn in a thread (lifespan included)."""
    port = port or free_port()
    configured = web_settings(settings, port, **overrides)
    service = WebService(configured, clock=clock) if clock else WebService(configured)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(service=service),
            host="127.0.0.1",
            port=port,
            lifespan="on",
            log_config=None,
            access_log=False,
        )
    )
    loop = asyncio.new_event_loop()
    thread = threading.Thread(
        target=loop.run_until_complete, args=(server.serve(),), name="referral-web", daemon=True
    )
    thread.start()
    web = Web(f"http://127.0.0.1:{port}", configured, service, loop)
    try:
        wait_until(lambda: server.started, what="uvicorn to listen")
        if ready:
            wait_until(lambda: web.get("/readyz").status == 200, what="/readyz")
        yield web
    finally:
        server.should_exit = True
        thread.join(30)
        loop.close()


@contextlib.contextmanager
def web_process(
    settings: Settings, log: Path, **env: str
) -> Iterator[tuple[Web, subprocess.Popen[bytes]]]:
    """The `referral-web` console script as a real process, ready when the block begins."""
    port = free_port()
    configured = web_settings(settings, port)
    variables = {
        "HTTP_PORT": str(port),
        "PAGE_SIGNING_KEY": SIGNING_KEY,
        "API_TOKEN": API_TOKEN,
        "REFERRAL_LINK_BASE": configured.referral_link_base,
        "PAGE_LINK_BASE": configured.page_link_base,
        "SIGNUP_URL": SIGNUP_URL,
        "VISIT_FLUSH_SECONDS": "0.2",
        "HEALTH_PROBE_SECONDS": "0.5",
        **env,
    }
    proc = spawn(["referral-web"], settings, log, **variables)
    web = Web(f"http://127.0.0.1:{port}", configured)
    try:

        def ready() -> bool:
            assert proc.poll() is None, log.read_text()
            return web.get("/readyz").status == 200

        wait_until(ready, timeout=60, what="referral-web's /readyz")
        yield web, proc
    finally:
        if proc.poll() is None:
            terminate(proc)


class _Tables(HTMLParser):
    """The rows of each ``<table data-testid=...>``: lists of cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._in_body = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self._table = dict(attrs).get("data-testid") or "?"
            self.tables[self._table] = []
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self._row = []
        elif tag == "td" and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._row is not None and self._cell is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table is not None:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "tbody":
            self._in_body = False
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def table_rows(html: str, testid: str) -> list[list[str]]:
    """The body rows of the table ``data-testid=testid`` in ``html``, as cell texts."""
    parser = _Tables()
    parser.feed(html)
    return parser.tables.get(testid, [])


def element_text(html: str, testid: str) -> str:
    """The text inside the element ``data-testid=testid``, tags dropped, whitespace folded."""
    match = re.search(
        rf'<(\w+)[^>]*data-testid="{re.escape(testid)}"[^>]*>(.*?)</\1>', html, flags=re.DOTALL
    )
    assert match, f"no data-testid={testid} in the page"
    return " ".join(unescape(re.sub(r"<[^>]+>", "", match[2])).split())

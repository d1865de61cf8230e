"""referral-web's wiring: the service (pool, readiness, visit counting) and its FastAPI app.

The app serves, on ``HTTP_PORT``:

- ``<path of REFERRAL_LINK_BASE>/<CODE>``: the friend's landing page (``pages.py``);
- ``<path of PAGE_LINK_BASE>/<token>``: the referrer's page, for a signed link only;
- ``/v1/...``: the JSON read API behind ``API_TOKEN`` (``api.py``), described by
  ``/openapi.json``;
- ``/referral-assets/...``: the one stylesheet and the copy button's script;
- ``/healthz``, ``/readyz``, ``/metrics``.

It reads through the ``referral_web`` role (every connection switches to it),
which may select what the pages show and add landing visits, nothing else.
Like the other services it starts and stays up while Postgres is down,
connecting in the background, and ``/readyz`` says 503 until it answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import urlsplit

import asyncpg
import structlog
from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from referral_runtime.db import TRANSIENT_DB_ERRORS, WEB_ROLE, create_pool
from referral_runtime.health import DependencyProbe
from referral_runtime.page_links import PageLinks
from referral_runtime.retry import Backoff, retry_until_stopped, sleep_unless_stopped
from referral_runtime.settings import DatabaseSettings
from referral_web import api, pages
from referral_web.metrics import WebMetrics
from referral_web.openapi import without_unused_validation_errors
from referral_web.visits import VisitBuffer, run_flusher

log = structlog.get_logger(__name__)

#: The public pages' queries are small; one that runs longer is stopped, not waited for.
STATEMENT_TIMEOUT_MS = 5000

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class ConfigurationError(ValueError):
    """A setting referral-web cannot run without; the message names it."""


def url_path(url: str) -> str:
    """The path part of a link base, without its trailing slash (``""`` for the root)."""
    return urlsplit(url).path.rstrip("/")


class WebService:
    """What the referral-web process owns, built once at start-up."""

    def __init__(
        self,
        settings: DatabaseSettings,
        registry: CollectorRegistry | None = None,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        key = settings.page_signing_key
        if key is None:
            raise ConfigurationError(
                "PAGE_SIGNING_KEY is not set: referral-web signs and checks the links to "
                "referrers' pages with it (at least 32 random characters, the same value "
                "`referrals page-link` uses)"
            )
        landing, page = url_path(settings.referral_link_base), url_path(settings.page_link_base)
        if not page or page == landing:
            raise ConfigurationError(
                f"PAGE_LINK_BASE ({settings.page_link_base}) needs a path of its own beside "
                f"REFERRAL_LINK_BASE ({settings.referral_link_base}), e.g. "
                "https://app.example.com/my-referrals"
            )
        self.settings = settings
        self.metrics = WebMetrics(registry)
        self.links = PageLinks(key.get_secret_value(), settings.page_link_base)
        self.clock = clock
        self.visits = VisitBuffer()
        self.pool: asyncpg.Pool | None = None
        self.stopping = asyncio.Event()
        self.db_ok = False
        self._probe = DependencyProbe(
            lambda: self.pool, lambda: None, interval=settings.health_probe_seconds
        )
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Connect in the background (with backoff) and return at once."""
        self._tasks = [
            asyncio.create_task(self._connect(), name="web-connect"),
            asyncio.create_task(self._watch_database(), name="web-probe"),
            asyncio.create_task(
                run_flusher(
                    lambda: self.pool,
                    self.visits,
                    self.metrics,
                    self.stopping,
                    self.settings.visit_flush_seconds,
                ),
                name="web-visits",
            ),
        ]

    async def _connect(self) -> None:
        s = self.settings

        async def open_pool() -> asyncpg.Pool:
            return await create_pool(
                s.database_url,
                size=s.db_pool_size,
                role=WEB_ROLE,
                server_settings={"statement_timeout": str(STATEMENT_TIMEOUT_MS)},
            )

        pool = await retry_until_stopped(
            "database_connect", open_pool, self.stopping, Backoff(0.5, 30.0)
        )
        if pool is not None:
            self.pool = pool
            await self._check()
            log.info("web_started")

    async def _watch_database(self) -> None:
        while not self.stopping.is_set():
            await self._check()
            await sleep_unless_stopped(self.stopping, self.settings.health_probe_seconds)

    async def _check(self) -> None:
        ok = await self._probe.check_database()
        if ok != self.db_ok:
            log.info(
                "dependency_available" if ok else "dependency_unavailable", dependency="database"
            )
        self.db_ok = ok
        self.metrics.ready.set(1 if self.ready() else 0)

    def ready(self) -> bool:
        """The pool is open and the database answered the last probe."""
        return self.pool is not None and self.db_ok and not self.stopping.is_set()

    async def stop(self) -> None:
        """Write the visits counted so far, then close the pool."""
        self.stopping.set()
        self.metrics.ready.set(0)
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, timeout=10)
        if self.pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.pool.close(), timeout=5)
        log.info("web_stopped")


class RequestMetrics:
    """Counts every answer and its latency by the route's template, never the raw path (a
    page link's token must not become a label)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], metrics: WebMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(template, scope["method"], str(status)).inc()
            self.metrics.request_duration.labels(template).observe(time.perf_counter() - started)


def create_app(
    settings: DatabaseSettings | None = None, *, service: WebService | None = None
) -> FastAPI:
    """The ASGI app of referral-web; ``service`` defaults to one built from ``settings``."""
    from referral_runtime.settings import load_settings

    if service is None:
        service = WebService(settings or load_settings(DatabaseSettings))
    web = service

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await web.start()
        try:
            yield
        finally:
            await web.stop()

    app = FastAPI(
        title="Referral rewards read API",
        version="1",
        description=api.__doc__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        # A path is served as written or not at all (no redirect to a near one).
        redirect_slashes=False,
    )
    app.state.service = web
    generated = app.openapi
    app.openapi = lambda: without_unused_validation_errors(generated())  # type: ignore[method-assign]
    app.add_middleware(RequestMetrics, metrics=web.metrics)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> PlainTextResponse:
        return PlainTextResponse("ok")

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> PlainTextResponse:
        if web.ready():
            return PlainTextResponse("ready")
        return PlainTextResponse("not ready", status_code=503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(web.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.mount(pages.ASSETS_PATH, StaticFiles(packages=[("referral_web", "static")]), name="assets")
    app.include_router(api.router(web))
    app.include_router(
        pages.router(
            web,
            landing_prefix=url_path(web.settings.referral_link_base),
            page_prefix=url_path(web.settings.page_link_base),
        )
    )

    async def database_unavailable(request: Request, exc: Exception) -> Response:
        log.warning("web_db_unavailable", error=type(exc).__name__)
        if request.url.path.startswith(api.PREFIX + "/"):
            return JSONResponse(
                {"error": "database unavailable"}, status_code=503, headers={"retry-after": "5"}
            )
        return pages.unavailable()

    for error in TRANSIENT_DB_ERRORS:
        if issubclass(error, Exception):
            app.add_exception_handler(error, database_unavailable)
    app.add_exception_handler(api.ApiProblem, api.problem_response)

    async def not_found(request: Request, exc: Exception) -> Response:
        # The API answers in JSON; any other path nothing serves gets a plain 404, as the
        # other services answer.
        if request.url.path.startswith(api.PREFIX + "/"):
            return await http_exception_handler(request, cast(StarletteHTTPException, exc))
        return PlainTextResponse("not found", status_code=404)

    app.add_exception_handler(404, not_found)
    return app

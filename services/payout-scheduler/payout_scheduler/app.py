"""The scheduler's HTTP surface: ``/healthz``, ``/readyz`` and ``/metrics``, plus its lifespan.

A bare ASGI callable: the scheduler consumes nothing, so there is no broker
app to hang routes on. The lifespan starts the service and, on SIGTERM, stops
it (the chunk in hand commits, the queued messages are published).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import make_asgi_app

from payout_scheduler.service import SchedulerService

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def _text(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain; charset=utf-8")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def create_app(service: SchedulerService) -> ASGIApp:
    """The ASGI app serving ``service``'s probes and metrics and running its lifespan."""
    metrics_app = make_asgi_app(service.metrics.registry)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await service.start()
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await service.stop()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/metrics":
            await metrics_app(scope, receive, send)
        elif path == "/healthz":
            alive = service.alive()
            await _text(send, 200 if alive else 503, b"ok" if alive else b"scheduler task ended")
        elif path == "/readyz":
            ready = service.ready()
            await _text(send, 200 if ready else 503, b"ready" if ready else b"not ready")
        else:
            await _text(send, 404, b"not found")

    return app

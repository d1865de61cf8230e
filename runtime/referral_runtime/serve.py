"""Serving an ASGI service process with uvicorn, exiting 0 after a graceful SIGTERM."""

from __future__ import annotations

import signal
from typing import Any

import uvicorn


def serve(app: Any, port: int, *, graceful_seconds: int = 9) -> None:
    """Run ``app`` until SIGTERM/SIGINT; lifespan shutdown finishes in-flight work first.

    uvicorn re-raises the signal it caught once shutdown is complete; a no-op
    Python handler turns that into a normal exit (status 0) instead of a kill.
    """
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    uvicorn.run(
        app,
        host="0.0.0.0",
        port=port,
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=graceful_seconds,
    )

"""The cycle collector, suspended while a decision pass runs.

A pass allocates millions of short-lived objects and creates no garbage
cycles: reference counting frees each chunk's objects when the chunk is done,
and each collection would only re-walk the chunk in hand. The collector is
process-wide, so is this switch: it stays off while any pass runs, and cycles
made meanwhile elsewhere in the process (the relay, the HTTP server) wait
until the last pass ends.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


class _CollectorPause:
    """Counts the passes in progress; the collector is back when the count returns to 0."""

    def __init__(self) -> None:
        self.holders = 0
        self.was_enabled = True

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        if self.holders == 0:
            self.was_enabled = gc.isenabled()
            gc.disable()
        self.holders += 1
        try:
            yield
        finally:
            self.holders -= 1
            if self.holders == 0 and self.was_enabled:
                gc.enable()


_pause = _CollectorPause()


def no_cycle_collection() -> contextlib.AbstractContextManager[None]:
    """Suspend the cycle collector for the duration of the ``with`` block (re-entrant)."""
    return _pause.held()

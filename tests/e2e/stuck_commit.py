"""`payout-scheduler` whose offset commits never return: a crash between apply and commit.

Run as ``python -m tests.e2e.stuck_commit`` with the scheduler's environment and
``STUCK_COMMIT_MARKER`` set to a path. The real service runs unchanged, except that the
Kafka consumer's ``commit`` writes the offsets it was asked to commit to the marker file
and then waits forever, so the test can SIGKILL the process exactly after a batch's
transaction committed and before its offsets are.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer

from payout_scheduler.main import main


async def _stuck_commit(self: AIOKafkaConsumer, offsets: Any = None) -> None:
    marker = Path(os.environ["STUCK_COMMIT_MARKER"])
    text = json.dumps({f"{tp.topic}:{tp.partition}": o for tp, o in offsets.items()})
    await asyncio.to_thread(marker.write_text, text)
    await asyncio.Event().wait()


if __name__ == "__main__":
    AIOKafkaConsumer.commit = _stuck_commit  # type: ignore[method-assign]
    raise SystemExit(main([]))

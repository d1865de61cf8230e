"""Validation of a fetched batch, before its transaction: records -> events or dead letters, planned."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from referral_consumer.ingest import Parsed, Record, parse_record
from referral_consumer.plan import BatchPlan

#: Records validated between two yields to the event loop (see ``parse_interleaved``).
PARSE_SLICE = 250


@dataclass
class ParsedBatch:
    """A batch after validation, planned, before its transaction."""

    records: Sequence[Record]
    started: float
    plan: BatchPlan = field(default_factory=BatchPlan)


class BatchParser:
    """Turns fetched records into a :class:`ParsedBatch` (pure CPU work, no I/O)."""

    def __init__(
        self,
        topic_types: dict[str, str],
        *,
        max_message_bytes: int,
        program_currency: str | None = None,
    ) -> None:
        self._topic_types = topic_types
        self._max_bytes = max_message_bytes
        #: Billing events in another currency are counted (None: not checked).
        self._program_currency = program_currency

    async def parse_interleaved(self, records: Sequence[Record]) -> ParsedBatch:
        """Validate and plan every record (pure CPU work), yielding to the loop every
        ``PARSE_SLICE`` records.

        While the previous batch's transaction is in flight, each of its
        statements waits for the loop: parsing a whole batch in one go would
        hold every one of them up for as long as the parse takes.
        """
        batch = ParsedBatch(records, time.perf_counter())
        for start in range(0, len(records), PARSE_SLICE):
            if start:
                await asyncio.sleep(0)
            self._parse_into(batch.plan, records[start : start + PARSE_SLICE])
        await asyncio.sleep(0)
        batch.plan.seal()
        return batch

    def _parse_into(self, plan: BatchPlan, records: Sequence[Record]) -> None:
        parsed = []
        for record in records:
            outcome = parse_record(
                record, self._topic_types, self._max_bytes, self._program_currency
            )
            if isinstance(outcome, Parsed):
                parsed.append(outcome)
            else:
                plan.dead.append(outcome)
        plan.add(parsed)

"""At most one batch in flight: the next batch is fetched and validated while the
previous one is written, and offsets are committed strictly in batch order.

The invariants:
- a batch's offsets are committed (explicitly, per partition) only after its
  transaction committed;
- batch N+1 starts its transaction only after batch N's committed, so
  recomputations see every earlier fact;
- if a batch fails, the consumer seeks back to the first offset of every
  partition the failed and the current batch touched, so no later commit can
  move past unapplied records (a plain ``commit()`` of the consumer's position
  would: see KAFKA-NOTES, ag2ai/faststream#2618).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from referral_consumer.ingest import Record
from referral_consumer.logfields import batch_fields
from referral_consumer.metrics import ConsumerMetrics
from referral_consumer.parser import ParsedBatch
from referral_consumer.writer import ShuttingDown
from referral_runtime.records import first_offsets, next_offsets

__all__ = ["BatchPipeline", "first_offsets", "next_offsets"]

log = structlog.get_logger(__name__)


class Parser(Protocol):
    """Validates and plans a fetched batch (the port :class:`~referral_consumer.parser.BatchParser` fills)."""

    async def parse_interleaved(self, records: Sequence[Record]) -> ParsedBatch: ...


class Writer(Protocol):
    """Makes a parsed batch durable, or raises (the port :class:`~referral_consumer.writer.BatchWriter` fills)."""

    async def apply(self, batch: ParsedBatch) -> object: ...


def _committed(task: asyncio.Task[None]) -> bool:
    """The batch's task ended well: written and its offsets committed (with overlap, nobody
    awaits it until the next batch arrives, which may be long on an idle topic)."""
    return task.done() and not task.cancelled() and task.exception() is None


@dataclass
class _InFlight:
    task: asyncio.Task[None]
    records: Sequence[Record]
    consumer: Any


class BatchPipeline:
    """Runs each batch's transaction and offset commit, overlapping with the next fetch."""

    def __init__(
        self,
        parser: Parser,
        writer: Writer,
        metrics: ConsumerMetrics,
        *,
        overlap: bool = True,
        on_commit: Callable[[], None] | None = None,
    ) -> None:
        self._parser = parser
        #: Called after each batch's offsets are committed (the lag gauges refresh then).
        self._on_commit = on_commit
        self._writer = writer
        self._metrics = metrics
        self._overlap = overlap
        self._inflight: _InFlight | None = None
        #: The batch handed over and not yet in flight (validated while the previous is written).
        self._waiting: Sequence[Record] = ()
        self._draining = False

    async def submit(self, records: Sequence[Record], consumer: Any) -> None:
        """Hand over a fetched batch. Returns once it is in flight (or done, when draining)."""
        self._waiting = records
        try:
            # Interleaved: the batch in flight, if any, keeps its transaction moving meanwhile.
            batch = await self._parser.parse_interleaved(records)
            if not await self.settle():
                # The previous batch failed and its partitions were rewound; this batch
                # comes after it, so it is fetched again too.
                self._rewind(consumer, records)
                return
            task = asyncio.create_task(self._write_and_commit(batch, consumer))
            self._inflight = _InFlight(task, records, consumer)
        finally:
            self._waiting = ()
        if self._draining or not self._overlap:
            await self.settle()

    def unapplied_from(self) -> dict[TopicPartition, int]:
        """The first offset of each partition in a batch handed over and not yet committed:
        everything before it is applied (what :mod:`referral_consumer.progress` reads)."""
        inflight = self._inflight
        records = list(self._waiting)
        if inflight is not None and not _committed(inflight.task):
            records += inflight.records
        return first_offsets(records)

    async def settle(self) -> bool:
        """Wait for the batch in flight; False if it failed (its partitions are rewound)."""
        inflight, self._inflight = self._inflight, None
        if inflight is None:
            return True
        try:
            await inflight.task
            return True
        except ShuttingDown:
            return False  # nothing committed; the next owner reads from the last commit
        except Exception as exc:
            log.error(
                "batch_failed_will_retry",
                error=type(exc).__name__,
                **batch_fields(inflight.records),
                exc_info=True,
            )
            self._rewind(inflight.consumer, inflight.records)
            return False

    async def drain(self) -> None:
        """Stop overlapping and finish what is in flight (shutdown, rebalance)."""
        self._draining = True
        await self.settle()

    def resume(self) -> None:
        self._draining = False

    async def _write_and_commit(self, batch: ParsedBatch, consumer: Any) -> None:
        await self._writer.apply(batch)
        try:
            await consumer.commit(next_offsets(batch.records))
        except (CommitFailedError, KafkaError) as exc:
            # The effects are durable; the next owner re-reads these records as duplicates.
            self._metrics.commit_failures.inc()
            log.warning(
                "offset_commit_failed", error=type(exc).__name__, **batch_fields(batch.records)
            )
        if self._on_commit is not None:
            self._on_commit()

    def _rewind(self, consumer: Any, records: Sequence[Record]) -> None:
        assigned = consumer.assignment()
        for tp, offset in first_offsets(records).items():
            if tp in assigned:
                consumer.seek(tp, offset)

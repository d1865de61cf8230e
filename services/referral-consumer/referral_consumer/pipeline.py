"""Batch transactions in flight, offsets committed in batch order.

The next batch is fetched and validated while earlier ones are written, and up
to ``in_flight`` batch transactions run at once, each on its own connection.
The invariants:
- a batch's offsets are committed (explicitly, per partition) only after its
  transaction committed *and* every earlier batch's offsets were committed, so
  the committed offset of a partition never passes a record that is not
  durable, whichever transaction finishes first;
- transactions in flight together are ordered by the database's row locks
  (``referral_state``), as those of two replicas are: a batch that writes an
  account an earlier batch writes, or reads a referrer it changes, waits for
  its commit, so recomputations see every earlier fact they depend on; a
  deadlock between them is retried by the writer;
- if a batch fails, no later batch commits its offsets (they may have committed
  their transactions: redelivered, their events are duplicates), every batch in
  flight is finished, and the consumer seeks back, per partition, to the first
  offset of the failed batch or of any later one, whichever is lowest, so no
  later commit can move past unapplied records (a plain ``commit()`` of the
  consumer's position would: see KAFKA-NOTES, ag2ai/faststream#2618).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
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


class EarlierBatchFailed(Exception):
    """A batch whose transaction may have committed, but whose offsets are not: an earlier
    batch failed, so committing them would move past the earlier batch's records."""


def _committed(task: asyncio.Task[None]) -> bool:
    """The batch's task ended well: written and its offsets committed (with overlap, nobody
    awaits it until the next batch arrives, which may be long on an idle topic)."""
    return task.done() and not task.cancelled() and task.exception() is None


def _failed(task: asyncio.Task[None]) -> bool:
    return task.done() and (task.cancelled() or task.exception() is not None)


def _being_cancelled() -> bool:
    """The running task itself is being cancelled (not only a task it awaited)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


@dataclass
class _InFlight:
    task: asyncio.Task[None]
    records: Sequence[Record]
    consumer: Any


class BatchPipeline:
    """Runs up to ``in_flight`` batch transactions at once, their offset commits in order,
    overlapping with the next fetch."""

    def __init__(
        self,
        parser: Parser,
        writer: Writer,
        metrics: ConsumerMetrics,
        *,
        overlap: bool = True,
        in_flight: int = 2,
        on_commit: Callable[[], None] | None = None,
    ) -> None:
        if in_flight < 1:
            raise ValueError("at least one batch must be in flight")
        self._parser = parser
        #: Called after each batch's offsets are committed (the lag gauges refresh then).
        self._on_commit = on_commit
        self._writer = writer
        self._metrics = metrics
        self._overlap = overlap
        self._depth = in_flight
        #: Batches handed to the writer, oldest first; their offset commits follow this order.
        self._inflight: deque[_InFlight] = deque()
        #: The batch handed over and not yet in flight (validated while others are written).
        self._waiting: Sequence[Record] = ()
        self._draining = False

    async def submit(self, records: Sequence[Record], consumer: Any) -> None:
        """Hand over a fetched batch. Returns once it is in flight (or done, when draining)."""
        self._waiting = records
        try:
            # Interleaved: the batches in flight keep their transactions moving meanwhile.
            batch = await self._parser.parse_interleaved(records)
            # Room for it, and no failure behind it (its transaction would be wasted).
            while len(self._inflight) >= self._depth or any(
                _failed(i.task) for i in self._inflight
            ):
                if not await self._settle_oldest([records]):
                    # An earlier batch failed and the partitions were rewound (to before
                    # this batch too): it is fetched again.
                    return
            previous = self._inflight[-1].task if self._inflight else None
            task = asyncio.create_task(self._write_and_commit(batch, consumer, previous))
            self._inflight.append(_InFlight(task, records, consumer))
        finally:
            self._waiting = ()
        if self._draining or not self._overlap:
            await self.settle()

    def unapplied_from(self) -> dict[TopicPartition, int]:
        """The first offset of each partition in a batch handed over and not yet committed:
        everything before it is applied (what :mod:`referral_consumer.progress` reads)."""
        records = list(self._waiting)
        for inflight in self._inflight:
            if not _committed(inflight.task):
                records += inflight.records
        return first_offsets(records)

    async def settle(self) -> bool:
        """Wait for every batch in flight; False if one failed (the partitions are rewound)."""
        while self._inflight:
            if not await self._settle_oldest([]):
                return False
        return True

    async def _settle_oldest(self, later: Sequence[Sequence[Record]]) -> bool:
        """Wait for the oldest batch in flight. If it failed, finish the others, rewind to
        before all of them and ``later`` (batches handed over after them), and say False."""
        oldest = self._inflight[0]
        failed: BaseException | None = None
        try:
            await oldest.task
            self._inflight.popleft()
            return True
        except ShuttingDown:
            pass  # nothing committed; the next owner reads from the last commit
        except asyncio.CancelledError:
            if _being_cancelled():
                raise
            # Abandoned at shutdown (see ConsumerService.begin_shutdown): nothing committed.
        except Exception as exc:
            failed = exc
        rest = list(self._inflight)
        self._inflight.clear()
        for inflight in rest[1:]:
            # Their offsets wait for the failed batch's: they end with EarlierBatchFailed.
            with contextlib.suppress(Exception):
                await inflight.task
        if failed is not None:
            log.error(
                "batch_failed_will_retry",
                error=type(failed).__name__,
                **batch_fields(oldest.records),
                exc_info=failed,
            )
        self._rewind(oldest.consumer, [i.records for i in rest] + list(later))
        return False

    async def drain(self) -> None:
        """Stop overlapping and finish what is in flight (shutdown, rebalance)."""
        self._draining = True
        await self.settle()

    def resume(self) -> None:
        self._draining = False

    async def _write_and_commit(
        self, batch: ParsedBatch, consumer: Any, previous: asyncio.Task[None] | None
    ) -> None:
        await self._writer.apply(batch)
        if previous is not None:
            # Offsets in batch order: this batch's only after the previous batch's.
            try:
                await asyncio.shield(previous)
            except asyncio.CancelledError:
                if _being_cancelled():
                    raise
                raise EarlierBatchFailed("the previous batch was abandoned") from None
            except Exception as exc:
                raise EarlierBatchFailed from exc
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

    def _rewind(self, consumer: Any, batches: Sequence[Sequence[Record]]) -> None:
        """Seek each partition back to the lowest first offset any of ``batches`` holds."""
        assigned = consumer.assignment()
        for tp, offset in first_offsets([r for records in batches for r in records]).items():
            if tp in assigned:
                consumer.seek(tp, offset)

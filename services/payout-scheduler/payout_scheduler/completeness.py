"""Decisions only on complete facts: a pass first waits for the consumer group to catch up.

A decision is irreversible, and the facts it rests on reach the database only
through the consumer. So before a pass decides anything it reads, from the
broker, the end offset of every partition of the billing topics (what billing
had published when the pass began), then waits until the consumer group's
committed offsets reach them: the consumer commits an offset only after the
events before it are durable in Postgres, so from then on the database holds
every billing event published before the pass began. The wait is bounded
(``SCHEDULER_FACTS_WAIT_SECONDS``); past it the pass is held back: it decides
nothing and is tried again soon.

Events billing publishes after the pass began are not waited for: they are
later than the decision, exactly as if they had been published a moment after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from referral_runtime.retry import Backoff, sleep_unless_stopped
from referral_runtime.settings import Settings


class OffsetsReader(Protocol):
    """What the wait needs from the broker (a fake stands in for it in unit tests)."""

    async def partitions(self, topics: Sequence[str]) -> list[TopicPartition]: ...

    async def end_offsets(
        self, partitions: Sequence[TopicPartition]
    ) -> dict[TopicPartition, int]: ...

    async def beginning_offsets(
        self, partitions: Sequence[TopicPartition]
    ) -> dict[TopicPartition, int]: ...

    async def committed(
        self, group: str, partitions: Sequence[TopicPartition]
    ) -> dict[TopicPartition, int]: ...


def unapplied(
    targets: Mapping[TopicPartition, int],
    committed: Mapping[TopicPartition, int],
    beginnings: Mapping[TopicPartition, int],
) -> dict[TopicPartition, int]:
    """Per partition, how many messages before its target offset the group has not committed.

    ``targets``: the end offsets read when the pass began. ``committed``: the
    group's committed offsets (the next offset it will read; a partition it
    never committed is missing or negative). ``beginnings``: the first offset
    still in each partition; a group with no commit, or one below it, starts
    there, since the messages before it are gone for every reader. Partitions
    the group has caught up on are left out, so an empty result means complete.
    """
    behind: dict[TopicPartition, int] = {}
    for tp, target in targets.items():
        floor = beginnings.get(tp, 0)
        position = max(committed.get(tp, -1), floor)
        if position < target:
            behind[tp] = target - position
    return behind


@dataclass(frozen=True)
class FactsCheck:
    """How the wait for complete facts ended."""

    complete: bool
    waited_seconds: float
    unapplied: int = 0  # billing messages published before the pass began, not yet applied
    partitions_behind: int = 0
    stopped: bool = False  # shutdown came first: neither complete nor held back

    @property
    def held_back(self) -> bool:
        """The wait ran out: the pass must decide nothing."""
        return not self.complete and not self.stopped


async def wait_for_complete_facts(
    reader: OffsetsReader,
    topics: Sequence[str],
    group: str,
    max_wait_seconds: float,
    *,
    stopping: asyncio.Event | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> FactsCheck:
    """Wait until ``group`` has committed every message of ``topics`` published by now.

    The targets are read once, at the start; the committed offsets are read
    again with short, growing pauses until they reach the targets, until
    ``max_wait_seconds`` have passed (held back), or until ``stopping`` is set.
    Broker errors propagate: without the offsets nothing can be decided.
    """
    started = clock()
    stopping = stopping or asyncio.Event()
    partitions = await reader.partitions(topics)
    targets = await reader.end_offsets(partitions)
    beginnings = await reader.beginning_offsets(partitions)
    pause = Backoff(0.05, 1.0, jitter=0.0)
    while True:
        behind = unapplied(targets, await reader.committed(group, partitions), beginnings)
        waited = clock() - started
        if not behind:
            return FactsCheck(True, waited)
        remaining = max_wait_seconds - waited
        if remaining <= 0:
            return FactsCheck(False, waited, sum(behind.values()), len(behind))
        if await sleep_unless_stopped(stopping, min(pause.next_delay(), remaining)):
            return FactsCheck(False, clock() - started, sum(behind.values()), len(behind), True)


class BrokerOffsets:
    """:class:`OffsetsReader` on the broker: an admin client and a consumer outside any group.

    Only calls that Tansu answers as Apache Kafka does: ``describe_topics``
    (the partitions), ``list_offsets`` through the consumer's
    ``end_offsets``/``beginning_offsets``, and ``OffsetFetch`` for named
    partitions (``list_consumer_group_offsets`` with ``partitions``; asking for
    all of a group's partitions at once fails against Tansu).
    """

    def __init__(self, settings: Settings) -> None:
        security = settings.kafka_security()
        self._admin = AIOKafkaAdminClient(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            request_timeout_ms=30_000,
            **security,
        )
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            request_timeout_ms=30_000,
            **security,
        )

    async def start(self) -> None:
        """Connect both clients; a failed start is undone before the error propagates."""
        try:
            await self._admin.start()
            await self._consumer.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self._consumer.stop()
        with contextlib.suppress(Exception):
            await self._admin.close()

    async def partitions(self, topics: Sequence[str]) -> list[TopicPartition]:
        described = await self._admin.describe_topics(list(topics))
        found = []
        for topic in described:
            if topic["error_code"]:
                raise KafkaError(
                    f"describing topic {topic['topic']} failed (error {topic['error_code']})"
                )
            found += [TopicPartition(topic["topic"], p["partition"]) for p in topic["partitions"]]
        return sorted(found)

    async def end_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        if not partitions:
            return {}
        ends: dict[TopicPartition, int] = await self._consumer.end_offsets(list(partitions))
        return ends

    async def beginning_offsets(
        self, partitions: Sequence[TopicPartition]
    ) -> dict[TopicPartition, int]:
        if not partitions:
            return {}
        firsts: dict[TopicPartition, int] = await self._consumer.beginning_offsets(list(partitions))
        return firsts

    async def committed(
        self, group: str, partitions: Sequence[TopicPartition]
    ) -> dict[TopicPartition, int]:
        if not partitions:
            return {}
        offsets = await self._admin.list_consumer_group_offsets(group, partitions=list(partitions))
        return {tp: meta.offset for tp, meta in offsets.items()}


@contextlib.asynccontextmanager
async def broker_offsets(settings: Settings) -> AsyncIterator[BrokerOffsets]:
    """A started :class:`BrokerOffsets` for the ``async with`` block."""
    reader = BrokerOffsets(settings)
    await reader.start()
    try:
        yield reader
    finally:
        await reader.stop()

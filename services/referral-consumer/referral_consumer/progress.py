"""Per assigned partition: the messages not yet applied, and how long they have waited
without the partition moving on.

A partition *stalls* while it has unapplied messages (its high watermark is past
the offset up to which this member has applied it) and that offset does not move.
Its stall clock starts at the latest of: the member's assignment, the last instant
it had nothing waiting, and the last time its applied offset moved. So a busy
partition that keeps committing stays near zero however large its lag, an idle
one stays at zero, and one stuck batch grows by the second, at any lag.

The applied offset is the committed one in substance: while a batch of the
partition is in flight (being validated or written), it is the first offset of
that batch, since everything before it was committed; otherwise it is the
consumer's position, since every record handed over has been applied and
committed (the position also steps over offsets that are no records, such as a
transactional producer's markers, which a committed offset never covers).

:class:`PartitionProgress` is the pure bookkeeping (time passed in);
:func:`refresh` reads the consumer and sets the gauges. It runs after every
commit and on a timer, so the values keep moving when nothing is applied.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from aiokafka import TopicPartition

from referral_consumer.metrics import ConsumerMetrics

#: The longest wait between two refreshes; cheap (no request to the broker), so often.
REFRESH_SECONDS = 1.0


class Progress(NamedTuple):
    """One partition at one instant."""

    unapplied: int
    stalled_seconds: float


class PartitionProgress:
    """The stall clock of each partition this member owns."""

    def __init__(self) -> None:
        self._since: dict[TopicPartition, float] = {}
        self._applied: dict[TopicPartition, int] = {}

    def assign(self, partitions: Iterable[TopicPartition], now: float) -> None:
        """This member now owns ``partitions``: their clocks start now."""
        for tp in partitions:
            self._since[tp] = now
            self._applied.pop(tp, None)

    def revoke(self, partitions: Iterable[TopicPartition]) -> None:
        """This member no longer owns ``partitions``: forget them."""
        for tp in partitions:
            self._since.pop(tp, None)
            self._applied.pop(tp, None)

    def known(self) -> set[TopicPartition]:
        """The partitions observed or assigned and not revoked since."""
        return set(self._since)

    def observe(self, tp: TopicPartition, *, highwater: int, applied: int, now: float) -> Progress:
        """The partition's unapplied messages and stall time, given its high watermark and
        the offset up to which it is applied (see the module docstring)."""
        unapplied = max(0, highwater - applied)
        since = self._since.setdefault(tp, now)
        # The furthest applied offset seen: a rewound batch applied again is no progress.
        furthest = self._applied.get(tp)
        if unapplied == 0 or (furthest is not None and applied > furthest):
            since = self._since[tp] = now
        self._applied[tp] = applied if furthest is None else max(furthest, applied)
        return Progress(unapplied, now - since)


async def refresh(
    consumer: Any,
    progress: PartitionProgress,
    in_flight: Mapping[TopicPartition, int],
    metrics: ConsumerMetrics,
    clock: Callable[[], float],
) -> None:
    """Set ``referrals_consumer_lag`` and ``referrals_consumer_partition_stalled_seconds``
    for every partition ``consumer`` owns and has fetched from (the high watermark is
    unknown before the first fetch), and drop the partitions it no longer owns.
    ``in_flight``: the first offset of each partition in a batch not yet committed."""
    owned = set(consumer.assignment())
    # aiokafka reports the old assignment from the revocation until the new one is
    # installed, so a revoked partition can be seen again meanwhile: drop what is not ours.
    forget(progress.known() - owned, progress, metrics)
    for tp in owned:
        highwater = consumer.highwater(tp)
        if highwater is None:
            continue
        applied = in_flight.get(tp)
        if applied is None:
            try:
                applied = await consumer.position(tp)
            except Exception:  # revoked or reset meanwhile: the next refresh sees it
                continue
        if tp not in consumer.assignment():
            continue  # revoked while we waited: its label sets are gone, keep them so
        now = clock()
        unapplied, stalled = progress.observe(tp, highwater=highwater, applied=applied, now=now)
        labels = (tp.topic, str(tp.partition))
        metrics.lag.labels(*labels).set(unapplied)
        metrics.partition_stalled.labels(*labels).set(stalled)


def forget(
    partitions: Iterable[TopicPartition], progress: PartitionProgress, metrics: ConsumerMetrics
) -> None:
    """Drop revoked partitions: their clocks and their label sets on both gauges."""
    partitions = list(partitions)
    progress.revoke(partitions)
    for tp in partitions:
        for gauge in (metrics.lag, metrics.partition_stalled):
            with contextlib.suppress(KeyError):
                gauge.remove(tp.topic, str(tp.partition))

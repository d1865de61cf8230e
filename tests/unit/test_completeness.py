"""The wait for complete facts: offset arithmetic, and the wait against a hand-written fake."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiokafka import TopicPartition

from payout_scheduler.completeness import FactsCheck, unapplied, wait_for_complete_facts

A0, A1, B0 = TopicPartition("a", 0), TopicPartition("a", 1), TopicPartition("b", 0)


def test_a_group_at_or_past_the_targets_has_nothing_unapplied() -> None:
    assert unapplied({A0: 5, A1: 0}, {A0: 5, A1: -1}, {}) == {}
    # Past the target: events published after the pass began, already applied too.
    assert unapplied({A0: 5}, {A0: 9}, {}) == {}


def test_a_group_behind_counts_the_messages_it_has_not_committed() -> None:
    assert unapplied({A0: 5, A1: 3, B0: 7}, {A0: 2, B0: 7}, {}) == {A0: 3, A1: 3}


def test_a_group_that_never_committed_starts_at_the_first_offset_still_kept() -> None:
    # Nothing kept before offset 4: a new group reads from there, so only 4..5 are owed.
    assert unapplied({A0: 6}, {A0: -1}, {A0: 4}) == {A0: 2}
    # Everything expired: nothing any reader could still apply.
    assert unapplied({A0: 6}, {}, {A0: 6}) == {}
    # A commit below the first kept offset counts from there, too.
    assert unapplied({A0: 6}, {A0: 1}, {A0: 4}) == {A0: 2}


class FakeOffsets:
    """Fixed end offsets; committed offsets that follow a script, one entry per read."""

    def __init__(self, ends: dict[TopicPartition, int], script: list[dict[TopicPartition, int]]):
        self.ends = ends
        self.script = script
        self.reads = 0
        self.groups: list[str] = []

    async def partitions(self, topics: Sequence[str]) -> list[TopicPartition]:
        return sorted(tp for tp in self.ends if tp.topic in topics)

    async def end_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.ends[tp] for tp in partitions}

    async def beginning_offsets(
        self, partitions: Sequence[TopicPartition]
    ) -> dict[TopicPartition, int]:
        return dict.fromkeys(partitions, 0)

    async def committed(
        self, group: str, partitions: Sequence[TopicPartition]
    ) -> dict[TopicPartition, int]:
        self.groups.append(group)
        step = self.script[min(self.reads, len(self.script) - 1)]
        self.reads += 1
        return {tp: step.get(tp, -1) for tp in partitions}


async def test_the_wait_ends_as_soon_as_the_group_reaches_the_targets() -> None:
    fake = FakeOffsets({A0: 4, B0: 2}, [{A0: 1}, {A0: 4}, {A0: 4, B0: 2}])
    check = await wait_for_complete_facts(fake, ["a", "b"], "grp", 10)
    assert check.complete and not check.held_back
    assert fake.reads == 3 and set(fake.groups) == {"grp"}
    assert check.waited_seconds < 5


async def test_only_the_named_topics_are_waited_for() -> None:
    fake = FakeOffsets({A0: 4, B0: 2}, [{A0: 4}])
    assert (await wait_for_complete_facts(fake, ["a"], "grp", 10)).complete


async def test_a_group_that_stays_behind_holds_the_pass_back_after_the_bound() -> None:
    fake = FakeOffsets({A0: 4, A1: 1, B0: 2}, [{A0: 1, B0: 2}])
    check = await wait_for_complete_facts(fake, ["a", "b"], "grp", 0.3)
    assert check == FactsCheck(False, check.waited_seconds, unapplied=4, partitions_behind=2)
    assert check.held_back
    assert 0.3 <= check.waited_seconds < 3
    assert fake.reads >= 2  # looked again before giving up


async def test_no_wait_at_all_still_checks_once() -> None:
    behind = FakeOffsets({A0: 4}, [{}])
    assert (await wait_for_complete_facts(behind, ["a"], "grp", 0)).held_back
    caught_up = FakeOffsets({A0: 4}, [{A0: 4}])
    assert (await wait_for_complete_facts(caught_up, ["a"], "grp", 0)).complete


async def test_shutdown_ends_the_wait_neither_complete_nor_held_back() -> None:
    fake = FakeOffsets({A0: 4}, [{}])
    stopping = asyncio.Event()
    asyncio.get_running_loop().call_later(0.2, stopping.set)
    check = await wait_for_complete_facts(fake, ["a"], "grp", 60, stopping=stopping)
    assert check.stopped and not check.complete and not check.held_back
    assert check.waited_seconds < 5

"""Latency: a producer at a fixed rate, publish -> effects committed, per event, against
the broker's own publish -> fetched latency with the same producer and messages.

The producer is a process of its own: it sends message ``i`` at ``start + i / rate``
(``acks="all"``, ``linger_ms`` 5 by default, as Kafka's Java client since 4.0) and
records ``time.monotonic()`` as it hands each one to the client. For the consumer, the
bench polls the group's committed offsets every 5 ms (one OffsetFetch) and stamps each
event with the time of the poll that first found its offset committed. The consumer
commits a batch's offsets only after its transaction committed, and in offset order per
partition, so this is an upper bound of "effects committed" (by one commit round trip),
at 5 ms granularity; every ~100 ms the newest stamped events are checked to be in
``inbox`` (a failure is a correctness failure). Polling ``inbox`` itself for the
outstanding ids every 5 ms was tried first: its backend took ~0.25 of the 2 cores,
more than the consumer, so it perturbed what it measured.
For the ceiling, a raw aiokafka group member (``getmany`` of up to 5,000 every 100 ms
and a commit per batch, like the consumer's batch subscriber, nothing else) stamps
each record when ``getmany`` returns it. ``CLOCK_MONOTONIC`` is system-wide, so the
stamps of different processes compare.
"""

from __future__ import annotations

import array
import asyncio
import json
import pickle
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition

from bench.stack import (
    BenchFailure,
    CommitWatcher,
    ConsumerProcess,
    CpuMeter,
    Published,
    Stack,
    db,
    drop_config,
    exited,
    new_config,
    partition_of,
    spawn_module,
    watch_drain,
)
from bench.state import bootstrap_codes, verify
from bench.stream import generate

POLL_SECONDS = 0.005
Messages = list[tuple[str, bytes, bytes]]
Where = tuple[str, int, int]  # topic, partition, offset


# -- the processes -------------------------------------------------------------


def produce(cfg: dict[str, Any]) -> None:
    """The producer process: messages from a pickle; per message, the publish stamp and
    where it landed, to a pickle."""
    with open(cfg["messages"], "rb") as f:
        messages: Messages = pickle.load(f)
    stamps, where = asyncio.run(
        _produce(
            cfg["bootstrap"],
            messages,
            float(cfg["rate"]),
            float(cfg["start_at"]),
            int(cfg["linger_ms"]),
        )
    )
    with open(cfg["stamps"], "wb") as f:
        pickle.dump((stamps, where), f)


async def _produce(
    bootstrap: str, messages: Messages, rate: float, start: float, linger_ms: int
) -> tuple[array.array[float], list[Where]]:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=linger_ms)
    await producer.start()
    stamps = array.array("d", bytes(8 * len(messages)))
    futures = []
    try:
        i = 0
        while i < len(messages):
            now = time.monotonic()
            due = min(len(messages), int((now - start) * rate) + 1) if now >= start else 0
            while i < due:
                topic, key, value = messages[i]
                stamps[i] = time.monotonic()
                futures.append(await producer.send(topic, value, key=key))
                i += 1
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        metadata = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return stamps, [(m.topic, m.partition, m.offset) for m in metadata]


def read(cfg: dict[str, Any]) -> None:
    """The raw ceiling process: records when each (topic, partition, offset) arrived."""
    received = asyncio.run(_read(cfg))
    with open(cfg["out"], "wb") as f:
        pickle.dump(received, f)


async def _read(cfg: dict[str, Any]) -> dict[Where, float]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        *cfg["topics"],
        bootstrap_servers=cfg["bootstrap"],
        group_id=cfg["group"],
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_wait_ms=cfg["fetch_max_wait_ms"],
    )
    await consumer.start()
    received: dict[Where, float] = {}
    try:
        while not consumer.assignment():
            await consumer.getmany(timeout_ms=100)
        Path(cfg["ready"]).touch()  # noqa: ASYNC240 - once, before anything is measured
        while len(received) < cfg["expect"]:
            batch = await consumer.getmany(timeout_ms=100, max_records=5000)
            now = time.monotonic()
            for records in batch.values():
                for r in records:
                    received[(r.topic, r.partition, r.offset)] = now
            if batch:
                await consumer.commit()
    finally:
        await consumer.stop()
    return received


# -- the bench side -------------------------------------------------------------


def _spawn_producer(
    stack: Stack, name: str, messages: Messages, rate: int, start_at: float, linger_ms: int
) -> tuple[subprocess.Popen[bytes], Path]:
    messages_file = stack.root / f"{name}-messages.pickle"
    stamps_file = stack.root / f"{name}-stamps.pickle"
    with messages_file.open("wb") as f:
        pickle.dump(messages, f)
    cfg = {
        "bootstrap": stack.bootstrap,
        "messages": str(messages_file),
        "rate": rate,
        "start_at": start_at,
        "linger_ms": linger_ms,
        "stamps": str(stamps_file),
    }
    proc = spawn_module(stack, ["bench.latency", "produce", json.dumps(cfg)], f"{name}-producer")
    return proc, stamps_file


def _load(path: Path) -> Any:
    with path.open("rb") as f:
        return pickle.load(f)


def _pct(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def _stats(per_event: list[tuple[float, float]]) -> dict[str, Any]:
    """p50/p90/p99/max over (seconds since the start, latency ms), overall and per second."""
    latencies = sorted(ms for _, ms in per_event)
    by_second: dict[int, list[float]] = {}
    for at, ms in per_event:
        by_second.setdefault(int(at), []).append(ms)

    def one(values: list[float]) -> dict[str, float]:
        return {
            "p50_ms": round(_pct(values, 50), 1),
            "p99_ms": round(_pct(values, 99), 1),
            "max_ms": round(values[-1], 1),
        }

    return {
        "events": len(latencies),
        **one(latencies),
        "p90_ms": round(_pct(latencies, 90), 1),
        "mean_ms": round(statistics.fmean(latencies), 1),
        "by_second": [
            {"second": sec, "events": len(v), **one(sorted(v))}
            for sec, v in sorted(by_second.items())
        ],
    }


#: aiokafka's (and FastStream's) default ``fetch_max_wait_ms``.
AIOKAFKA_FETCH_MAX_WAIT_MS = 500


def consumer_fetch_max_wait_ms(extra_env: dict[str, str]) -> int:
    """The ``fetch_max_wait_ms`` the consumer runs with: its setting's default unless overridden."""
    from referral_runtime.settings import Settings

    default = Settings.model_fields["consumer_fetch_max_wait_ms"].default
    return int(extra_env.get("CONSUMER_FETCH_MAX_WAIT_MS", default))


async def run(
    stack: Stack,
    *,
    rate: int,
    seconds: float,
    referrers: int,
    extra_env: dict[str, str],
    linger_ms: int = 5,
    log: Any = print,
) -> dict[str, Any]:
    config = await new_config(stack, "latency")
    published = Published()
    consumer = ConsumerProcess(stack, config, extra_env).start()
    await consumer.wait_ready()
    codes = await bootstrap_codes(stack, config, consumer, referrers, published)

    n = int(rate * seconds)
    stream = generate(n, codes, seed=23, track=True, account_prefix="L")
    topics = config.billing
    start_at = time.monotonic() + 3.0  # the producer's imports and connection first
    producer, stamps_file = _spawn_producer(
        stack,
        "latency",
        [(topics[k], key, value) for k, key, value in stream.messages],
        rate,
        start_at,
        linger_ms,
    )
    # Where each message lands: the producer keeps per-partition order, offsets are
    # contiguous, so message i's offset is known before it is sent (checked after).
    base = published.offsets()
    predicted: list[tuple[TopicPartition, int]] = []
    sequence: dict[TopicPartition, int] = {}
    for kind, key, _ in stream.messages:
        tp = TopicPartition(topics[kind], partition_of(key))
        predicted.append((tp, base.get(tp, 0) + sequence.get(tp, 0)))
        sequence[tp] = sequence.get(tp, 0) + 1
    end = {tp: base.get(tp, 0) + n for tp, n in sequence.items()}
    # Per partition, the tracked events (first deliveries of valid events) in offset order.
    waiting: dict[TopicPartition, list[tuple[int, int, str]]] = {}
    for i, event_id in enumerate(stream.tracked):
        if event_id:
            tp, offset = predicted[i]
            waiting.setdefault(tp, []).append((offset, i, event_id))
    tracked = sum(len(v) for v in waiting.values())
    seen: dict[int, float] = {}
    polls = checks = 0
    try:
        async with (
            db(config.database_url) as conn,
            CommitWatcher(stack, config.group, end) as watcher,
        ):
            meter = CpuMeter(stack, consumer=consumer.pid, producer=producer.pid).start()
            nxt = dict.fromkeys(waiting, 0)
            deadline = start_at + seconds + 60
            while len(seen) < tracked:
                sent = time.monotonic()
                committed = await watcher.committed()
                polls += 1
                newest: list[str] = []
                for tp, events in waiting.items():
                    k = nxt[tp]
                    while k < len(events) and events[k][0] < committed.get(tp, 0):
                        seen[events[k][1]] = sent
                        k += 1
                    if k > nxt[tp]:
                        newest.append(events[k - 1][2])
                    nxt[tp] = k
                if newest and polls % 20 == 0:  # every ~100 ms: the offsets imply the rows
                    checks += 1
                    present = await conn.fetchval(
                        "select count(*) from inbox where event_id = any($1::uuid[])", newest
                    )
                    if present != len(newest):
                        raise BenchFailure(
                            f"latency: offsets committed for {len(newest) - present} events "
                            "whose inbox rows are not visible: effects must commit first"
                        )
                if sent > deadline:
                    raise BenchFailure(
                        f"latency: {tracked - len(seen)} events not committed within "
                        f"60 s after the producer's end; see {consumer.log}"
                    )
                if not consumer.alive():
                    raise BenchFailure(f"the consumer died; see {consumer.log}")
                await asyncio.sleep(max(0.0, POLL_SECONDS - (time.monotonic() - sent)))
            await exited(producer, 60)
            cpu = meter.stop()
        code = await asyncio.to_thread(producer.wait, 60)
        if code != 0:
            raise BenchFailure(f"the latency producer exited with {code}")
    finally:
        if producer.poll() is None:
            producer.kill()
        stack.children.remove(producer)
    stamps, where = _load(stamps_file)
    wrong = sum(
        1
        for (tp, offset), w in zip(predicted, where, strict=True)
        if (tp.topic, tp.partition, offset) != w
    )
    if wrong:
        raise BenchFailure(f"latency: {wrong} messages landed at other offsets than predicted")
    per_event = [(stamps[i] - start_at, (t - stamps[i]) * 1000) for i, t in seen.items()]
    achieved = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    behind = max(stamps[i] - (start_at + i / rate) for i in range(len(stamps))) * 1000

    # Bad messages and redeliveries after the last tracked event: wait for every offset.
    async with CommitWatcher(stack, config.group, end) as watcher:
        await watch_drain(watcher, base, end, 0.0, poll=0.05, timeout=60, alive=consumer.alive)
    batches = await consumer.metrics()
    await consumer.stop()
    observed = await verify(config, stream.expected, referrers)
    result: dict[str, Any] = {
        "messages": n,
        "tracked_events": tracked,
        "rate_target": rate,
        "rate_achieved": round(achieved, 1),
        "producer_max_behind_ms": round(behind, 1),
        "linger_ms": linger_ms,
        "poll_ms": POLL_SECONDS * 1000,
        "polls": polls,
        "inbox_cross_checks": checks,
        **_stats(per_event),
        "cpu": cpu,
        "consumer_batches": batches,
        "observed": observed,
    }
    log(
        f"  consumer at {achieved:,.0f} msg/s: p50 {result['p50_ms']} ms, "
        f"p99 {result['p99_ms']} ms, max {result['max_ms']} ms (state verified)"
    )
    await drop_config(stack, config)
    result["raw"] = await run_raw(
        stack,
        stream.messages,
        rate=rate,
        linger_ms=linger_ms,
        fetch_max_wait_ms=consumer_fetch_max_wait_ms(extra_env),
        log=log,
    )
    if result["raw"]["fetch_max_wait_ms"] != AIOKAFKA_FETCH_MAX_WAIT_MS:
        # What the consumer would see with aiokafka's default instead of its setting.
        result["raw_fetch_wait_default"] = await run_raw(
            stack,
            stream.messages,
            rate=rate,
            linger_ms=linger_ms,
            fetch_max_wait_ms=AIOKAFKA_FETCH_MAX_WAIT_MS,
            log=log,
        )
    return result


async def run_raw(
    stack: Stack,
    kinds: list[tuple[int, bytes, bytes]],
    *,
    rate: int,
    linger_ms: int,
    fetch_max_wait_ms: int,
    log: Any = print,
) -> dict[str, Any]:
    """The same producer and messages, read by the raw ceiling instead of the consumer:
    publish -> fetched, the broker's own latency at this rate, on fresh topics."""
    config = await new_config(stack, f"latency_raw_{fetch_max_wait_ms}", migrated=False)
    messages = [(config.billing[k], key, value) for k, key, value in kinds]
    ready = stack.root / f"latency-raw-{fetch_max_wait_ms}.ready"
    out = stack.root / f"latency-raw-{fetch_max_wait_ms}.pickle"
    cfg = {
        "bootstrap": stack.bootstrap,
        "topics": config.billing,
        "group": config.group,
        "expect": len(messages),
        "ready": str(ready),
        "out": str(out),
        "fetch_max_wait_ms": fetch_max_wait_ms,
    }
    reader = spawn_module(stack, ["bench.latency", "read", json.dumps(cfg)], "latency-raw-reader")
    try:
        deadline = time.monotonic() + 60
        while not await asyncio.to_thread(ready.exists):
            if reader.poll() is not None or time.monotonic() > deadline:
                raise BenchFailure(
                    f"the raw latency reader did not start; see {stack.log('latency-raw-reader')}"
                )
            await asyncio.sleep(0.05)
        start_at = time.monotonic() + 3.0
        producer, stamps_file = _spawn_producer(
            stack, "latency-raw", messages, rate, start_at, linger_ms
        )
        meter = CpuMeter(stack, reader=reader.pid, producer=producer.pid).start()
        await exited(producer, 600)
        await exited(reader, 120)
        cpu = meter.stop()
        code = await asyncio.to_thread(producer.wait, 60)
        stack.children.remove(producer)
        if code != 0:
            raise BenchFailure(f"the raw latency producer exited with {code}")
        code = await asyncio.to_thread(reader.wait, 60)
        if code != 0:
            raise BenchFailure(f"the raw latency reader exited with {code}")
    finally:
        if reader.poll() is None:
            reader.kill()
        stack.children.remove(reader)
    stamps, where = _load(stamps_file)
    received = _load(out)
    per_event = [
        (stamps[i] - start_at, (received[w] - stamps[i]) * 1000) for i, w in enumerate(where)
    ]
    result = {
        "messages": len(messages),
        "fetch_max_wait_ms": fetch_max_wait_ms,
        **_stats(per_event),
        "cpu": cpu,
    }
    log(
        f"  raw getmany + commit, fetch_max_wait_ms={fetch_max_wait_ms}: p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, "
        f"max {result['max_ms']} ms"
    )
    await drop_config(stack, config)
    return result


def main() -> None:
    modes = {"produce": produce, "read": read}
    if sys.argv[1] not in modes:
        raise SystemExit(f"unknown mode {sys.argv[1]!r}")
    modes[sys.argv[1]](json.loads(sys.argv[2]))


if __name__ == "__main__":
    main()

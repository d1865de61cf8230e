"""Throughput: the ceilings and the consumer on the same backlog, and the naive baseline.

One configuration (database, topics, group): the consumer assigns the referrers'
codes, is stopped, the mixed stream is published as a backlog, then each reader
drains it in turn: raw ``getmany``, the raw batched writer (its own database on the
same server), the consumer as its real service process, and two consumer processes
in one group (on a copy of the bootstrapped database, a group of their own). The naive FastStream
baseline gets the first ``naive`` messages of the same stream on topics of its own.

Every drain is timed the same way from outside: the group's committed offsets are
polled every 20 ms; the rate is the messages committed after the first observed
commit divided by the time from that commit to the last one (startup, i.e. spawn ->
first commit, is reported separately). The raw reader commits nothing and times
itself the same way (first batch -> last batch).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench import profiling
from bench.ceilings import encode_offsets
from bench.stack import (
    BenchFailure,
    CommitWatcher,
    Config,
    ConsumerProcess,
    CpuMeter,
    Drain,
    LockWaits,
    Published,
    Stack,
    db,
    drop_config,
    json_result,
    new_config,
    publish_backlog,
    spawn_module,
    watch_drain,
)
from bench.state import bootstrap_codes, verify
from bench.stream import generate


def _spawn_ceiling(stack: Stack, mode: str, cfg: dict[str, Any]) -> subprocess.Popen[bytes]:
    return spawn_module(
        stack, ["bench.ceilings", mode, json.dumps(cfg)], f"ceiling-{mode}", capture=True
    )


async def _count(url: str, table: str) -> int:
    async with db(url) as conn:
        n: int = await conn.fetchval(f"select count(*) from {table}")
    return n


async def run(
    stack: Stack,
    *,
    messages: int,
    referrers: int,
    naive_messages: int,
    extra_env: dict[str, str],
    profile: Path | None = None,
    log: Any = print,
) -> dict[str, Any]:
    config = await new_config(stack, "tput")
    published = Published()
    consumer = ConsumerProcess(stack, config, extra_env).start()
    ready_s = await consumer.wait_ready()
    codes = await bootstrap_codes(stack, config, consumer, referrers, published)
    idle_rss = consumer.rss()
    await consumer.stop()
    pair_config = replace(
        config,
        name=f"{config.name}_x2",
        database_url=await _clone(stack, config.name, f"{config.name}_x2"),
        group=f"{config.name}-x2-group",
    )
    start = published.offsets()

    t = time.perf_counter()
    stream = generate(messages, codes, seed=11, track=True)
    gen_s = time.perf_counter() - t
    pub_s = await publish_backlog(stack.bootstrap, config.billing, stream.messages, published)
    end = published.offsets()
    log(f"  stream of {messages:,} generated in {gen_s:.1f}s, published in {pub_s:.1f}s")
    offsets = {"start": encode_offsets(start), "end": encode_offsets(end)}
    topic_types = config.topics.billing

    # 1. raw getmany
    read = await json_result(
        stack,
        _spawn_ceiling(stack, "read", {"bootstrap": stack.bootstrap, **offsets}),
        "ceiling-read",
    )
    if read["events"] != messages:
        raise BenchFailure(f"raw getmany read {read['events']} messages, published {messages}")
    log(f"  raw getmany: {read['events_per_s']:,.0f} msg/s")

    # 2. raw batched write, its own database on the same server
    raw_db = await _database(stack, "tput_raw")
    group = f"{config.name}-raw"
    proc = _spawn_ceiling(
        stack,
        "write",
        {
            "bootstrap": stack.bootstrap,
            "database_url": raw_db,
            "group": group,
            "topic_types": topic_types,
            **offsets,
        },
    )
    meter = CpuMeter(stack, raw_write=proc.pid).start()
    async with CommitWatcher(stack, group, end) as watcher:
        raw_drain = await watch_drain(
            watcher, start, end, time.monotonic(), alive=lambda: proc.poll() is None
        )
    raw_cpu = meter.stop()
    write = await json_result(stack, proc, "ceiling-write")
    rows = await _count(raw_db, "raw_events")
    if rows != stream.expected.distinct_events:
        raise BenchFailure(
            f"raw batched write stored {rows} events, expected {stream.expected.distinct_events}"
        )
    log(f"  raw batched write: {raw_drain.rate:,.0f} msg/s")

    # 3. the consumer, as its real service process
    consumer = ConsumerProcess(stack, config, extra_env).start()
    if profile is not None:
        await consumer.wait_ready()
    sampler = asyncio.create_task(_peak_rss(consumer))
    try:
        async with profiling.profiled(
            consumer.pid, profile, stack.server_uri, config.name
        ) as activity:
            meter = CpuMeter(stack, consumer=consumer.pid).start()
            async with (
                LockWaits(stack, config.name) as waits,
                CommitWatcher(stack, config.group, end) as watcher,
            ):
                drain = await watch_drain(
                    watcher, start, end, consumer.spawned_at, alive=consumer.alive
                )
            cpu = meter.stop()
    except BenchFailure as exc:
        raise BenchFailure(f"{exc}; consumer log:\n{consumer.tail()}") from exc
    finally:
        sampler.cancel()
    (peak_rss,) = await asyncio.gather(sampler, return_exceptions=True)
    batches = await consumer.metrics()
    exit_code = await consumer.stop()
    observed = await verify(config, stream.expected, referrers)
    log(f"  consumer: {drain.rate:,.0f} msg/s (state verified)")

    # 3b. two replicas in one group: what a second process adds
    pair = await _drain_pair(stack, pair_config, start, end, extra_env)
    pair["observed"] = await verify(pair_config, stream.expected, referrers)
    await _drop_database(stack, pair_config.name)
    log(
        f"  consumer x2: {pair['events_per_s']:,.0f} msg/s = "
        f"{pair['events_per_s'] / drain.rate:.2f} x one replica; lock waits "
        f"{pair['lock_waits']['ms_per_batch']:.1f} ms per batch (state verified)"
    )

    # 4. the naive baseline on the first messages of the same stream
    naive = await _naive(stack, stream, naive_messages)
    log(f"  naive FastStream: {naive['drain']['events_per_s']:,.0f} msg/s")

    result = {
        "stream": stream.expected.summary(),
        "referrers": referrers,
        "generate_s": round(gen_s, 2),
        "publish_s": round(pub_s, 2),
        "raw_read": {k: round(v, 3) if isinstance(v, float) else v for k, v in read.items()},
        "raw_write": {
            **raw_drain.as_dict(),
            "internal": write,
            "cpu": raw_cpu,
            "cpu_us_per_event": _cpu_per_event(raw_cpu, raw_drain.events),
        },
        "consumer": {
            **drain.as_dict(),
            "ready_s": round(ready_s, 2),
            "exit_code": exit_code,
            "idle_rss_mb": round(idle_rss / 2**20, 1),
            "peak_rss_mb": round((peak_rss if isinstance(peak_rss, int) else 0) / 2**20, 1),
            "observed": observed,
            "cpu": cpu,
            "cpu_us_per_event": _cpu_per_event(cpu, drain.events),
            "lock_waits": waits.summary(_batch_count(batches)),
            "batches": batches,
            "progress": _downsample(drain),
        },
        "consumer_x2": pair,
        "naive": naive,
    }
    if profile is not None:
        assert activity is not None
        result["profile"] = {
            "file": str(profile),
            **profiling.summarise(profile),
            "postgres_activity": activity.summary(),
        }
    await drop_config(stack, config)
    return result


async def _drain_pair(
    stack: Stack,
    config: Config,
    start: dict[Any, int],
    end: dict[Any, int],
    extra_env: dict[str, str],
) -> dict[str, Any]:
    """Two consumer processes in one group drain the backlog together."""
    pair = [ConsumerProcess(stack, config, extra_env).start() for _ in range(2)]
    try:
        meter = CpuMeter(stack, consumer_a=pair[0].pid, consumer_b=pair[1].pid).start()
        async with (
            LockWaits(stack, config.name) as waits,
            CommitWatcher(stack, config.group, end) as watcher,
        ):
            drain = await watch_drain(
                watcher,
                start,
                end,
                min(p.spawned_at for p in pair),
                alive=lambda: all(p.alive() for p in pair),
            )
        cpu = meter.stop()
    except BenchFailure as exc:
        tails = "\n".join(p.tail() for p in pair)
        raise BenchFailure(f"{exc}; consumer logs:\n{tails}") from exc
    batches = [await p.metrics() for p in pair]
    exit_codes = [await p.stop() for p in pair]
    cpu["cpu_s"]["consumer"] = round(cpu["cpu_s"]["consumer_a"] + cpu["cpu_s"]["consumer_b"], 2)
    return {
        **drain.as_dict(),
        "replicas": 2,
        "exit_codes": exit_codes,
        "cpu": cpu,
        "cpu_us_per_event": _cpu_per_event(cpu, drain.events),
        "lock_waits": waits.summary(sum(_batch_count(b) for b in batches)),
        "batches": batches,
    }


def _batch_count(metrics: dict[str, Any]) -> int:
    sizes = metrics.get("referrals_consumer_batch_size") or {}
    return int(sizes.get("count") or 0)


def _cpu_per_event(cpu: dict[str, Any], events: int) -> dict[str, float]:
    """CPU microseconds per event of each process tree the meter watched."""
    if not events:
        return {}
    return {k: round(v * 1e6 / events, 1) for k, v in cpu["cpu_s"].items()}


async def _clone(stack: Stack, template: str, name: str) -> str:
    """A copy of database ``template`` (no one may be connected to it meanwhile)."""
    from referral_devtools import devstack

    async with db(stack.server_uri) as conn:
        await conn.execute(f'drop database if exists "{name}" with (force)')
        await conn.execute(f'create database "{name}" template "{template}"')
    return devstack.database_url(stack.server_uri, name)


async def _drop_database(stack: Stack, name: str) -> None:
    async with db(stack.server_uri) as conn:
        await conn.execute(f'drop database if exists "{name}" with (force)')


async def _peak_rss(consumer: ConsumerProcess) -> int:
    peak = 0
    try:
        while consumer.alive():
            peak = max(peak, consumer.rss())
            await asyncio.sleep(0.1)
    except asyncio.CancelledError:
        return peak
    return peak


def _downsample(drain: Drain, points: int = 200) -> list[tuple[float, int]]:
    s = drain.samples
    step = max(1, len(s) // points)
    return [(round(t - drain.spawned_at, 3), n) for t, n in s[::step] + s[-1:]]


async def _database(stack: Stack, name: str) -> str:
    from referral_devtools import devstack

    async with db(stack.server_uri) as conn:
        await conn.execute(f'drop database if exists "{name}" with (force)')
    url: str = await devstack.create_database(stack.server_uri, name, migrated=False)
    return url


async def _naive(stack: Stack, stream: Any, n: int) -> dict[str, Any]:
    config: Config = await new_config(stack, "naive", migrated=False)
    published = Published()
    subset = stream.messages[:n]
    distinct = sum(1 for t in stream.tracked[:n] if t)
    await publish_backlog(stack.bootstrap, config.billing, subset, published)
    end = published.offsets()
    proc = _spawn_ceiling(
        stack,
        "naive",
        {
            "bootstrap": stack.bootstrap,
            "database_url": config.database_url,
            "group": config.group,
            "topic_types": config.topics.billing,
        },
    )
    spawned = time.monotonic()
    meter = CpuMeter(stack, naive=proc.pid).start()
    try:
        async with CommitWatcher(stack, config.group, end) as watcher:
            drain = await watch_drain(watcher, {}, end, spawned, alive=lambda: proc.poll() is None)
        # ACK commits the consumer's whole position: the rows may trail the last commit.
        deadline = time.monotonic() + 60
        while (rows := await _count(config.database_url, "raw_events")) < distinct:
            if time.monotonic() > deadline:
                raise BenchFailure(f"naive baseline stored {rows} events, expected {distinct}")
            await asyncio.sleep(0.02)
        drain.last_commit_at = max(drain.last_commit_at, time.monotonic())
        cpu = meter.stop()
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 30)
        stack.children.remove(proc)
    if rows != distinct:
        raise BenchFailure(f"naive baseline stored {rows} events, expected {distinct}")
    await drop_config(stack, config)
    return {"drain": drain.as_dict(), "distinct_events": distinct, "cpu": cpu}

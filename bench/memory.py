"""Memory: the consumer's RSS (process + children, psutil every 100 ms) while it drains a
backlog of a million messages, against its RSS idle after start-up."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.stack import (
    BenchFailure,
    CommitWatcher,
    ConsumerProcess,
    CpuMeter,
    Published,
    Stack,
    drop_config,
    new_config,
    publish_backlog,
    watch_drain,
)
from bench.state import bootstrap_codes, verify
from bench.stream import generate

SAMPLE_SECONDS = 0.1


async def _sample(consumer: ConsumerProcess, into: list[tuple[float, int]]) -> None:
    while consumer.alive():
        into.append((time.monotonic(), consumer.rss()))
        await asyncio.sleep(SAMPLE_SECONDS)


async def run(
    stack: Stack,
    *,
    messages: int,
    referrers: int,
    extra_env: dict[str, str],
    log: Any = print,
) -> dict[str, Any]:
    config = await new_config(stack, "memory")
    published = Published()
    consumer = ConsumerProcess(stack, config, extra_env).start()
    await consumer.wait_ready()
    codes = await bootstrap_codes(stack, config, consumer, referrers, published)
    idle: list[tuple[float, int]] = []
    sampler = asyncio.create_task(_sample(consumer, idle))
    await asyncio.sleep(2.0)
    sampler.cancel()
    idle_rss = max(r for _, r in idle)
    await consumer.stop()
    start = published.offsets()

    t = time.perf_counter()
    stream = generate(messages, codes, seed=31, account_prefix="M")
    gen_s = time.perf_counter() - t
    pub_s = await publish_backlog(stack.bootstrap, config.billing, stream.messages, published)
    stream.messages.clear()
    end = published.offsets()
    log(f"  backlog of {messages:,} generated in {gen_s:.1f}s, published in {pub_s:.1f}s")

    consumer = ConsumerProcess(stack, config, extra_env).start()
    timeline: list[tuple[float, int]] = []
    sampler = asyncio.create_task(_sample(consumer, timeline))
    meter = CpuMeter(stack, consumer=consumer.pid).start()
    try:
        async with CommitWatcher(stack, config.group, end) as watcher:
            drain = await watch_drain(
                watcher, start, end, consumer.spawned_at, poll=0.05, alive=consumer.alive
            )
        cpu = meter.stop()
    except BenchFailure as exc:
        raise BenchFailure(f"{exc}; consumer log:\n{consumer.tail()}") from exc
    finally:
        sampler.cancel()
    batches = await consumer.metrics()
    exit_code = await consumer.stop()
    observed = await verify(config, stream.expected, referrers)

    during = [(t, r) for t, r in timeline if t <= drain.last_commit_at]
    peak = max(r for _, r in during)

    def rss_at(fraction: float) -> float:
        """RSS when the drain had committed ``fraction`` of the backlog."""
        target = fraction * drain.events
        when = next((t for t, n in drain.samples if n >= target), drain.last_commit_at)
        return max((r for t, r in during if t <= when), default=0) / 2**20

    mb = 2**20
    result = {
        "messages": messages,
        "referrers": referrers,
        "generate_s": round(gen_s, 2),
        "publish_s": round(pub_s, 2),
        "idle_rss_mb": round(idle_rss / mb, 1),
        "peak_rss_mb": round(peak / mb, 1),
        "peak_rss_by_progress_mb": {
            f"{int(f * 100)}%": round(rss_at(f), 1) for f in (0.1, 0.25, 0.5, 0.75, 1.0)
        },
        "sample_ms": SAMPLE_SECONDS * 1000,
        "drain": drain.as_dict(),
        "exit_code": exit_code,
        "cpu": cpu,
        "batches": batches,
        "observed": observed,
        "stream": stream.expected.summary(),
        "timeline": [
            (round(t - consumer.spawned_at, 2), round(r / mb, 1))
            for t, r in timeline[:: max(1, len(timeline) // 300)]
        ],
        "progress": [
            (round(t - consumer.spawned_at, 2), n)
            for t, n in drain.samples[:: max(1, len(drain.samples) // 300)]
        ],
    }
    log(
        f"  memory: idle {result['idle_rss_mb']} MB, peak {result['peak_rss_mb']} MB draining "
        f"{messages:,} at {drain.rate:,.0f} msg/s (state verified)"
    )
    await drop_config(stack, config)
    return result

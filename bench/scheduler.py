"""The scheduler: one decision pass over seeded referrals, then the outbox relay.

Runs in a fresh process of its own (``python -m bench.scheduler CONFIG``) so that
neither the bench's memory nor its garbage collector state is in the measurement:
``seed()`` writes N referrals of which ``due`` are decidable (and due) on ``as_of``;
``run_pass`` is timed (decisions/s = decisions recorded / seconds, outbox rows
included, as they are written in the same transactions); ``OutboxRelay.drain()``
is timed publishing the ``payout.due`` rows; the topic is read back and every
``payout_id`` counted.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

from bench import profiling
from bench.stack import (
    BenchFailure,
    Stack,
    drop_config,
    json_result,
    new_config,
    spawn_module,
)

AS_OF = date(2027, 4, 2)  # with PAYOUT_SETTLE_DAYS=1: eligible_on 2027-04-01


async def measure(cfg: dict[str, Any]) -> dict[str, Any]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from payout_scheduler.metrics import SchedulerMetrics
    from payout_scheduler.passes import run_pass
    from referral_devtools.seed import seed
    from referral_program import business_days
    from referral_program.table import Outcome
    from referral_runtime.db import connect, create_pool
    from referral_runtime.outbox import OutboxRelay, make_producer
    from referral_runtime.settings import Settings, Topics

    topics = Topics(payout_due=cfg["topic"])
    settings = Settings(
        kafka_bootstrap_servers=cfg["bootstrap"], database_url=cfg["database_url"], topics=topics
    )
    as_of = date.fromisoformat(cfg["as_of"])
    conn = await connect(settings.database_url)
    try:
        seeded = await seed(
            conn,
            cfg["referrals"],
            cfg["due"],
            as_of,
            tz=settings.tz,
            settle_days=settings.payout_settle_days,
        )
    finally:
        await conn.close()

    business_days.load_holidays(as_of.year)  # as the scheduler does when it starts
    pool = await create_pool(settings.database_url, size=settings.db_pool_size)
    metrics = SchedulerMetrics()
    try:
        t = time.perf_counter()
        decided = await run_pass(pool, settings, as_of, metrics)
        pass_s = time.perf_counter() - t
        async with pool.acquire() as c:
            outbox = await c.fetchval(
                "select count(*) from outbox where topic = $1 and published_at is null",
                topics.payout_due,
            )
            payouts = await c.fetchval("select count(*) from payouts")
        producer = make_producer(settings.kafka_bootstrap_servers, settings.kafka_security())
        await producer.start()
        try:
            relay = OutboxRelay(pool, producer, metrics.outbox, batch=settings.outbox_batch)
            t = time.perf_counter()
            published = await relay.drain()
            relay_s = time.perf_counter() - t
        finally:
            await producer.stop()
    finally:
        await pool.close()

    raw = await raw_write_ceiling(settings.database_url, settings.scheduler_batch)

    reader = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, group_id=None)
    await reader.start()
    payout_ids: set[str] = set()
    messages = 0
    try:
        reader.assign([TopicPartition(topics.payout_due, p) for p in range(4)])
        await reader.seek_to_beginning()
        quiet = time.monotonic() + 10
        while messages < published and time.monotonic() < quiet:
            batch = await reader.getmany(timeout_ms=200, max_records=10_000)
            for records in batch.values():
                for r in records:
                    messages += 1
                    payout_ids.add(json.loads(r.value)["data"]["payout_id"])
                quiet = time.monotonic() + 10
    finally:
        await reader.stop()
    return {
        "referrals": cfg["referrals"],
        "due": cfg["due"],
        "as_of": cfg["as_of"],
        "seed_s": round(seeded.seconds, 2),
        "pass_s": round(pass_s, 3),
        "decided": decided.total,
        "decided_due": decided.count(Outcome.DUE),
        "chunks": decided.chunks,
        "decisions_per_s": round(decided.total / pass_s, 1),
        "payouts_rows": payouts,
        "outbox_rows": outbox,
        "relay_s": round(relay_s, 3),
        "published": published,
        "publish_per_s": round(published / relay_s, 1) if relay_s else 0.0,
        "topic_messages": messages,
        "topic_distinct_payout_ids": len(payout_ids),
        "raw_write_rows": raw["rows"],
        "raw_write_s": raw["seconds"],
        "raw_write_per_s": raw["rows_per_s"],
        "x_raw_write": round(decided.total / pass_s / raw["rows_per_s"], 3),
        "scheduler_batch": settings.scheduler_batch,
        "outbox_batch": settings.outbox_batch,
    }


# The pass's output rows, written again with nothing read, locked or decided.
_RAW_PAYOUTS = """
insert into payouts select * from unnest($1::payouts[])
"""
_RAW_OUTBOX = """
insert into outbox (topic, key, payload, headers) select * from unnest($1::text[], $2::bytea[],
    $3::bytea[], $4::jsonb[])
"""


async def raw_write_ceiling(database_url: str, batch: int) -> dict[str, Any]:
    """The same-run ceiling of a pass: its ``payouts`` and outbox rows re-inserted.

    Reads what the pass wrote, empties both tables, then times writing the rows
    back ``batch`` at a time, one transaction per chunk (payouts, then outbox,
    one statement each), on two connections like the pass's two workers: the
    database's cost of the pass's writes with no facts read, no rows locked and
    no Python deciding or serialising. Decisions/s divided by this is the
    pass's ratio to its ceiling on the machine as it runs now.
    """
    from referral_runtime.db import connect, create_pool

    conn = await connect(database_url)
    try:
        payouts = await conn.fetch("select p from payouts p order by referral_id")
        outbox = await conn.fetch("select topic, key, payload, headers from outbox order by id")
        await conn.execute("truncate payouts, outbox")
        await conn.execute("checkpoint")
    finally:
        await conn.close()
    rows = [tuple(r[0]) for r in payouts]  # tuples: asyncpg encodes them as composites
    messages = [tuple(r) for r in outbox]
    pool = await create_pool(database_url, size=2)
    chunks = [(rows[i : i + batch], messages[i : i + batch]) for i in range(0, len(rows), batch)]
    feeding = asyncio.Lock()

    async def worker() -> None:
        while True:
            async with feeding:
                if not chunks:
                    return
                decided, announced = chunks.pop(0)
            async with pool.acquire() as c, c.transaction():
                await c.execute(_RAW_PAYOUTS, decided)
                if announced:
                    await c.execute(
                        _RAW_OUTBOX, *(list(col) for col in zip(*announced, strict=True))
                    )

    try:
        started = time.perf_counter()
        await asyncio.gather(worker(), worker())
        seconds = time.perf_counter() - started
    finally:
        await pool.close()
    return {
        "rows": len(rows),
        "seconds": round(seconds, 3),
        "rows_per_s": round(len(rows) / seconds, 1),
    }


async def run(
    stack: Stack, *, referrals: int, due: int, profile: Path | None = None, log: Any = print
) -> dict[str, Any]:
    config = await new_config(stack, "sched")
    cfg = {
        "bootstrap": stack.bootstrap,
        "database_url": config.database_url,
        "topic": config.topics.payout_due,
        "referrals": referrals,
        "due": due,
        "as_of": AS_OF.isoformat(),
    }
    env = {**os.environ, "REFERRALS_ENV_FILE": "/nonexistent", "LOG_LEVEL": "WARNING"}
    proc = spawn_module(
        stack, ["bench.scheduler", json.dumps(cfg)], "scheduler", capture=True, env=env
    )
    if profile is not None:  # the whole process; the summary keeps run_pass's stacks
        await asyncio.sleep(0.5)
    async with profiling.profiled(proc.pid, profile, stack.server_uri, config.name) as activity:
        result = await json_result(stack, proc, "scheduler", timeout=900)
    problems = [
        f"{name} = {result[name]}, expected {due}"
        for name in (
            "decided",
            "decided_due",
            "payouts_rows",
            "outbox_rows",
            "published",
            "topic_distinct_payout_ids",
        )
        if result[name] != due
    ]
    if problems:
        raise BenchFailure("the scheduler's result is wrong:\n  " + "\n  ".join(problems))
    if profile is not None and activity is not None:
        result["profile"] = {
            "file": str(profile),
            "run_pass": profiling.summarise(profile, within="run_pass"),
            "relay": profiling.summarise(profile, within="OutboxRelay.drain"),
            "postgres_activity_whole_process": activity.summary(),
        }
    log(
        f"  scheduler: {result['decisions_per_s']:,.0f} decisions/s over {referrals:,} referrals "
        f"({due:,} due) = {result['x_raw_write']:.2f} x its raw write "
        f"({result['raw_write_per_s']:,.0f} rows/s); relay {result['publish_per_s']:,.0f} msg/s "
        "(verified)"
    )
    await drop_config(stack, config)
    return result


def main() -> None:
    from referral_runtime.logs import configure_logging

    configure_logging("WARNING", "console")
    print(json.dumps(asyncio.run(measure(json.loads(sys.argv[1])))))


if __name__ == "__main__":
    main()

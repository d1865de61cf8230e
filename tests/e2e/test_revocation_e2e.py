"""Revocation counts from the instant support revoked the code, in business time.

Real broker and consumer, support's real revoke on the real Postgres: a sign-up made
before the revocation attributes however late it is consumed; one made after does
not, even though it was consumed (and attributed) before the revocation happened.
And the order does not matter: on the real Postgres, any order of sign-ups, payments
and the revocation, in any batches, ends in the state of one order (hypothesis).
"""

from __future__ import annotations

import itertools
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from referral_devtools import synthetic as bill
from referral_ops import code_changes
from referral_program import codes
from referral_runtime.referral_state import Outbound
from referral_runtime.settings import Settings
from tests.e2e.harness import (
    active_code,
    apply_plan,
    batch_plan,
    inbox_reaches,
    producer,
    running_consumer,
)

VR = "virtual_receptionist"


async def revoke(db: asyncpg.Connection, settings: Settings, code: str) -> code_changes.CodeRevoked:
    return await code_changes.revoke_code(
        db,
        code,
        actor="support-e2e",
        out=Outbound.from_settings(settings),
        randbits=secrets.randbits,
        tz=settings.tz,
    )


async def test_a_sign_up_counts_by_when_it_was_made_not_when_it_arrived(
    settings: Settings, db: asyncpg.Connection
) -> None:
    now = datetime.now(UTC)
    long_ago = now - timedelta(days=30)
    async with running_consumer(settings), producer(settings) as p:
        await bill.publish(
            p,
            settings.topics,
            [
                bill.subscription_created("ref", "ref-s", VR, long_ago),
                bill.subscription_created("other", "other-s", VR, long_ago),
            ],
        )
        await inbox_reaches(db, 2)
        code, other = await active_code(db, "ref"), await active_code(db, "other")
        # Consumed before the revocation, but made after it (business time).
        await bill.publish(
            p,
            settings.topics,
            [
                bill.subscription_created("after", "after-s", VR, now + timedelta(days=1), code=code),
                bill.invoice_paid("after", "after-s", "after-i", 19900, now + timedelta(days=1)),
                # This one also signed up with another referrer's code, later still.
                bill.subscription_created("moved", "moved-s1", VR, now + timedelta(days=1), code=code),
                bill.subscription_created(
                    "moved", "moved-s2", "voice_assistant", now + timedelta(days=2), code=other
                ),
            ],
        )  # fmt: skip
        await inbox_reaches(db, 6)
        referrers = dict(
            await db.fetch("select referee_account_id, referrer_account_id from referrals")
        )
        assert referrers == {"after": "ref", "moved": "ref"}

        done = await revoke(db, settings, code)

        # Made before the revocation (an hour ago), consumed only now.
        await bill.publish(
            p,
            settings.topics,
            [
                bill.subscription_created(
                    "before", "before-s", VR, now - timedelta(hours=1), code=code
                )
            ],
        )
        await inbox_reaches(db, 7)

    assert (done.withdrawn, done.unreferred) == (("after", "moved"), ("after",))
    referrers = dict(
        await db.fetch("select referee_account_id, referrer_account_id from referrals")
    )
    assert referrers == {"before": "ref", "moved": "other"}
    outcomes = dict(
        await db.fetch(
            "select subscription_id, code_outcome from subscriptions where referral_code is not null"
        )
    )
    assert outcomes == {
        "after-s": "revoked",
        "moved-s1": "revoked",
        "moved-s2": "known",
        "before-s": "known",
    }
    [audit] = await db.fetch("select details from audit_log where action = 'code.revoke'")
    assert (audit["details"]["withdrawn"], audit["details"]["unreferred"]) == (
        ["after", "moved"],
        ["after"],
    )


# --- the order of arrival does not matter, revocations included ----------------------------

_FACTS = (
    "inbox, accounts, referral_codes, subscriptions, invoices, cancellations, referrals, "
    "payouts, outbox, audit_log, dead_letters, legacy_referrals, legacy_credits"
)


@st.composite
def sign_ups(draw: st.DrawFn) -> list[tuple[str, str, int, bool]]:
    """Referees' sign-ups: (account, whose code: 'ref' or 'other', hours from the revocation
    (never 0: the revocation's instant is the real clock's), paid)."""
    out = []
    for n in range(draw(st.integers(1, 5))):
        for k in range(draw(st.integers(1, 2))):
            whose = draw(st.sampled_from(["ref", "ref", "other"]))
            hours = draw(st.integers(1, 72)) * draw(st.sampled_from([-1, 1]))
            out.append((f"A{n}", whose if k == 0 else draw(st.sampled_from(["ref", "other"])),
                        hours, draw(st.booleans())))  # fmt: skip
    return out


def _events(
    drawn: list[tuple[str, str, int, bool]], codes_of: dict[str, str], now: datetime
) -> list[dict[str, Any]]:
    events = []
    for i, (account, whose, hours, paid) in enumerate(drawn):
        at = now + timedelta(hours=hours)
        sid = f"{account}-s{i}"
        events.append(bill.subscription_created(account, sid, VR, at, code=codes_of[whose],
                                                event_id=f"00000000-0000-4000-8000-{i:012d}"))  # fmt: skip
        if paid:
            events.append(bill.invoice_paid(account, sid, f"{sid}-i", 19900, at + timedelta(minutes=5),
                                            event_id=f"00000000-0000-4000-9000-{i:012d}"))  # fmt: skip
    return events


async def _run(
    db: asyncpg.Connection, settings: Settings, drawn: list[tuple[str, str, int, bool]],
    now: datetime, order: list[int] | None, revoke_at: int, cuts: list[int],
) -> dict[str, list[tuple[Any, ...]]]:  # fmt: skip
    """Apply the sign-ups in ``order`` (None: as drawn), in batches cut at ``cuts``, with the
    revocation of ``ref``'s code before event ``revoke_at``; the resulting state."""
    await db.execute(f"truncate {_FACTS} cascade")
    long_ago = now - timedelta(days=30)
    await apply_plan(db, settings, batch_plan(settings, bill.subscription_created("ref", "ref-s", VR, long_ago),
                                               bill.subscription_created("other", "other-s", VR, long_ago)))  # fmt: skip
    codes_of = {who: codes.display(await active_code(db, who)) for who in ("ref", "other")}
    events = _events(drawn, codes_of, now)
    ordered = [events[i] for i in order] if order is not None else events
    bounds = sorted({0, len(ordered), revoke_at, *cuts})
    for start, end in itertools.pairwise(bounds):
        if start == revoke_at:
            await revoke(db, settings, codes_of["ref"])
        await apply_plan(db, settings, batch_plan(settings, *ordered[start:end]))
    if revoke_at == len(ordered):
        await revoke(db, settings, codes_of["ref"])
    return {
        "referrals": [tuple(r) for r in await db.fetch(
            """select referee_account_id, referrer_account_id, subscription_id, status, reason,
                      first_payment_invoice_id from referrals order by 1""")],
        "subscriptions": [tuple(r) for r in await db.fetch(
            "select subscription_id, code_outcome, referrer_account_id from subscriptions order by 1")],
    }  # fmt: skip


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(drawn=sign_ups(), data=st.data())
async def test_state_is_a_function_of_the_set_of_events_and_revocations(
    settings: Settings, db: asyncpg.Connection, drawn: list[tuple[str, str, int, bool]], data: st.DataObject
) -> None:  # fmt: skip
    now = datetime.now(UTC)
    n = sum(2 if paid else 1 for *_, paid in drawn)
    # Reference: the revocation first, then every event in one batch.
    expected = await _run(db, settings, drawn, now, None, 0, [])
    order = data.draw(st.permutations(range(n)))
    revoke_at = data.draw(st.integers(0, n))
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, n - 1)), max_size=3))) - {n})
    assert await _run(db, settings, drawn, now, list(order), revoke_at, cuts) == expected

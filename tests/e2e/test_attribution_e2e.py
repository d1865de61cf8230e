"""Attribution as people sign up, through the real broker and consumer.

A code typed with an en dash, a non-breaking space, a trailing newline or full-width
letters attributes; two clients of one free-mail provider (yahoo.co.uk, from the
maintained list) are not one business.
"""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg

from referral_devtools import synthetic as bill
from referral_program import codes
from referral_runtime.settings import Settings
from tests.e2e.harness import (
    active_code,
    inbox_reaches,
    producer,
    referral_status,
    running_consumer,
)

T0 = datetime(2027, 1, 5, 17, tzinfo=UTC)
SIGNED_UP = datetime(2027, 1, 8, 17, tzinfo=UTC)
VR = "virtual_receptionist"


def as_typed(code: str) -> list[str]:
    """The stored ``code`` as people paste or type it."""
    shown = codes.display(code)
    full_width = "".join(chr(ord(c) + 0xFEE0) for c in shown.lower())
    return [
        shown.lower().replace("-", "\u2013") + "\n",  # en dash, trailing newline
        "\u00a0" + shown.replace("-", "\u2014") + "\u00a0",  # non-breaking spaces, em dash
        shown[:4] + "\u2212" + shown[5:] + "\r\n",  # minus sign, CRLF
        full_width,  # full-width letters and hyphen
    ]


async def test_a_code_typed_with_dashes_and_spaces_of_any_kind_attributes(
    settings: Settings, db: asyncpg.Connection
) -> None:
    async with running_consumer(settings), producer(settings) as p:
        await bill.publish(p, settings.topics, [bill.subscription_created("ref", "ref-s", VR, T0)])
        await inbox_reaches(db, 1)
        typed = as_typed(await active_code(db, "ref"))
        signups = [
            bill.subscription_created(f"typed-{i}", f"typed-{i}-s", VR, SIGNED_UP, code=text)
            for i, text in enumerate(typed)
        ]
        await bill.publish(p, settings.topics, signups)
        await inbox_reaches(db, 1 + len(signups))

    outcomes = dict(
        await db.fetch(
            "select account_id, code_outcome from subscriptions where account_id <> 'ref'"
        )
    )
    assert outcomes == {f"typed-{i}": "known" for i in range(len(typed))}
    referrers = dict(
        await db.fetch("select referee_account_id, referrer_account_id from referrals")
    )
    assert referrers == {f"typed-{i}": "ref" for i in range(len(typed))}


async def test_two_clients_of_one_free_mail_provider_are_eligible(
    settings: Settings, db: asyncpg.Connection
) -> None:
    async with running_consumer(settings), producer(settings) as p:
        await bill.publish(
            p,
            settings.topics,
            [bill.subscription_created("alice", "alice-s", VR, T0, email="alice@yahoo.co.uk")],
        )
        await inbox_reaches(db, 1)
        code = codes.display(await active_code(db, "alice"))
        await bill.publish(
            p,
            settings.topics,
            [
                bill.subscription_created(
                    "bob", "bob-s", VR, SIGNED_UP, code=code, email="bob@yahoo.co.uk"
                ),
                bill.invoice_paid("bob", "bob-s", "bob-i1", 19900, SIGNED_UP),
            ],
        )
        await inbox_reaches(db, 3)

    assert await referral_status(db, "bob") == ("qualified", None)

"""The referrer's page as plain data: masked friends, words, totals, legacy credits apart."""

from __future__ import annotations

from dataclasses import fields
from datetime import date

import pytest

from referral_ops.listing import ReferralLine
from referral_web.pages import page_referral
from referral_web.referrer_view import (
    LegacyCredit,
    Referral,
    mask_account,
    referrer_view,
    reward_words,
)

DAY = date(2027, 1, 10)


def _referral(referee: str, status: str, amount: int, **extra: object) -> Referral:
    values: dict[str, object] = {
        "referee_account_id": referee,
        "plan_family": "virtual_receptionist",
        "status": status,
        "reason": None,
        "amount_cents": amount,
        "currency": "USD",
        "referred_on": DAY,
        "eligible_on": None,
        "pay_by": None,
    }
    values.update(extra)
    return Referral(**values)  # type: ignore[arg-type]


def test_friends_are_masked_so_that_no_account_can_be_named() -> None:
    assert mask_account("acct-7f3a9c21") == "•••c21"
    assert mask_account("12345678") == "•••78"
    assert mask_account("A00123") == "•••23"
    assert mask_account("vr") == mask_account("R0001") == "•••"


def test_totals_count_paid_due_and_what_could_still_be_earned() -> None:
    referrals = [
        _referral("acct-paid-00001", "paid", 100_000, paid_on=date(2027, 4, 12)),
        _referral("acct-due-000002", "due", 20_000, pay_by=date(2027, 4, 21)),
        _referral("acct-failed-003", "failed", 100_000, reason="rejected_by_bank"),
        _referral("acct-pend-0004", "pending", 100_000),
        _referral("acct-qualif-005", "qualified", 20_000, eligible_on=date(2027, 5, 1)),
        _referral("acct-forf-0006", "forfeited", 0, reason="cancelled_before_eligibility"),
        _referral("acct-inelig-007", "ineligible", 0, reason="same_organization"),
    ]
    view = referrer_view(
        code="ABCD-EFGH",
        link="https://app.example.com/r/ABCD-EFGH",
        referrals=referrals,
        legacy=[],
        visits_recent=3,
        visits_total=9,
        visits_days=30,
        discount_cents=10_000,
        currency="USD",
    )
    assert (view.totals.paid, view.totals.due, view.totals.pending) == (
        "$1,000",
        "$1,200",
        "$1,200",
    )
    by_friend = {row.friend: row for row in view.rows}
    assert by_friend["•••001"].words == "paid Apr 12, 2027"
    assert by_friend["•••001"].tone == "paid"
    assert by_friend["•••003"].tone == "due"
    assert by_friend["•••006"].amount == "—" and by_friend["•••006"].tone == "lost"
    assert by_friend["•••002"].pay_by == "Apr 21, 2027"
    assert view.offer == "$100 off their first month"
    assert view.legacy == () and view.legacy_credited is None


def test_nothing_in_the_view_carries_an_account_id() -> None:
    referrals = [_referral("acct-secret-friend-1", "due", 100_000)]
    legacy = [LegacyCredit("acct-secret-friend-2", 2_500, "USD", 3, 7_500)]
    view = referrer_view(
        code=None, link=None, referrals=referrals, legacy=legacy, visits_recent=0,
        visits_total=0, visits_days=30, discount_cents=10_000, currency="USD",
    )  # fmt: skip
    text = repr(view)
    assert "acct-secret-friend" not in text
    assert view.legacy[0].monthly == "$25 a month" and view.legacy[0].credited == "$75"
    assert view.legacy_credited == "$75"
    row_fields = {f.name for f in fields(view.rows[0])}
    assert "referee_account_id" not in row_fields


def test_newest_referral_first() -> None:
    older = _referral("acct-older-00001", "pending", 0, referred_on=date(2026, 1, 1))
    newer = _referral("acct-newer-00002", "pending", 0, referred_on=date(2027, 1, 1))
    view = referrer_view(
        code=None, link=None, referrals=[older, newer], legacy=[], visits_recent=0,
        visits_total=0, visits_days=30, discount_cents=10_000, currency="USD",
    )  # fmt: skip
    assert [row.friend for row in view.rows] == ["•••002", "•••001"]


def test_rewards_come_from_the_program_table() -> None:
    assert reward_words("USD") == (
        "$1,000 for a friend on Virtual receptionist; $200 for a friend on Voice assistant"
    )


def _due_line(payout_status: str | None, **extra: object) -> ReferralLine:
    return ReferralLine(
        referee_account_id="acct-friend-01",
        plan_family="virtual_receptionist",
        plans=("virtual_receptionist",),
        status="due",
        reason=None,
        amount_cents=100_000,
        currency="USD",
        referral_code="ABCD-EFGH",
        referred_on=date(2027, 1, 3),
        first_payment_on=date(2027, 1, 17),
        eligible_on=date(2027, 4, 1),
        pay_by=date(2027, 4, 21),
        decided=True,
        payout_status=payout_status,
        **extra,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("payout_status", "extra", "status", "reason", "paid_on"),
    [
        ("due", {}, "due", None, None),
        ("paid", {"paid_on": date(2027, 4, 12)}, "paid", None, date(2027, 4, 12)),
        # Money went out (another amount, or twice): the referrer was paid; the rest is
        # finance's and support's to sort out.
        ("mismatched", {"paid_on": date(2027, 4, 12)}, "paid", None, date(2027, 4, 12)),
        ("paid_twice", {"paid_on": date(2027, 4, 12)}, "paid", None, date(2027, 4, 12)),
        ("failed", {"failure_reason": "rejected_by_bank"}, "failed", "rejected_by_bank", None),
    ],
)
def test_a_due_payout_is_shown_as_finance_reported_it(
    payout_status: str,
    extra: dict[str, object],
    status: str,
    reason: str | None,
    paid_on: date | None,
) -> None:
    shown = page_referral(_due_line(payout_status, **extra))
    assert (shown.status, shown.reason, shown.paid_on) == (status, reason, paid_on)

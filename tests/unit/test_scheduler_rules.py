"""Scheduler additions to the pure core: the decidability bound and several cancellations."""

from __future__ import annotations

import dataclasses
import itertools
import uuid
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from payout_scheduler.core.decisions import (
    PAYOUT_NAMESPACE,
    Cancellation,
    ReferralFacts,
    SubscriptionSpan,
    decidable_before,
    decide,
    payout_id_for,
)
from payout_scheduler.store import _spans

LA = ZoneInfo("America/Los_Angeles")
E = datetime(2027, 4, 1, 7, 0, tzinfo=UTC)  # start of 2027-04-01 in Los Angeles
DECIDABLE = date(2027, 4, 2)
DAY = timedelta(days=1)
VR = "virtual_receptionist"


def referral(*subscriptions: SubscriptionSpan) -> ReferralFacts:
    return ReferralFacts(
        referral_id=uuid.UUID(int=7),
        referrer_account_id="acct_referrer",
        referee_account_id="acct_referee",
        referral_code="7K3MQ9TZ",
        currency="USD",
        status="qualified",
        reason=None,
        first_payment_at=datetime(2027, 1, 17, 18, tzinfo=UTC),
        referrer_is_partner=False,
        payee=None,
        subscriptions=subscriptions,
    )


def vr(*cancellations: Cancellation) -> SubscriptionSpan:
    return SubscriptionSpan(
        "sub_vr", VR, datetime(2027, 1, 10, tzinfo=UTC), None, None, cancellations
    )


def outcome(facts: ReferralFacts) -> tuple[str, str | None]:
    decision = decide(facts, DECIDABLE, LA)
    assert decision is not None
    return decision.outcome, decision.reason


# --- decidable_before -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("as_of", "settle_days", "bound"),
    [
        (date(2027, 4, 2), 1, datetime(2027, 2, 1, 8, tzinfo=UTC)),  # PST on Feb 1
        (date(2027, 4, 1), 0, datetime(2027, 2, 1, 8, tzinfo=UTC)),
        (date(2027, 4, 1), 1, datetime(2027, 1, 1, 8, tzinfo=UTC)),  # Mar 31: Jan only
        (date(2027, 7, 30), 5, datetime(2027, 5, 1, 7, tzinfo=UTC)),  # PDT
        (date(2028, 1, 2), 1, datetime(2027, 11, 1, 7, tzinfo=UTC)),  # across the year
    ],
)
def test_decidable_before_examples(as_of: date, settle_days: int, bound: datetime) -> None:
    assert decidable_before(as_of, LA, settle_days) == bound


def test_decidable_before_refuses_negative_settle_days() -> None:
    with pytest.raises(ValueError, match="settle_days"):
        decidable_before(DECIDABLE, LA, -1)


ZONES = st.sampled_from(
    [LA, ZoneInfo("UTC"), ZoneInfo("Pacific/Apia"), ZoneInfo("America/Santiago")]
)


@settings(deadline=None, max_examples=300)
@given(
    first_payment_at=st.datetimes(
        min_value=datetime(2026, 1, 1), max_value=datetime(2029, 12, 31), timezones=st.just(UTC)
    ),
    as_of=st.dates(min_value=date(2026, 1, 1), max_value=date(2030, 6, 30)),
    settle_days=st.integers(min_value=0, max_value=31),
    tz=ZONES,
)
def test_decide_decides_exactly_the_referrals_paid_before_the_bound(
    first_payment_at: datetime, as_of: date, settle_days: int, tz: ZoneInfo
) -> None:
    facts = dataclasses.replace(referral(vr()), first_payment_at=first_payment_at)
    decided = decide(facts, as_of, tz, settle_days) is not None
    assert decided == (first_payment_at < decidable_before(as_of, tz, settle_days))


# --- several cancellations of one subscription --------------------------------------------


def test_a_subscription_without_cancellations_is_active() -> None:
    assert outcome(referral(vr())) == ("due", None)


def test_the_earliest_effective_cancellation_known_before_eligibility_decides() -> None:
    # Billing re-sent the cancellation with a later end: service still ended by E.
    ends_before = Cancellation(E - 30 * DAY, E - 10 * DAY)
    ends_after = Cancellation(E - 5 * DAY, E + 20 * DAY)
    for order in itertools.permutations([ends_before, ends_after]):
        assert outcome(referral(vr(*order))) == ("forfeited", "cancelled_before_eligibility")


def test_cancellations_recorded_at_or_after_eligibility_are_ignored() -> None:
    backdated = Cancellation(E, E - 10 * DAY)
    later = Cancellation(E + DAY, E - DAY)
    known = Cancellation(E - 30 * DAY, E + 20 * DAY)
    assert outcome(referral(vr(backdated, later, known))) == ("due", None)


def test_cancellations_combine_with_the_single_cancellation_fields() -> None:
    span = dataclasses.replace(
        vr(Cancellation(E - 3 * DAY, E + 9 * DAY)), cancelled_at=E - 40 * DAY, effective_at=E
    )
    assert outcome(referral(span)) == ("forfeited", "cancelled_before_eligibility")


# --- the store's rows -> spans ----------------------------------------------------------------


def test_spans_group_the_cancellations_of_each_subscription() -> None:
    created = datetime(2027, 1, 10, tzinfo=UTC)
    spans = _spans(
        [
            ("a", VR, created, E - 9 * DAY, E - DAY),
            ("a", VR, created, E - 8 * DAY, E + DAY),
            ("b", "voice_assistant", created, E - 7 * DAY, E + 2 * DAY),
            ("c", VR, created, None, None),
        ]
    )
    by_id = {s.subscription_id: s for s in spans}
    assert sorted(by_id) == ["a", "b", "c"]
    assert set(by_id["a"].cancellations) == {
        Cancellation(E - 9 * DAY, E - DAY),
        Cancellation(E - 8 * DAY, E + DAY),
    }
    assert by_id["b"].cancellations == (Cancellation(E - 7 * DAY, E + 2 * DAY),)
    assert by_id["c"].cancellations == ()
    assert _spans([]) == ()
    assert _spans([("d", VR, created, None, None)]) == (
        SubscriptionSpan("d", VR, created, None, None, ()),
    )


# --- payout ids ---------------------------------------------------------------------------


@given(referral_id=st.uuids())
def test_payout_id_is_the_uuid5_of_the_referral(referral_id: uuid.UUID) -> None:
    assert payout_id_for(referral_id) == uuid.uuid5(PAYOUT_NAMESPACE, f"payout:{referral_id}")

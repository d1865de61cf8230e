"""The payout decision: outcomes, reasons, amounts, and its independence from run time and order.

The main scenario: first payment 2027-01-17 10:00 PST → eligible_on 2027-04-01, whose
first instant is 2027-04-01T07:00Z (PDT), pay_by 2027-04-21, decidable from 2027-04-02.
"""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, date, datetime, timedelta
from uuid import UUID
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from referral_program.calendar import eligibility_instant, eligible_on
from referral_program.decisions import (
    PAYOUT_NAMESPACE,
    REWARD_CENTS,
    Cancellation,
    Decision,
    FactRows,
    ReferralFacts,
    SubscriptionSpan,
    decidable_before,
    decide,
    decide_rows,
    payout_id_for,
    payout_id_text,
)

LA = ZoneInfo("America/Los_Angeles")
REFERRAL_ID = UUID("00000000-0000-0000-0000-000000000001")
FIRST_PAYMENT_AT = datetime(2027, 1, 17, 18, 0, tzinfo=UTC)
E = datetime(2027, 4, 1, 7, 0, tzinfo=UTC)  # start of 2027-04-01 in Los Angeles
DECIDABLE = date(2027, 4, 2)
SECOND = timedelta(seconds=1)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
VR, VA, CHAT = "virtual_receptionist", "voice_assistant", "chat"

CONSUMER_REASONS = [
    "self_referral",
    "same_organization",
    "shared_payment_method",
    "same_email_domain",
    "existing_client",
]


def span(
    family: str = VR,
    created_at: datetime = datetime(2027, 1, 10, tzinfo=UTC),
    cancelled_at: datetime | None = None,
    effective_at: datetime | None = None,
    subscription_id: str | None = None,
    cancellations: tuple[Cancellation, ...] = (),
) -> SubscriptionSpan:
    return SubscriptionSpan(
        subscription_id=subscription_id or f"sub_{family}_{created_at:%Y%m%d%H%M%S}",
        plan_family=family,
        created_at=created_at,
        cancelled_at=cancelled_at,
        effective_at=effective_at,
        cancellations=cancellations,
    )


def cancelled(
    family: str = VR, *, at: datetime, effective: datetime | None = None
) -> SubscriptionSpan:
    return span(family, cancelled_at=at, effective_at=effective if effective is not None else at)


def facts(*subscriptions: SubscriptionSpan, **changes: object) -> ReferralFacts:
    base = ReferralFacts(
        referral_id=REFERRAL_ID,
        referrer_account_id="acct_referrer",
        referee_account_id="acct_referee",
        referral_code="7K3MQ9TZ",
        status="qualified",
        reason=None,
        first_payment_at=FIRST_PAYMENT_AT,
        referrer_partner_periods=(),
        payee=None,
        subscriptions=subscriptions,
    )
    return base._replace(**changes)


def decided(referral: ReferralFacts, as_of: date = DECIDABLE) -> Decision:
    decision = decide(referral, as_of, LA, currency="USD")
    assert decision is not None
    return decision


# --- outcomes -------------------------------------------------------------------------------


def test_an_active_virtual_receptionist_is_due_1000_dollars() -> None:
    assert decided(facts(span(VR))) == Decision(
        referral_id=REFERRAL_ID,
        payout_id=payout_id_for(REFERRAL_ID),
        outcome="due",
        reason=None,
        plan_family=VR,
        amount_cents=100_000,
        currency="USD",
        payee="acct_referrer",
        first_payment_at=FIRST_PAYMENT_AT,
        eligible_on=date(2027, 4, 1),
        pay_by=date(2027, 4, 21),
    )


def test_an_active_voice_assistant_is_due_200_dollars() -> None:
    decision = decided(facts(span(VA)))
    assert (decision.outcome, decision.plan_family, decision.amount_cents) == ("due", VA, 20_000)


@pytest.mark.parametrize("order", [(VR, VA), (VA, VR)])
def test_both_families_active_pay_the_larger_reward_once(order: tuple[str, str]) -> None:
    decision = decided(facts(*(span(family) for family in order)))
    assert (decision.outcome, decision.plan_family, decision.amount_cents) == ("due", VR, 100_000)


def test_two_subscriptions_of_one_family_still_pay_once() -> None:
    decision = decided(facts(span(VA, subscription_id="a"), span(VA, subscription_id="b")))
    assert decision.amount_cents == 20_000


def test_larger_family_cancelled_before_eligibility_leaves_the_smaller_reward() -> None:
    decision = decided(facts(cancelled(VR, at=datetime(2027, 3, 1, tzinfo=UTC)), span(VA)))
    assert (decision.outcome, decision.plan_family, decision.amount_cents) == ("due", VA, 20_000)


@pytest.mark.parametrize(
    "subscriptions",
    [
        (),
        (span(CHAT),),
        (span(CHAT), span("outreach_campaign"), span("something_new")),
    ],
    ids=["none", "chat", "non-qualifying"],
)
def test_without_a_qualifying_plan_the_referral_is_forfeited(
    subscriptions: tuple[SubscriptionSpan, ...],
) -> None:
    decision = decided(facts(*subscriptions))
    assert (decision.outcome, decision.reason) == ("forfeited", "no_qualifying_plan")
    assert (decision.plan_family, decision.amount_cents) == (None, 0)


@pytest.mark.parametrize("created_at", [E, E + SECOND, E + timedelta(days=20)])
def test_a_qualifying_plan_created_at_or_after_eligibility_does_not_count(
    created_at: datetime,
) -> None:
    decision = decided(facts(span(CHAT), span(VR, created_at=created_at)))
    assert (decision.outcome, decision.reason) == ("forfeited", "no_qualifying_plan")


def test_created_just_before_eligibility_counts() -> None:
    assert decided(facts(span(VR, created_at=E - SECOND))).outcome == "due"


def test_cancelled_before_eligibility_is_forfeited() -> None:
    decision = decided(facts(cancelled(VR, at=datetime(2027, 3, 5, tzinfo=UTC))))
    assert (decision.outcome, decision.reason) == ("forfeited", "cancelled_before_eligibility")
    assert (decision.plan_family, decision.amount_cents, decision.payee) == (
        None,
        0,
        "acct_referrer",
    )


def test_cancellation_taking_effect_exactly_at_eligibility_is_forfeited() -> None:
    # Active means the cancellation takes effect *after* the start of eligible_on.
    decision = decided(facts(cancelled(VR, at=datetime(2027, 3, 5, tzinfo=UTC), effective=E)))
    assert (decision.outcome, decision.reason) == ("forfeited", "cancelled_before_eligibility")


@pytest.mark.parametrize(
    "effective_at",
    [E + SECOND, datetime(2027, 4, 30, tzinfo=UTC)],
    ids=["a-second-after", "end-of-month"],
)
def test_cancelled_before_but_effective_after_eligibility_is_due(effective_at: datetime) -> None:
    referral = facts(cancelled(VR, at=datetime(2027, 3, 5, tzinfo=UTC), effective=effective_at))
    assert decided(referral).outcome == "due"


def test_eligibility_is_judged_at_local_midnight_not_utc_midnight() -> None:
    # In April Los Angeles is UTC-7; effect at 06:59Z is 23:59 on March 31 local time.
    referral = facts(cancelled(VR, at=datetime(2027, 3, 5, tzinfo=UTC), effective=E - SECOND))
    assert decided(referral).reason == "cancelled_before_eligibility"
    utc_midnight = datetime(2027, 4, 1, tzinfo=UTC)
    referral = facts(cancelled(VR, at=datetime(2027, 3, 5, tzinfo=UTC), effective=utc_midnight))
    assert decided(referral).reason == "cancelled_before_eligibility"


@pytest.mark.parametrize(
    "cancelled_at",
    [E, E + SECOND, datetime(2027, 4, 1, 20, tzinfo=UTC)],
    ids=["at-eligibility", "a-second-after", "later-that-day"],
)
def test_a_cancellation_recorded_at_or_after_eligibility_is_ignored(
    cancelled_at: datetime,
) -> None:
    # Even one backdated to take effect before eligible_on: it is a later fact.
    backdated = datetime(2027, 3, 20, tzinfo=UTC)
    referral = facts(cancelled(VR, at=cancelled_at, effective=backdated))
    decision = decided(referral)
    assert (decision.outcome, decision.amount_cents) == ("due", 100_000)


def test_a_cancellation_recorded_just_before_eligibility_counts() -> None:
    referral = facts(cancelled(VR, at=E - SECOND))
    assert decided(referral).reason == "cancelled_before_eligibility"


PARTNER = ((datetime(2027, 1, 1, tzinfo=UTC), None),)


def test_a_partner_referrer_is_ineligible() -> None:
    decision = decided(facts(span(VR), referrer_partner_periods=PARTNER))
    assert (decision.outcome, decision.reason) == ("ineligible", "partner_ineligible")


@pytest.mark.parametrize(
    "periods",
    [
        ((E, None),),  # set at the first instant of eligible_on: too late
        ((E + DAY, None),),
        ((None, E - SECOND),),  # a partner once, no longer before eligible_on
        ((E - DAY, E - SECOND), (E + DAY, None)),
    ],
)
def test_a_partner_flag_counts_only_if_set_just_before_eligible_on(
    periods: tuple[tuple[datetime | None, datetime | None], ...],
) -> None:
    decision = decided(facts(span(VR), referrer_partner_periods=periods))
    assert (decision.outcome, decision.reason) == ("due", None)


@pytest.mark.parametrize("periods", [((None, None),), ((E - SECOND, E),), ((E - DAY, E + DAY),)])
def test_a_partner_flag_set_before_eligible_on_and_not_unset_before_it_counts(
    periods: tuple[tuple[datetime | None, datetime | None], ...],
) -> None:
    decision = decided(facts(span(VR), referrer_partner_periods=periods))
    assert (decision.outcome, decision.reason) == ("ineligible", "partner_ineligible")
    assert (decision.plan_family, decision.amount_cents) == (None, 0)


@pytest.mark.parametrize("reason", CONSUMER_REASONS)
def test_the_consumers_ineligibility_reason_is_kept(reason: str) -> None:
    decision = decided(facts(span(VR), status="ineligible", reason=reason))
    assert (decision.outcome, decision.reason, decision.amount_cents) == ("ineligible", reason, 0)


def test_the_consumers_reason_takes_precedence_over_partner() -> None:
    referral = facts(
        span(VR), status="ineligible", reason="self_referral", referrer_partner_periods=PARTNER
    )
    assert decided(referral).reason == "self_referral"


def test_ineligible_is_decided_even_without_a_qualifying_plan() -> None:
    decision = decided(facts(span(CHAT), status="ineligible", reason="existing_client"))
    assert (decision.outcome, decision.reason) == ("ineligible", "existing_client")


def test_payee_override_receives_the_cash() -> None:
    decision = decided(facts(span(VR), payee="acct_office_manager"))
    assert (decision.payee, decision.outcome) == ("acct_office_manager", "due")


@pytest.mark.parametrize("currency", ["USD", "CAD"])
def test_the_amount_is_the_programs_in_the_program_currency(currency: str) -> None:
    decision = decide(facts(span(VR)), DECIDABLE, LA, currency=currency)
    assert decision is not None
    assert (decision.amount_cents, decision.currency) == (100_000, currency)


# --- when a referral is decidable ----------------------------------------------------------


def test_no_first_payment_is_not_decidable() -> None:
    referral = facts(span(VR), first_payment_at=None, status="pending")
    assert decide(referral, date(2035, 1, 1), LA, currency="USD") is None


def test_decisions_wait_settle_days_after_eligible_on() -> None:
    referral = facts(span(VR))
    assert decide(referral, date(2027, 3, 31), LA, currency="USD") is None
    assert decide(referral, date(2027, 4, 1), LA, currency="USD") is None
    assert decide(referral, date(2027, 4, 2), LA, currency="USD") is not None
    assert decide(referral, date(2027, 4, 3), LA, settle_days=3, currency="USD") is None
    assert decide(referral, date(2027, 4, 4), LA, settle_days=3, currency="USD") is not None
    assert decide(referral, date(2027, 4, 1), LA, settle_days=0, currency="USD") is not None


def test_negative_settle_days_is_an_error() -> None:
    with pytest.raises(ValueError):
        decide(facts(span(VR)), DECIDABLE, LA, settle_days=-1, currency="USD")


def test_a_scheduler_catching_up_months_later_decides_the_same() -> None:
    referral = facts(cancelled(VR, at=E + timedelta(days=3), effective=E - timedelta(days=3)))
    assert decided(referral, DECIDABLE) == decided(referral, date(2028, 6, 30))


def test_a_pending_referral_with_a_first_payment_is_decided_on_its_subscriptions() -> None:
    assert decided(facts(span(VR), status="pending")).outcome == "due"


@pytest.mark.parametrize(
    ("first_payment_at", "expected_eligible_on", "expected_pay_by", "first_decidable"),
    [
        # 23:30 PST on Jan 31 is 07:30Z on Feb 1: still a January payment.
        (
            datetime.fromisoformat("2027-01-31T23:30:00-08:00"),
            date(2027, 4, 1),
            date(2027, 4, 21),
            date(2027, 4, 2),
        ),
        # Leap day 2028 → May 2028 (Mon 1st): 15th business day Fri 19th.
        (
            datetime(2028, 2, 29, 20, 0, tzinfo=UTC),
            date(2028, 5, 1),
            date(2028, 5, 19),
            date(2028, 5, 2),
        ),
        # April 2027 → July 2027, with July 4th observed on Mon 5th.
        (
            datetime(2027, 4, 30, 12, 0, tzinfo=UTC),
            date(2027, 7, 1),
            date(2027, 7, 22),
            date(2027, 7, 2),
        ),
        # May 2027 → August 2027, which begins on a Sunday.
        (
            datetime(2027, 5, 15, 12, 0, tzinfo=UTC),
            date(2027, 8, 1),
            date(2027, 8, 20),
            date(2027, 8, 2),
        ),
    ],
)
def test_decision_dates(
    first_payment_at: datetime,
    expected_eligible_on: date,
    expected_pay_by: date,
    first_decidable: date,
) -> None:
    referral = facts(span(VR, created_at=first_payment_at - timedelta(days=1)))
    referral = referral._replace(first_payment_at=first_payment_at)
    assert decide(referral, first_decidable - timedelta(days=1), LA, currency="USD") is None
    decision = decided(referral, first_decidable)
    assert (decision.eligible_on, decision.pay_by) == (expected_eligible_on, expected_pay_by)
    assert decision.first_payment_at == first_payment_at


# --- payout id ------------------------------------------------------------------------------


def test_payout_id_is_deterministic_per_referral() -> None:
    assert str(PAYOUT_NAMESPACE) == "6f1c9a52-3d7e-4b8a-9c1e-2a5b7d9e0f13"
    # Pinned: changing the derivation would re-pay every referral under a new id.
    assert payout_id_for(REFERRAL_ID) == UUID("38fd018c-87de-57d5-b9a6-32750aa1bcbd")
    assert payout_id_for(REFERRAL_ID) == uuid.uuid5(PAYOUT_NAMESPACE, f"payout:{REFERRAL_ID}")
    assert payout_id_for(uuid.uuid4()) != payout_id_for(REFERRAL_ID)
    for referral in (facts(span(VR)), facts(), facts(span(VR), referrer_partner_periods=PARTNER)):
        assert decided(referral).payout_id == payout_id_for(REFERRAL_ID)


# --- properties -----------------------------------------------------------------------------

FAMILIES = st.sampled_from([VR, VA, CHAT, "outreach_campaign"])
# Offsets from the eligibility instant: the exact boundaries, and anywhere in a wide window.
OFFSETS = st.one_of(
    st.sampled_from([-SECOND, timedelta(0), SECOND]),
    st.integers(min_value=-150 * 24 * 60, max_value=40 * 24 * 60).map(
        lambda minutes: timedelta(minutes=minutes)
    ),
)


@st.composite
def referrals(draw: st.DrawFn) -> ReferralFacts:
    first_payment_at = draw(
        st.datetimes(
            min_value=datetime(2026, 1, 1),
            max_value=datetime(2029, 12, 31),
            timezones=st.just(UTC),
        )
    )
    eligible_at = eligibility_instant(eligible_on(first_payment_at, LA), LA)
    spans = []
    for index in range(draw(st.integers(min_value=0, max_value=5))):
        created_at = eligible_at + draw(OFFSETS)
        cancelled_at = effective_at = None
        if draw(st.booleans()):
            cancelled_at = eligible_at + draw(OFFSETS)
            effective_at = cancelled_at + draw(
                st.sampled_from([timedelta(0), timedelta(days=10), timedelta(days=-10)])
            )
        spans.append(
            SubscriptionSpan(f"sub_{index}", draw(FAMILIES), created_at, cancelled_at, effective_at)
        )
    ineligible_reason = draw(st.one_of(st.none(), st.sampled_from(CONSUMER_REASONS)))
    bound = st.none() | OFFSETS.map(lambda offset: eligible_at + offset)
    return facts(
        *spans,
        referral_id=draw(st.uuids()),
        first_payment_at=first_payment_at,
        status="qualified" if ineligible_reason is None else "ineligible",
        reason=ineligible_reason,
        referrer_partner_periods=tuple(draw(st.lists(st.tuples(bound, bound), max_size=2))),
        payee=draw(st.one_of(st.none(), st.just("acct_payee"))),
    )


def first_decidable_day(referral: ReferralFacts, settle_days: int = 1) -> date:
    assert referral.first_payment_at is not None
    return eligible_on(referral.first_payment_at, LA) + timedelta(days=settle_days)


@settings(deadline=None)
@given(referral=referrals(), data=st.data())
def test_decision_does_not_depend_on_subscription_order(
    referral: ReferralFacts, data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(referral.subscriptions))
    as_of = first_decidable_day(referral)
    assert decide(referral, as_of, LA, currency="USD") == decide(
        referral._replace(subscriptions=tuple(shuffled)), as_of, LA, currency="USD"
    )


@settings(deadline=None)
@given(
    referral=referrals(),
    settle_days=st.integers(min_value=0, max_value=7),
    days_late=st.integers(min_value=0, max_value=3 * 366),
)
def test_decision_does_not_depend_on_when_the_scheduler_runs(
    referral: ReferralFacts, settle_days: int, days_late: int
) -> None:
    first_day = first_decidable_day(referral, settle_days)
    on_time = decide(referral, first_day, LA, settle_days, currency="USD")
    late = decide(referral, first_day + timedelta(days=days_late), LA, settle_days, currency="USD")
    assert on_time is not None
    assert late == on_time


@settings(deadline=None)
@given(
    referral=referrals(),
    settle_days=st.integers(min_value=0, max_value=7),
    days_early=st.integers(min_value=1, max_value=400),
)
def test_nothing_is_decided_before_the_settle_period_ends(
    referral: ReferralFacts, settle_days: int, days_early: int
) -> None:
    as_of = first_decidable_day(referral, settle_days) - timedelta(days=days_early)
    assert decide(referral, as_of, LA, settle_days, currency="USD") is None


@settings(deadline=None)
@given(referral=referrals(), data=st.data())
def test_facts_from_eligible_on_onwards_change_nothing(
    referral: ReferralFacts, data: st.DataObject
) -> None:
    assert referral.first_payment_at is not None
    eligible_at = eligibility_instant(eligible_on(referral.first_payment_at, LA), LA)
    later = st.integers(min_value=0, max_value=60 * 24 * 60).map(
        lambda minutes: eligible_at + timedelta(minutes=minutes)
    )
    # Cancel every not-yet-cancelled subscription at or after the instant (even backdated)...
    changed = [
        sub._replace(cancelled_at=(at := data.draw(later)), effective_at=at - timedelta(days=30))
        if sub.cancelled_at is None
        else sub
        for sub in referral.subscriptions
    ]
    # ...and sign the referee up for new plans from then on.
    changed += [
        span(family, created_at=data.draw(later), subscription_id=f"late_{index}")
        for index, family in enumerate(data.draw(st.lists(FAMILIES, max_size=3)))
    ]
    as_of = first_decidable_day(referral)
    assert decide(referral, as_of, LA, currency="USD") == decide(
        referral._replace(subscriptions=tuple(changed)), as_of, LA, currency="USD"
    )


@settings(deadline=None)
@given(referral=referrals())
def test_decision_invariants(referral: ReferralFacts) -> None:
    decision = decide(referral, first_decidable_day(referral), LA, currency="USD")
    assert decision is not None
    assert decision.payout_id == payout_id_for(referral.referral_id)
    assert decision.payee == (referral.payee or referral.referrer_account_id)
    if decision.outcome == "due":
        assert decision.reason is None
        assert decision.plan_family is not None
        assert decision.amount_cents == REWARD_CENTS[decision.plan_family] > 0
    else:
        assert decision.outcome in {"forfeited", "ineligible"}
        assert decision.reason is not None
        assert (decision.plan_family, decision.amount_cents) == (None, 0)
    assert isinstance(decision.amount_cents, int)


# --- the decidability bound -----------------------------------------------------------------


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
    referral = facts(span(), first_payment_at=first_payment_at)
    is_decided = decide(referral, as_of, tz, settle_days, currency="USD") is not None
    assert is_decided == (first_payment_at < decidable_before(as_of, tz, settle_days))


# --- several cancellations of one subscription --------------------------------------------


def outcome(referral: ReferralFacts) -> tuple[str, str | None]:
    decision = decided(referral)
    return decision.outcome, decision.reason


def test_a_subscription_without_cancellations_is_active() -> None:
    assert outcome(facts(span())) == ("due", None)


def test_the_earliest_effective_cancellation_known_before_eligibility_decides() -> None:
    # Billing re-sent the cancellation with a later end: service still ended by E.
    ends_before = Cancellation(E - 30 * DAY, E - 10 * DAY)
    ends_after = Cancellation(E - 5 * DAY, E + 20 * DAY)
    for order in itertools.permutations([ends_before, ends_after]):
        assert outcome(facts(span(cancellations=order))) == (
            "forfeited",
            "cancelled_before_eligibility",
        )


def test_cancellations_recorded_at_or_after_eligibility_are_ignored() -> None:
    backdated = Cancellation(E, E - 10 * DAY)
    later = Cancellation(E + DAY, E - DAY)
    known = Cancellation(E - 30 * DAY, E + 20 * DAY)
    assert outcome(facts(span(cancellations=(backdated, later, known)))) == ("due", None)


def test_cancellations_combine_with_the_single_cancellation_fields() -> None:
    combined = span(
        cancelled_at=E - 40 * DAY,
        effective_at=E,
        cancellations=(Cancellation(E - 3 * DAY, E + 9 * DAY),),
    )
    assert outcome(facts(combined)) == ("forfeited", "cancelled_before_eligibility")


@given(referral_id=st.uuids())
def test_payout_id_is_the_uuid5_of_any_referral(referral_id: uuid.UUID) -> None:
    expected = uuid.uuid5(PAYOUT_NAMESPACE, f"payout:{referral_id}")
    assert payout_id_for(referral_id) == expected
    assert payout_id_text(referral_id) == str(expected)


# --- a chunk decided on columns ---------------------------------------------------------------


def rows_of(referrals: list[ReferralFacts]) -> FactRows:
    """The referrals as a store reads them: one row per (subscription, cancellation of it)."""
    rows: list[tuple[object, ...]] = []
    for f in referrals:
        own = (
            f.referral_id, f.referrer_account_id, f.referee_account_id, f.referral_code,
            f.status, f.reason, f.first_payment_at, f.referrer_partner_periods, f.payee,
        )  # fmt: skip
        if not f.subscriptions:
            rows.append((*own, None, None, None, None, None))
        for s in f.subscriptions:
            ends = [Cancellation(s.cancelled_at, s.effective_at)] if s.effective_at else []
            ends += s.cancellations
            for end in ends or [Cancellation(None, None)]:  # type: ignore[arg-type]
                rows.append((*own, s.subscription_id, s.plan_family, s.created_at, *end))
    if not rows:
        return FactRows(*([] for _ in FactRows._fields))
    return FactRows(*(list(column) for column in zip(*rows, strict=True)))


# First payments anywhere, and on the first instants of local months (where a UTC month
# and the zone's month part), in zones west and east of UTC and with midnight DST changes.
CHUNK_ZONES = [LA, ZoneInfo("UTC"), ZoneInfo("Pacific/Apia"), ZoneInfo("America/Santiago"),
               ZoneInfo("Asia/Kolkata")]  # fmt: skip
NEAR = st.sampled_from([timedelta(0), -SECOND, SECOND, timedelta(microseconds=-1), 9 * HOUR])


@st.composite
def chunks(draw: st.DrawFn) -> tuple[ZoneInfo, date, int, list[ReferralFacts]]:
    tz = draw(st.sampled_from(CHUNK_ZONES))
    settle_days = draw(st.integers(min_value=0, max_value=5))
    # Mostly late enough for every referral; sometimes a day that leaves some undecidable.
    as_of = draw(
        st.just(date(2030, 1, 1))
        | st.dates(min_value=date(2026, 4, 1), max_value=date(2029, 12, 31))
    )
    referrals = []
    for n in range(draw(st.integers(min_value=0, max_value=8))):
        month = draw(st.dates(min_value=date(2026, 1, 1), max_value=date(2029, 9, 1)))
        month_start = eligibility_instant(month.replace(day=1), tz)
        first_payment_at = draw(
            st.none()
            | st.just(month_start).map(lambda start: (start + draw(NEAR)).astimezone(UTC))
            | st.datetimes(
                min_value=datetime(2026, 1, 1),
                max_value=datetime(2029, 9, 1),
                timezones=st.just(UTC),
            )
        )
        eligible_at = (
            eligibility_instant(eligible_on(first_payment_at, tz), tz)
            if first_payment_at is not None
            else month_start
        )
        spans = []
        for index in range(draw(st.integers(min_value=0, max_value=3))):
            created_at = eligible_at + draw(OFFSETS)
            ends = [
                Cancellation(at := eligible_at + draw(OFFSETS), at + draw(OFFSETS))
                for _ in range(draw(st.integers(min_value=0, max_value=3)))
            ]
            first = ends.pop(0) if ends and draw(st.booleans()) else Cancellation(None, None)  # type: ignore[arg-type]
            spans.append(
                SubscriptionSpan(
                    f"sub_{index}", draw(FAMILIES), created_at, *first, cancellations=tuple(ends)
                )
            )
        ineligible_reason = draw(st.sampled_from([None, None, None, *CONSUMER_REASONS[:2]]))
        bound = st.none() | OFFSETS.map(lambda offset, at=eligible_at: at + offset)
        referrals.append(
            facts(
                *spans,
                referral_id=UUID(int=n + 1),
                referrer_account_id=draw(st.sampled_from(["acct_r1", "acct_r2"])),
                first_payment_at=first_payment_at,
                status="qualified" if ineligible_reason is None else "ineligible",
                reason=ineligible_reason,
                referrer_partner_periods=tuple(
                    draw(st.just([]) | st.lists(st.tuples(bound, bound), max_size=2))
                ),
                payee=draw(st.one_of(st.none(), st.just("acct_payee"))),
            )
        )
    return tz, as_of, settle_days, referrals


@settings(deadline=None, max_examples=500)
@given(chunk=chunks())
def test_a_chunk_decided_on_columns_is_decided_as_decide_decides_each_referral(
    chunk: tuple[ZoneInfo, date, int, list[ReferralFacts]],
) -> None:
    tz, as_of, settle_days, referrals = chunk
    expected = [
        d for f in referrals if (d := decide(f, as_of, tz, settle_days, currency="EUR")) is not None
    ]
    rows = rows_of(referrals)
    decided = decide_rows(rows, as_of, tz, settle_days, currency="EUR")
    assert [decided.decision(k, rows) for k in range(len(decided.row))] == expected
    # One ruling per distinct outcome, reason, family and month: no ruling is repeated.
    assert len(set(decided.rulings)) == len(decided.rulings)


def test_a_chunk_decides_a_referral_of_several_subscriptions_on_all_its_rows() -> None:
    ends_before = Cancellation(E - 30 * DAY, E - 10 * DAY)
    referrals = [
        facts(span(VR, subscription_id="a", cancellations=(ends_before,)), span(VA),
              referral_id=UUID(int=1)),
        facts(span(VR, subscription_id="b", cancellations=(Cancellation(E - DAY, E + DAY),
              ends_before)), referral_id=UUID(int=2)),
        facts(referral_id=UUID(int=3), first_payment_at=None),
        facts(span(VR), span(VA), referral_id=UUID(int=4)),
    ]  # fmt: skip
    rows = rows_of(referrals)
    chunk = decide_rows(rows, DECIDABLE, LA, currency="USD")
    assert [chunk.decision(k, rows) for k in range(3)] == [
        decided(referral) for referral in (referrals[0], referrals[1], referrals[3])
    ]
    assert [(r.outcome, r.reason, r.plan_family) for r in chunk.rulings] == [
        ("due", None, VA),
        ("forfeited", "cancelled_before_eligibility", None),
        ("due", None, VR),
    ]
    assert chunk.row == [0, 2, 5]  # rows: 2 + 2 + 1 (no first payment: not decided) + 2


def test_a_chunk_refuses_a_naive_first_payment_as_decide_does() -> None:
    naive = facts(span(), first_payment_at=datetime(2027, 1, 17, 10))
    with pytest.raises(ValueError, match="tz-aware"):
        decide(naive, DECIDABLE, LA, currency="USD")
    with pytest.raises(ValueError, match="tz-aware"):
        decide_rows(rows_of([naive]), DECIDABLE, LA, currency="USD")
    with pytest.raises(ValueError, match="settle_days"):
        decide_rows(rows_of([]), DECIDABLE, LA, -1, currency="USD")

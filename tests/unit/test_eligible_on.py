"""Facts dated at or after the start of eligible_on never change a referral (docs/rules.md).

The referral state (status, reason) the consumer derives and the payout the
scheduler decides from it are computed on a referral's facts, then again with
any facts dated from the eligibility instant on added, in any order.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from referral_program.attribution import (
    InvoiceFact,
    PartnerPeriod,
    Referral,
    SubscriptionFact,
    cutoff,
    referral_state,
)
from referral_program.calendar import eligible_on
from referral_program.decisions import (
    Cancellation,
    Decision,
    ReferralFacts,
    SubscriptionSpan,
    decide,
)

LA = ZoneInfo("America/Los_Angeles")
FAMILIES = ["virtual_receptionist", "voice_assistant", "chat"]
ORGS = st.sampled_from([None, "org-a", "org-r"])
DOMAINS = st.sampled_from([None, "a.example", "r.example", "gmail.com"])
FINGERPRINTS = st.sampled_from([None, "fp-a", "fp-r"])


class History:
    """One referee's and its referrer's facts; ``cancellations`` by subscription id."""

    def __init__(self) -> None:
        self.referee: list[SubscriptionFact] = []
        self.invoices: list[InvoiceFact] = []
        self.referrer: list[SubscriptionFact] = []
        self.partner: list[PartnerPeriod] = []
        self.cancellations: list[tuple[str, Cancellation]] = []


def _sub(
    draw: st.DrawFn, account: str, sid: str, at: datetime, referrer: str | None = None
) -> SubscriptionFact:
    return SubscriptionFact(
        subscription_id=sid,
        account_id=account,
        created_at=at,
        plan_family=draw(st.sampled_from(FAMILIES)),
        currency=draw(st.sampled_from(["USD", "CAD"])),
        first_time_client=draw(st.booleans()),
        referral_code="CODE0001" if referrer else None,
        referrer_account_id=referrer,
        email_domain=draw(DOMAINS),
        organization_id=draw(ORGS),
        payment_fingerprint_hash=draw(FINGERPRINTS),
    )


@st.composite
def histories(draw: st.DrawFn) -> tuple[History, History, datetime]:
    """A referral with a first payment; the same plus facts from its cut-off on; the cut-off."""
    signed_up = draw(
        st.datetimes(datetime(2026, 1, 1), datetime(2028, 12, 31), timezones=st.just(UTC))
    )
    paid_at = signed_up + timedelta(minutes=draw(st.integers(0, 40 * 24 * 60)))
    end = cutoff(paid_at, LA)
    window = int((end - signed_up).total_seconds() // 60)

    def before() -> datetime:  # from a year before the sign-up to just before the cut-off
        return signed_up + timedelta(minutes=draw(st.integers(-365 * 24 * 60, window - 1)))

    def at_or_after() -> datetime:
        return end + timedelta(minutes=draw(st.sampled_from([0, 1]) | st.integers(0, 10**6)))

    base = History()
    touch = _sub(draw, "A", "a0", signed_up, referrer="R")
    base.referee.append(replace(touch, plan_family=draw(st.sampled_from(FAMILIES[:2]))))
    base.invoices.append(InvoiceFact("i0", "A", "a0", paid_at, 9900))
    for n in range(draw(st.integers(0, 2))):
        at = before()
        base.referee.append(_sub(draw, "A", f"a{n + 1}", max(at, signed_up)))
    for n in range(draw(st.integers(0, 2))):
        base.referrer.append(_sub(draw, "R", f"r{n}", before()))
    for n in range(draw(st.integers(0, 2))):
        at, amount = before(), draw(st.sampled_from([0, 100]))
        if amount and at >= signed_up:  # paid before the referral, or not the first payment
            at = max(at, paid_at)
        base.invoices.append(InvoiceFact(f"i{n + 1}", "A", "a0", at, amount))
    for _ in range(draw(st.integers(0, 2))):
        since = draw(st.none() | st.just(before()))
        base.partner.append((since, draw(st.none() | st.just(before()))))
    for sub in base.referee:
        if draw(st.booleans()):
            recorded = before()
            effective = recorded + timedelta(days=draw(st.sampled_from([-10, 0, 10, 200])))
            base.cancellations.append((sub.subscription_id, Cancellation(recorded, effective)))

    more = History()
    more.referee = list(base.referee)
    more.invoices = list(base.invoices)
    more.referrer = list(base.referrer)
    more.partner = list(base.partner)
    more.cancellations = list(base.cancellations)
    for n in range(draw(st.integers(0, 3))):
        more.referee.append(_sub(draw, "A", f"late-a{n}", at_or_after(), draw(st.sampled_from([None, "R", "Q"]))))  # fmt: skip
    for n in range(draw(st.integers(0, 3))):
        more.referrer.append(_sub(draw, "R", f"late-r{n}", at_or_after()))
    for n in range(draw(st.integers(0, 3))):
        sid = draw(st.sampled_from([s.subscription_id for s in more.referee]))
        amount = draw(st.sampled_from([0, 100, 9900]))
        more.invoices.append(InvoiceFact(f"late-i{n}", "A", sid, at_or_after(), amount))
    for _ in range(draw(st.integers(0, 2))):
        sid = draw(st.sampled_from([s.subscription_id for s in more.referee]))
        recorded = at_or_after()
        backdated = recorded - timedelta(days=draw(st.sampled_from([0, 30, 400])))
        more.cancellations.append((sid, Cancellation(recorded, backdated)))
    # A flag set from the cut-off on, or a flag set before it unset from then on.
    for _ in range(draw(st.integers(0, 2))):
        more.partner.append((at_or_after(), draw(st.none() | st.just(at_or_after()))))
    if more.partner and draw(st.booleans()):
        index = draw(st.integers(0, len(more.partner) - 1))
        since, until = more.partner[index]
        if until is None:
            more.partner[index] = (since, at_or_after())
    return base, more, end


def _shuffled(data: st.DataObject, history: History) -> History:
    out = History()
    out.referee = data.draw(st.permutations(history.referee))
    out.invoices = data.draw(st.permutations(history.invoices))
    out.referrer = data.draw(st.permutations(history.referrer))
    out.partner = data.draw(st.permutations(history.partner))
    out.cancellations = data.draw(st.permutations(history.cancellations))
    return out


def _state(history: History) -> Referral:
    state = referral_state(history.referee, history.invoices, history.referrer, history.partner, LA)
    assert state is not None
    return state


def _decision(history: History, state: Referral) -> Decision:
    spans = tuple(
        SubscriptionSpan(
            s.subscription_id,
            s.plan_family,
            s.created_at,
            None,
            None,
            tuple(c for sid, c in history.cancellations if sid == s.subscription_id),
        )
        for s in history.referee
    )
    facts = ReferralFacts(
        referral_id=state.referral_id,
        referrer_account_id=state.referrer_account_id,
        referee_account_id=state.referee_account_id,
        referral_code=state.referral_code,
        status=state.status,
        reason=state.reason,
        first_payment_at=state.first_payment_at,
        referrer_partner_periods=tuple(history.partner),
        payee=None,
        subscriptions=spans,
    )
    assert state.first_payment_at is not None
    as_of = eligible_on(state.first_payment_at, LA) + timedelta(days=1)
    decision = decide(facts, as_of, LA, currency="USD")
    assert decision is not None
    return decision


@settings(max_examples=400, deadline=None)
@given(histories=histories(), data=st.data())
def test_facts_from_the_start_of_eligible_on_change_no_state_and_no_decision(
    histories: tuple[History, History, datetime], data: st.DataObject
) -> None:
    base, more, end = histories
    before = _state(base)
    after = _state(_shuffled(data, more))
    assert before.first_payment_at is not None and cutoff(before.first_payment_at, LA) == end
    assert (after.status, after.reason, after.first_payment_at, after.referrer_account_id) == (
        before.status,
        before.reason,
        before.first_payment_at,
        before.referrer_account_id,
    )
    assert _decision(_shuffled(data, more), after) == _decision(base, before)


def test_a_referrer_subscription_from_the_cut_off_on_shares_nothing() -> None:
    paid_at = datetime(2027, 1, 17, 18, tzinfo=UTC)
    end = cutoff(paid_at, LA)
    assert end == datetime(2027, 4, 1, 7, tzinfo=UTC)

    def sub(account: str, sid: str, at: datetime, referrer: str | None = None) -> SubscriptionFact:
        return SubscriptionFact(sid, account, at, "virtual_receptionist", "USD", True,
                                "CODE0001" if referrer else None, referrer, None, "org-1", None)  # fmt: skip

    referee = [sub("A", "a0", datetime(2027, 1, 10, tzinfo=UTC), referrer="R")]
    invoices = [InvoiceFact("i0", "A", "a0", paid_at, 9900)]
    late = [sub("R", "r0", end)]
    early = [sub("R", "r0", end - timedelta(seconds=1))]
    state = referral_state(referee, invoices, late, [(end, None)], LA)
    assert state is not None and (state.status, state.reason) == ("qualified", None)
    state = referral_state(referee, invoices, early, [], LA)
    assert state is not None and (state.status, state.reason) == ("ineligible", "same_organization")
    state = referral_state(referee, invoices, [], [(end - timedelta(seconds=1), None)], LA)
    assert state is not None and (state.status, state.reason) == (
        "ineligible",
        "partner_ineligible",
    )


def test_without_a_first_payment_every_fact_known_counts() -> None:
    at = datetime(2027, 1, 10, tzinfo=UTC)
    referee = [
        SubscriptionFact("a0", "A", at, "virtual_receptionist", "USD", True, "CODE0001", "R",
                         None, "org-1", None)
    ]  # fmt: skip
    referrer = [
        SubscriptionFact("r0", "R", datetime(2030, 1, 1, tzinfo=UTC), "chat", "USD", True, None,
                         None, None, "org-1", None)
    ]  # fmt: skip
    state = referral_state(referee, [], referrer, [], LA)
    assert state is not None and (state.status, state.reason) == ("ineligible", "same_organization")
    assert eligible_on(at, LA) == date(2027, 4, 1)

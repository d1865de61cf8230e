"""Attribution and eligibility, and the order/redelivery independence of referral state."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from referral_program import codes
from referral_program.attribution import (
    Ineligible,
    InvoiceFact,
    Status,
    SubscriptionFact,
    attributing_subscription,
    email_domain,
    fingerprint_hash,
    referral_state,
)

T0 = datetime(2027, 1, 10, 12, tzinfo=UTC)
LA = ZoneInfo("America/Los_Angeles")


def sub(account: str, sid: str, *, at: datetime = T0, family: str = "virtual_receptionist",
        referrer: str | None = None, code: str | None = None, first_time: bool = True,
        domain: str | None = None, org: str | None = None, fp: str | None = None) -> SubscriptionFact:  # fmt: skip
    return SubscriptionFact(
        subscription_id=sid,
        account_id=account,
        created_at=at,
        plan_family=family,
        currency="USD",
        first_time_client=first_time,
        referral_code=code or ("CODE0001" if referrer else None),
        referrer_account_id=referrer,
        email_domain=domain,
        organization_id=org,
        payment_fingerprint_hash=fingerprint_hash(fp),
    )


def inv(account: str, sid: str, iid: str, cents: int, at: datetime) -> InvoiceFact:
    return InvoiceFact(iid, account, sid, at, cents)


REFERRER = [sub("R", "r1", domain="acme.com", org="org-r", fp="fp-r")]


def state(referee_subs, invoices=(), referrer_subs=REFERRER, partner=False):  # type: ignore[no-untyped-def]
    periods = [(None, None)] if partner else []
    return referral_state(list(referee_subs), list(invoices), list(referrer_subs), periods, LA)


def test_not_referred_without_a_known_code() -> None:
    assert state([sub("A", "a1")]) is None


def test_pending_until_first_paid_invoice_on_a_qualifying_plan() -> None:
    s = [sub("A", "a1", referrer="R"), sub("A", "a2", family="chat")]
    assert state(s).status is Status.PENDING
    # $0 invoices and invoices on non-qualifying plans are not a first payment
    invoices = [inv("A", "a1", "i0", 0, T0), inv("A", "a2", "i1", 500, T0 + timedelta(days=1))]
    assert state(s, invoices).status is Status.PENDING
    invoices.append(inv("A", "a1", "i2", 9900, T0 + timedelta(days=2)))
    referral = state(s, invoices)
    assert referral.status is Status.QUALIFIED
    assert referral.first_payment_invoice_id == "i2"
    assert referral.first_payment_at == T0 + timedelta(days=2)


def test_first_touch_wins() -> None:
    early = sub("A", "a1", referrer="R", at=T0)
    late = sub("A", "a2", referrer="Q", at=T0 + timedelta(hours=1), code="CODE0002")
    referral = state([late, early])
    assert referral.referrer_account_id == "R"
    assert referral.subscription_id == "a1"


def test_ineligibility_reasons() -> None:
    cases = {
        Ineligible.SELF_REFERRAL: ([sub("R", "r2", referrer="R")], [], REFERRER, False),
        Ineligible.SAME_ORGANIZATION: ([sub("A", "a1", referrer="R", org="org-r")], [], REFERRER, False),
        Ineligible.SHARED_PAYMENT_METHOD: ([sub("A", "a1", referrer="R", fp="fp-r")], [], REFERRER, False),
        Ineligible.SAME_EMAIL_DOMAIN: ([sub("A", "a1", referrer="R", domain="acme.com")], [], REFERRER, False),
        Ineligible.EXISTING_CLIENT: ([sub("A", "a1", referrer="R", first_time=False)], [], REFERRER, False),
        Ineligible.PARTNER: ([sub("A", "a1", referrer="R")], [], REFERRER, True),
    }  # fmt: skip
    for reason, (subs, invoices, referrer, partner) in cases.items():
        referral = state(subs, invoices, referrer, partner)
        assert (referral.status, referral.reason) == (Status.INELIGIBLE, reason), reason


def test_paid_before_the_referral_is_an_existing_client() -> None:
    subs = [
        sub("A", "old", family="chat", at=T0 - timedelta(days=60)),
        sub("A", "a1", referrer="R"),
    ]
    paid_before = inv("A", "old", "i-old", 100, T0 - timedelta(days=30))
    assert state(subs, [paid_before]).reason is Ineligible.EXISTING_CLIENT
    # a $0 invoice before the referral is not "paid"
    free = inv("A", "old", "i-free", 0, T0 - timedelta(days=30))
    assert state(subs, [free]).reason is None


def test_public_email_domains_prove_nothing() -> None:
    referrer = [sub("R", "r1", domain="gmail.com")]
    assert state([sub("A", "a1", referrer="R", domain="gmail.com")], [], referrer).reason is None


def test_personal_data_is_reduced() -> None:
    assert email_domain("Jane.Doe@Acme-Dental.COM") == "acme-dental.com"
    assert email_domain("no-at-sign") is None
    assert email_domain(None) is None
    digest = fingerprint_hash("card_123")
    assert digest and "card_123" not in digest and digest == fingerprint_hash("card_123")


# --- order and redelivery independence -------------------------------------------------


#: Referral codes and their owners; a code's revocation is a fact like the others.
OWNERS = {"CODE0001": "R", "CODE0002": "Q"}


@dataclass(frozen=True)
class Revocation:
    """Support revoked ``code`` at ``at`` (business time: the instant it did so)."""

    code: str
    at: datetime


Fact = SubscriptionFact | InvoiceFact | Revocation


@dataclass
class FakeStore:
    """The consumer's write path in memory: inbox dedupe by event id, facts keyed by id
    (first write wins, as `on conflict do nothing`), then recomputation.

    A sign-up's code is resolved when it is recorded, against the revocations known then
    (as the consumer's insert does), and a revocation withdraws the sign-ups already
    recorded that it no longer attributes (as support's revoke does)."""

    inbox: set[str] = field(default_factory=set)
    subscriptions: dict[str, SubscriptionFact] = field(default_factory=dict)
    invoices: dict[str, InvoiceFact] = field(default_factory=dict)
    revoked: dict[str, datetime] = field(default_factory=dict)

    def apply(self, event_id: str, fact: Fact) -> None:
        if event_id in self.inbox:
            return
        self.inbox.add(event_id)
        if isinstance(fact, SubscriptionFact):
            self.subscriptions.setdefault(fact.subscription_id, self._resolved(fact))
        elif isinstance(fact, InvoiceFact):
            self.invoices.setdefault(fact.invoice_id, fact)
        else:
            self.revoked[fact.code] = fact.at
            for sid, s in self.subscriptions.items():
                if s.referral_code == fact.code:
                    self.subscriptions[sid] = self._resolved(s)

    def _resolved(self, s: SubscriptionFact) -> SubscriptionFact:
        owner = OWNERS.get(s.referral_code or "")
        attributes = owner is not None and codes.attributes(
            self.revoked.get(s.referral_code or ""), s.created_at
        )
        return replace(s, referrer_account_id=owner if attributes else None)

    def referral(self, referee: str):  # type: ignore[no-untyped-def]
        subs = [s for s in self.subscriptions.values() if s.account_id == referee]
        invoices = [i for i in self.invoices.values() if i.account_id == referee]
        touch = attributing_subscription(subs)
        referrer = [
            s
            for s in self.subscriptions.values()
            if touch is not None and s.account_id == touch.referrer_account_id
        ]
        return referral_state(subs, invoices, referrer, [], LA)


@st.composite
def account_history(draw: st.DrawFn) -> list[tuple[str, Fact]]:
    """A referee's events (each with its own id), the referrers' subscriptions and,
    perhaps, the revocation of one referrer's code."""
    events: list[tuple[str, Fact]] = [
        ("e-r1", REFERRER[0]),
        ("e-r2", sub("R", "r2", domain=draw(st.sampled_from([None, "acme.com", "b.com"])))),
        ("e-q1", sub("Q", "q1", domain=draw(st.sampled_from([None, "b.com"])))),
    ]
    n_subs = draw(st.integers(1, 4))
    for i in range(n_subs):
        events.append(
            (
                f"e-s{i}",
                sub(
                    "A", f"a{i}",
                    at=T0 + timedelta(hours=draw(st.integers(-48, 48))),
                    family=draw(st.sampled_from(["virtual_receptionist", "voice_assistant", "chat"])),
                    code=draw(st.sampled_from([None, "CODE0001", "CODE0001", "CODE0002"])),
                    first_time=draw(st.booleans()),
                    domain=draw(st.sampled_from([None, "b.com", "gmail.com"])),
                ),
            )
        )  # fmt: skip
    for j in range(draw(st.integers(0, 5))):
        events.append(
            (
                f"e-i{j}",
                inv("A", f"a{draw(st.integers(0, n_subs - 1))}", f"i{j}",
                    draw(st.sampled_from([0, 100, 9900])),
                    T0 + timedelta(hours=draw(st.integers(-72, 240)))),
            )
        )  # fmt: skip
    if draw(st.booleans()):
        at = T0 + timedelta(hours=draw(st.integers(-48, 48)))
        events.append(("e-revoke", Revocation("CODE0001", at)))
    return events


@settings(max_examples=300, deadline=None)
@given(history=account_history(), data=st.data())
def test_state_is_a_function_of_the_set_of_events(history, data) -> None:  # type: ignore[no-untyped-def]
    """Revocations included: a sign-up counts by when it was made, not when it arrived."""
    reference = FakeStore()
    for event_id, fact in history:
        reference.apply(event_id, fact)
    expected = reference.referral("A")

    delivered = data.draw(st.permutations(history))
    redeliveries = data.draw(st.lists(st.sampled_from(history), max_size=10))
    stream = data.draw(st.permutations(delivered + redeliveries))
    store = FakeStore()
    for event_id, fact in stream:
        store.apply(event_id, fact)
        store.referral("A")  # recomputed after every batch; only the last one counts
    assert store.referral("A") == expected


def test_a_revoked_code_attributes_the_sign_ups_made_before_the_revocation() -> None:
    revoked_at = T0
    assert codes.attributes(None, T0 + timedelta(days=400))
    assert codes.attributes(revoked_at, T0 - timedelta(microseconds=1))
    assert not codes.attributes(revoked_at, T0)
    assert not codes.attributes(revoked_at, T0 + timedelta(hours=1))

    store = FakeStore()
    store.apply("late-signup", sub("A", "a1", code="CODE0001", at=T0 + timedelta(hours=1)))
    assert store.referral("A").referrer_account_id == "R"  # consumed before the revocation
    store.apply("revoke", Revocation("CODE0001", T0))
    store.apply("early-signup", sub("B", "b1", code="CODE0001", at=T0 - timedelta(hours=1)))
    assert store.referral("A") is None
    assert store.referral("B").referrer_account_id == "R"


def test_equal_timestamps_break_ties_by_id() -> None:
    a = sub("A", "a2", referrer="R")
    b = replace(sub("A", "a1", referrer="Q", code="CODE0002"))
    assert state([a, b]).subscription_id == state([b, a]).subscription_id == "a1"

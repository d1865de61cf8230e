"""Which customer facts referrer and referee must not share: one table, read by every user."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from referral_consumer.plan import BatchPlan
from referral_devtools import synthetic as bill
from referral_program.attribution import SubscriptionFact, email_domain, referral_state
from referral_program.compared_facts import COMPARED_FACTS, PUBLIC_EMAIL_DOMAINS
from referral_program.table import Ineligible, Status
from tests.unit.records import T, parsed

LA = ZoneInfo("America/Los_Angeles")
T0 = datetime(2027, 1, 10, 12, tzinfo=UTC)


def sub(account: str, email: str, referrer: str | None = None) -> SubscriptionFact:
    return SubscriptionFact(
        f"{account}-s", account, T0, "virtual_receptionist", "USD", True,
        "CODE0001" if referrer else None, referrer, email_domain(email), None, None,
    )  # fmt: skip


@pytest.mark.parametrize(
    "domain",
    [
        "gmail.com",
        "yahoo.co.uk",
        "hotmail.co.uk",
        "outlook.fr",
        "web.de",
        "gmx.de",
        "qq.com",
        "pm.me",
    ],
)
def test_the_free_mail_providers_the_program_names_are_public(domain: str) -> None:
    assert domain in PUBLIC_EMAIL_DOMAINS


def test_two_people_on_one_free_mail_provider_are_not_one_business() -> None:
    referral = referral_state(
        [sub("bob", "bob@yahoo.co.uk", referrer="alice")],
        [],
        [sub("alice", "alice@yahoo.co.uk")],
        [],
        LA,
    )
    assert referral is not None
    assert (referral.status, referral.reason) == (Status.PENDING, None)


def test_a_private_domain_shared_is_the_same_business() -> None:
    referral = referral_state(
        [sub("bob", "bob@acme-dental.com", referrer="alice")],
        [],
        [sub("alice", "alice@Acme-Dental.com")],
        [],
        LA,
    )
    assert referral is not None
    assert (referral.status, referral.reason) == (Status.INELIGIBLE, Ineligible.SAME_EMAIL_DOMAIN)


def test_the_table_names_subscription_facts_and_the_plans_columns() -> None:
    # Each compared fact is a field of SubscriptionFact and a column the batch plan fills.
    plan = BatchPlan.of(
        parsed(
            ("created", bill.subscription_created("a", "s1", "chat", T, email="x@yahoo.co.uk")),
            ("created", bill.subscription_created("b", "s2", "chat", T, email="x@acme.test",
                                                  organization_id="o", payment_fingerprint="f")),
        )
    )  # fmt: skip
    for fact in COMPARED_FACTS:
        assert fact.column in SubscriptionFact.__dataclass_fields__
        assert len(getattr(plan.created, fact.column)) == 2
    assert plan.created.compared == [False, True]
    [changing] = plan.created.compared_facts()
    assert changing.account_id == "b"
    assert changing.values[[f.column for f in COMPARED_FACTS].index("email_domain")] == "acme.test"

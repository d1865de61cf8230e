"""Events billing publishes: subscription.created, invoice.paid, subscription.cancelled."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, StringConstraints, model_validator

from referral_events.compiled import CompiledModel, compile_model, struct_model_validator
from referral_events.envelope import BusinessTime, Data, Envelope, storable_identifier

#: An id the rules read: a bad one (blank, too long, a NUL Postgres cannot store) makes
#: the event invalid.
Identifier = Annotated[str, StringConstraints(max_length=200), AfterValidator(storable_identifier)]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
# strict: money arrives as a JSON integer; "100" or 100.0 is a wrong type, not coerced.
Cents = Annotated[int, Field(ge=0, le=10**12, strict=True)]

# Free text carries no money: it never makes an event invalid. The consumer removes NUL
# characters (which Postgres cannot store) and keeps at most this many characters, and
# counts what it changed (docs/rules.md: bad input).
PLAN_ID_MAX_CHARS = 200
CANCELLATION_REASON_MAX_CHARS = 500
#: The longest address mail allows; only the domain of an address is ever kept.
EMAIL_MAX_CHARS = 320
#: The longest domain name DNS allows.
EMAIL_DOMAIN_MAX_CHARS = 253
NUL = "\x00"


def _domain_storable(email: str) -> str:
    """The domain of an address is a fact the rules compare: it must be one Postgres can store."""
    if "@" in email:
        domain = email.rpartition("@")[2].strip().rstrip(".")
        if NUL in domain:
            raise ValueError(
                "the domain contains a NUL character (\\u0000), which cannot be stored"
            )
        if len(domain) > EMAIL_DOMAIN_MAX_CHARS:
            raise ValueError(f"the domain is longer than {EMAIL_DOMAIN_MAX_CHARS} characters")
    return email


Email = Annotated[
    str,
    AfterValidator(_domain_storable),
    Field(
        description="Only its domain is kept (compared for same_email_domain). The local part "
        f"is free text: one with a NUL, or an address over {EMAIL_MAX_CHARS} characters, is "
        "counted and the event applied; a domain with a NUL or over "
        f"{EMAIL_DOMAIN_MAX_CHARS} characters makes the event invalid."
    ),
]


class Customer(Data):
    """Who the subscriber is, as far as the eligibility rules need to know."""

    email: Email | None = None
    organization_id: Identifier | None = None
    payment_fingerprint: Identifier | None = None


class SubscriptionCreatedData(Data):
    account_id: Identifier
    subscription_id: Identifier
    plan_family: Identifier
    plan_id: str = Field(
        description="Billing's plan; free text, not read by the rules (the family carries the "
        f"money): NULs are removed and it is cut to {PLAN_ID_MAX_CHARS} characters, never a "
        "reason to refuse the event."
    )
    referral_code: str | None = Field(
        default=None,
        description="The code the subscriber typed, as typed. Advisory: one that is not a "
        "referral code (too long, wrong symbols) attributes nothing and is recorded as "
        "malformed; the subscription is applied all the same. Only its normal form is stored.",
    )
    first_time_client: bool = Field(default=True, strict=True)
    currency: Currency
    customer: Customer = Customer()


class InvoicePaidData(Data):
    account_id: Identifier
    subscription_id: Identifier
    invoice_id: Identifier
    amount_paid_cents: Cents
    discount_cents: Cents = 0
    currency: Currency


class SubscriptionCancelledData(Data):
    account_id: Identifier
    subscription_id: Identifier
    effective_at: BusinessTime | None = Field(
        default=None, description="When service ends; defaults to the event's occurred_at."
    )
    reason: str | None = Field(
        default=None,
        description="Why the client left; free text, not read by the rules: NULs are removed "
        f"and it is cut to {CANCELLATION_REASON_MAX_CHARS} characters, never a reason to "
        "refuse the event.",
    )


class SubscriptionCreated(Envelope):
    EVENT_TYPE = "subscription.created"
    event_type: Literal["subscription.created"]
    data: SubscriptionCreatedData


class InvoicePaid(Envelope):
    EVENT_TYPE = "invoice.paid"
    event_type: Literal["invoice.paid"]
    data: InvoicePaidData


class SubscriptionCancelled(Envelope):
    EVENT_TYPE = "subscription.cancelled"
    event_type: Literal["subscription.cancelled"]
    data: SubscriptionCancelledData

    @model_validator(mode="after")
    def _default_effective_at(self) -> SubscriptionCancelled:
        if self.data.effective_at is None:
            object.__setattr__(
                self, "data", self.data.model_copy(update={"effective_at": self.occurred_at})
            )
        return self


@struct_model_validator("_default_effective_at")
def _default_effective_at_of_struct(event: Any) -> None:
    """``SubscriptionCancelled._default_effective_at`` on the compiled struct."""
    if event.data.effective_at is None:
        event.data.effective_at = event.occurred_at


InboundEvent = SubscriptionCreated | InvoicePaid | SubscriptionCancelled

INBOUND_EVENT_TYPES: dict[str, type[SubscriptionCreated | InvoicePaid | SubscriptionCancelled]] = {
    model.EVENT_TYPE: model for model in (SubscriptionCreated, InvoicePaid, SubscriptionCancelled)
}

#: The same models compiled to msgspec decoders (``compiled``), by event type.
INBOUND_DECODERS: dict[str, CompiledModel] = {
    event_type: compile_model(model) for event_type, model in INBOUND_EVENT_TYPES.items()
}

"""Events billing publishes: subscription.created, invoice.paid, subscription.cancelled."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, StringConstraints, model_validator

from referral_events.envelope import BusinessTime, Data, Envelope, nonblank

Identifier = Annotated[str, StringConstraints(max_length=200), AfterValidator(nonblank)]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
# strict: money arrives as a JSON integer; "100" or 100.0 is a wrong type, not coerced.
Cents = Annotated[int, Field(ge=0, le=10**12, strict=True)]


class Customer(Data):
    """Who the subscriber is, as far as the eligibility rules need to know."""

    email: Annotated[str, StringConstraints(max_length=320)] | None = None
    organization_id: Identifier | None = None
    payment_fingerprint: Identifier | None = None


class SubscriptionCreatedData(Data):
    account_id: Identifier
    subscription_id: Identifier
    plan_family: Identifier
    plan_id: Identifier
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
    reason: Annotated[str, StringConstraints(max_length=500)] | None = None


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


InboundEvent = SubscriptionCreated | InvoicePaid | SubscriptionCancelled

INBOUND_EVENT_TYPES: dict[str, type[SubscriptionCreated | InvoicePaid | SubscriptionCancelled]] = {
    model.EVENT_TYPE: model for model in (SubscriptionCreated, InvoicePaid, SubscriptionCancelled)
}

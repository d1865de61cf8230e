"""Events finance's payout pipeline publishes back: payout.paid and payout.failed.

Both travel on one topic (``finance.payout.status``), keyed by the referrer
account of the ``payout.due`` they answer. ``payout_id`` and ``attempt`` are
copied from that ``payout.due``; ``event_id`` is unique per report (a redelivery
of the same report carries the same one).
"""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

from pydantic import AfterValidator, Field, StringConstraints

from referral_events.envelope import BusinessTime, Data, Envelope, nonblank
from referral_events.inbound import Cents, Currency

#: The attempt of a payout: 1 for the scheduler's ``payout.due``, then 2, 3, ... per re-issue.
Attempt = Annotated[int, Field(ge=1, le=1000, strict=True)]
#: Finance's own identifiers and free text: bounded, never blank.
FinanceText = Annotated[str, StringConstraints(max_length=200), AfterValidator(nonblank)]


class PayoutPaidData(Data):
    payout_id: UUID = Field(description="The `payout_id` of the `payout.due` that was paid.")
    attempt: Attempt = Field(description="The `attempt` of that `payout.due`.")
    paid_at: BusinessTime = Field(description="When the money left, RFC 3339 with an offset.")
    amount_cents: Cents = Field(
        description="What was paid, in integer cents; must equal the `payout.due` amount."
    )
    currency: Currency = Field(description="ISO 4217; must equal the `payout.due` currency.")
    reference: FinanceText = Field(
        description="Finance's own id of the transfer (shown to support and the referrer)."
    )


class PayoutFailedData(Data):
    payout_id: UUID = Field(description="The `payout_id` of the `payout.due` that failed.")
    attempt: Attempt = Field(description="The `attempt` of that `payout.due`.")
    failed_at: BusinessTime = Field(description="When the payment failed, RFC 3339.")
    reason: FinanceText = Field(
        description="Why, for support: e.g. `payee_details_missing`, `rejected_by_bank`."
    )


class PayoutPaid(Envelope):
    EVENT_TYPE = "payout.paid"
    event_type: Literal["payout.paid"]
    data: PayoutPaidData


class PayoutFailed(Envelope):
    EVENT_TYPE = "payout.failed"
    event_type: Literal["payout.failed"]
    data: PayoutFailedData


PayoutStatusEvent = PayoutPaid | PayoutFailed

#: The event types of finance's status topic and the model of each.
PAYOUT_STATUS_EVENT_TYPES: dict[str, type[PayoutPaid | PayoutFailed]] = {
    model.EVENT_TYPE: model for model in (PayoutPaid, PayoutFailed)
}

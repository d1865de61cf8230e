"""The wire contract of the referral program (docs/rules.md), version 1.

Inbound events come from billing, and from finance (payout status); outbound events
are published by this project.
Every model ignores unknown fields (forward compatible) and rejects a
``schema_version`` newer than it knows.
"""

from referral_events.envelope import SUPPORTED_SCHEMA_VERSION, Envelope, UnsupportedSchemaVersion
from referral_events.finance import (
    PAYOUT_STATUS_EVENT_TYPES,
    PayoutFailed,
    PayoutFailedData,
    PayoutPaid,
    PayoutPaidData,
    PayoutStatusEvent,
)
from referral_events.inbound import (
    INBOUND_EVENT_TYPES,
    Customer,
    InboundEvent,
    InvoicePaid,
    InvoicePaidData,
    SubscriptionCancelled,
    SubscriptionCancelledData,
    SubscriptionCreated,
    SubscriptionCreatedData,
)
from referral_events.outbound import (
    DLQ_HEADERS,
    DeadLetterReason,
    PayoutDue,
    PayoutDueData,
    PayoutDueEncoder,
    ReferralCodeAssigned,
    ReferralCodeAssignedData,
    ReferralCreditEarned,
    ReferralCreditEarnedData,
    payout_due_json,
)

__all__ = [
    "DLQ_HEADERS",
    "INBOUND_EVENT_TYPES",
    "PAYOUT_STATUS_EVENT_TYPES",
    "SUPPORTED_SCHEMA_VERSION",
    "Customer",
    "DeadLetterReason",
    "Envelope",
    "InboundEvent",
    "InvoicePaid",
    "InvoicePaidData",
    "PayoutDue",
    "PayoutDueData",
    "PayoutDueEncoder",
    "PayoutFailed",
    "PayoutFailedData",
    "PayoutPaid",
    "PayoutPaidData",
    "PayoutStatusEvent",
    "ReferralCodeAssigned",
    "ReferralCodeAssignedData",
    "ReferralCreditEarned",
    "ReferralCreditEarnedData",
    "SubscriptionCancelled",
    "SubscriptionCancelledData",
    "SubscriptionCreated",
    "SubscriptionCreatedData",
    "UnsupportedSchemaVersion",
    "payout_due_json",
]

"""Free text of a billing event, made storable: cut or cleaned, never a reason to refuse it.

Pure. Text that carries no money (a plan id, a cancellation's reason, the local
part of an email) must not cost an event its money facts (docs/rules.md, bad
input): a NUL character, which Postgres cannot store, is removed, and text over
its limit is cut. What was changed is returned as :class:`Amendment` values,
field and action only, so that it can be counted and logged without the text.
"""

from __future__ import annotations

from typing import Any, NamedTuple, TypeAlias

from referral_events import InvoicePaid, SubscriptionCancelled, SubscriptionCreated
from referral_events.inbound import (
    CANCELLATION_REASON_MAX_CHARS,
    EMAIL_MAX_CHARS,
    NUL,
    PLAN_ID_MAX_CHARS,
)

#: A billing event as the consumer holds it: the struct its model compiles to
#: (``referral_events.compiled``), with the model's fields; typed as the model it reads like.
BillingEvent: TypeAlias = SubscriptionCreated | InvoicePaid | SubscriptionCancelled

#: Actions: NUL characters removed; text over its limit cut to it (an address over the
#: limit keeps only its domain, as every address does once stored).
NUL_REMOVED, CUT = "nul_removed", "cut"


class Amendment(NamedTuple):
    """One change made to an event's free text."""

    field: str  # dotted path in the event, as dead-letter details name fields
    action: str  # NUL_REMOVED or CUT


def amend(event: BillingEvent) -> tuple[Amendment, ...]:
    """Make ``event``'s free text storable, in place; returns what was changed (empty: nothing).

    ``event`` is a freshly decoded struct (``referral_events.compiled``) that nothing else
    holds yet.
    """
    event_type = event.event_type
    if event_type == SubscriptionCreated.EVENT_TYPE:
        data: Any = event.data
        plan_id, changed = _clean("data.plan_id", data.plan_id, PLAN_ID_MAX_CHARS)
        email = data.customer.email
        if email is not None:
            # Only the domain is ever kept (the schema refuses one that cannot be stored).
            if NUL in email.rpartition("@")[0]:
                changed += (Amendment("data.customer.email", NUL_REMOVED),)
            if len(email) > EMAIL_MAX_CHARS:
                changed += (Amendment("data.customer.email", CUT),)
        if plan_id is not data.plan_id:
            data.plan_id = plan_id
        return changed
    if event_type == SubscriptionCancelled.EVENT_TYPE and event.data.reason is not None:
        data = event.data
        reason, changed = _clean("data.reason", data.reason, CANCELLATION_REASON_MAX_CHARS)
        if reason is not data.reason:
            data.reason = reason
        return changed
    return ()


def _clean(field: str, text: str, limit: int) -> tuple[str, tuple[Amendment, ...]]:
    """``text`` without NULs and cut to ``limit`` characters (the same object when unchanged)."""
    changed: tuple[Amendment, ...] = ()
    if NUL in text:
        text = text.replace(NUL, "")
        changed += (Amendment(field, NUL_REMOVED),)
    if len(text) > limit:
        text = text[:limit]
        changed += (Amendment(field, CUT),)
    return text, changed

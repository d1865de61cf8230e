"""The payout decision for one referral: due, forfeited or ineligible, from facts alone.

A decision depends only on facts whose business time is before the start of
``eligible_on`` (docs/rules.md: which facts count) and never on when the scheduler runs: ``as_of``
only says whether the referral is decidable yet. Money is in the program
currency, which the caller passes in (docs/rules.md: amount and currency).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import NamedTuple
from uuid import UUID
from zoneinfo import ZoneInfo

from referral_program import calendar
from referral_program.attribution import PartnerPeriod, partner_at
from referral_program.table import REWARD_CENTS, Forfeit, Ineligible, Outcome, Status, best_family

#: Namespace of the deterministic ``payout_id``; changing it would re-pay every referral.
PAYOUT_NAMESPACE = uuid.UUID("6f1c9a52-3d7e-4b8a-9c1e-2a5b7d9e0f13")


class Cancellation(NamedTuple):
    """One ``subscription.cancelled`` fact: when it was recorded and when service ends."""

    cancelled_at: datetime  # business time the cancellation event occurred
    effective_at: datetime  # when service ends


class SubscriptionSpan(NamedTuple):
    """One referee subscription as the decision sees it; all datetimes tz-aware business time.

    A subscription may carry several cancellations (billing can re-send one with
    another ``effective_at``): ``cancelled_at``/``effective_at`` hold one of them
    and ``cancellations`` any others, in any order. Of those recorded before the
    eligibility instant, the earliest ``effective_at`` decides.
    """

    subscription_id: str
    plan_family: str
    created_at: datetime
    cancelled_at: datetime | None  # business time the cancellation event occurred
    effective_at: datetime | None  # when service ends
    cancellations: tuple[Cancellation, ...] = ()


class ReferralFacts(NamedTuple):
    """Everything the decision needs about one referral, as recorded by the consumer."""

    referral_id: UUID
    referrer_account_id: str
    referee_account_id: str
    referral_code: str
    status: str  # a table.Status value
    reason: str | None  # the consumer's table.Ineligible reason when status is INELIGIBLE
    first_payment_at: datetime | None
    referrer_partner_periods: tuple[PartnerPeriod, ...]  # usually none
    payee: str | None  # support's override; None = the referrer account itself
    subscriptions: tuple[SubscriptionSpan, ...]  # the referee's subscriptions, any order


class Decision(NamedTuple):
    """The one-and-only outcome for a referral; ``amount_cents`` > 0 exactly when due."""

    referral_id: UUID
    payout_id: UUID
    outcome: Outcome
    reason: str | None  # a table.Ineligible or table.Forfeit value; None when due
    plan_family: str | None  # the family that earns the reward; None unless due
    amount_cents: int
    currency: str  # the program currency
    payee: str
    first_payment_at: datetime
    eligible_on: date
    pay_by: date


class FactRows(NamedTuple):
    """The facts of a chunk of referrals as columns, one row per fact of a subscription.

    Each referral has one row per (qualifying subscription of its referee,
    cancellation of that subscription): the referral's own columns repeat on
    each, a subscription without a cancellation has one row whose cancellation
    columns are None, and a referee without a qualifying subscription one row
    whose subscription columns are None. A referral's rows are adjacent. The
    same facts as a sequence of :class:`ReferralFacts`, in the shape a store
    reads them in one query: :func:`decide_rows` decides them without a record
    per referral.
    """

    referral_id: Sequence[UUID]
    referrer_account_id: Sequence[str]
    referee_account_id: Sequence[str]
    referral_code: Sequence[str]
    status: Sequence[str]
    reason: Sequence[str | None]
    first_payment_at: Sequence[datetime | None]
    referrer_partner_periods: Sequence[tuple[PartnerPeriod, ...]]
    payee: Sequence[str | None]
    subscription_id: Sequence[str | None]
    plan_family: Sequence[str | None]
    created_at: Sequence[datetime | None]
    cancelled_at: Sequence[datetime | None]
    effective_at: Sequence[datetime | None]


class Ruling(NamedTuple):
    """What a decision says apart from whose it is: many referrals of a chunk share one."""

    outcome: Outcome
    reason: str | None
    plan_family: str | None
    amount_cents: int
    currency: str
    eligible_on: date
    pay_by: date


class ChunkDecisions(NamedTuple):
    """The decisions of a chunk of :class:`FactRows`, as columns.

    Decision ``k`` is of the referral whose rows start at ``row[k]``, says
    ``rulings[ruling[k]]`` and pays ``payee[k]`` under the payout id whose text is
    ``payout_id[k]``;
    referrals that are not decidable yet have none. :meth:`decision` is the
    same decision as :func:`decide` returns it.
    """

    rulings: list[Ruling]
    row: list[int]
    ruling: list[int]
    payout_id: list[str]  # as payout_id_text writes it
    payee: list[str]

    def decision(self, k: int, facts: FactRows) -> Decision:
        """Decision ``k`` as a :class:`Decision`."""
        r = self.rulings[self.ruling[k]]
        first_payment_at = facts.first_payment_at[self.row[k]]
        assert first_payment_at is not None  # only referrals with a first payment are decided
        return Decision(
            facts.referral_id[self.row[k]],
            UUID(self.payout_id[k]),
            r.outcome,
            r.reason,
            r.plan_family,
            r.amount_cents,
            r.currency,
            self.payee[k],
            first_payment_at,
            r.eligible_on,
            r.pay_by,
        )


# The records above are named tuples rather than frozen dataclasses: a pass builds
# several per referral, and a named tuple is the cheaper immutable record.

_PAYOUT_NAME_PREFIX = PAYOUT_NAMESPACE.bytes + b"payout:"
_VARIANT_DIGITS = "89ab"  # RFC 4122 variant: the top two bits of the 17th hex digit are 10


def payout_id_for(referral_id: UUID) -> UUID:
    """The payout id of a referral: the same on every run, replica and redelivery.

    ``uuid5(PAYOUT_NAMESPACE, f"payout:{referral_id}")``; :func:`payout_id_text` is its text.
    """
    return UUID(payout_id_text(referral_id))


def payout_id_text(referral_id: UUID) -> str:
    """The text of :func:`payout_id_for`, derived straight from the SHA-1 digest: a pass
    derives 10^5 of them, and writes them as text (to the database and into messages)."""
    h = hashlib.sha1(_PAYOUT_NAME_PREFIX + str(referral_id).encode()).hexdigest()
    variant = _VARIANT_DIGITS[int(h[16], 16) & 3]
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{variant}{h[17:20]}-{h[20:32]}"


def decidable_before(as_of: date, tz: ZoneInfo, settle_days: int = 1) -> datetime:
    """The instant such that a first payment strictly before it is decidable on ``as_of``.

    The inverse of :func:`decide`'s wait: ``decide`` returns a decision exactly
    when ``first_payment_at < decidable_before(as_of, tz, settle_days)``. It is
    the start, in ``tz``, of the month two months before the month of
    ``as_of - settle_days`` (2027-04-02, settle 1 → 2027-02-01T00:00 in ``tz``), so
    a store can select the decidable referrals without deciding the others.
    """
    if settle_days < 0:
        raise ValueError(f"settle_days must be >= 0, got {settle_days}")
    latest = as_of - timedelta(days=settle_days)
    months = latest.year * 12 + (latest.month - 1) - (calendar.MONTHS_UNTIL_ELIGIBLE - 1)
    return calendar.eligibility_instant(date(months // 12, months % 12 + 1, 1), tz)


def decide(
    facts: ReferralFacts, as_of: date, tz: ZoneInfo, settle_days: int = 1, *, currency: str
) -> Decision | None:
    """Decide a referral's payout, or return None when it is not decidable on ``as_of``.

    Not decidable: no first payment yet, or ``as_of`` is before ``eligible_on``
    plus ``settle_days`` calendar days (the wait for late events). Once
    decidable, the result is the same for every later ``as_of`` and for any
    order of ``facts.subscriptions``.

    In order: a referral the consumer found ineligible stays so with its
    reason; a referrer who was a partner at the start of ``eligible_on`` is
    ``partner_ineligible``; otherwise the referral is due if at least one
    qualifying subscription is active at the start of ``eligible_on`` (the
    largest reward among active families wins), else forfeited. The amount is
    the program's reward, in the program ``currency``, whatever the referee
    is billed in.
    """
    if settle_days < 0:
        raise ValueError(f"settle_days must be >= 0, got {settle_days}")
    first_payment_at = facts.first_payment_at
    if first_payment_at is None:
        return None
    eligible = calendar.eligible_on(first_payment_at, tz)
    if (as_of - eligible).days < settle_days:
        return None

    outcome, reason, family = _outcome(facts, calendar.eligibility_instant_utc(eligible, tz))
    # Positional, in field order: a pass builds 10^5 of these.
    return Decision(
        facts.referral_id,
        payout_id_for(facts.referral_id),
        outcome,
        reason,
        family,
        REWARD_CENTS[family] if family is not None else 0,
        currency,
        facts.payee if facts.payee is not None else facts.referrer_account_id,
        first_payment_at,
        eligible,
        calendar.pay_by(eligible),
    )


def _outcome(facts: ReferralFacts, eligible_at: datetime) -> tuple[Outcome, str | None, str | None]:
    if facts.status == Status.INELIGIBLE:
        return Outcome.INELIGIBLE, facts.reason, None
    if facts.referrer_partner_periods and partner_at(facts.referrer_partner_periods, eligible_at):
        return Outcome.INELIGIBLE, Ineligible.PARTNER, None

    held_before = [
        span
        for span in facts.subscriptions
        if REWARD_CENTS.get(span.plan_family, 0) > 0 and span.created_at < eligible_at
    ]
    if not held_before:
        return Outcome.FORFEITED, Forfeit.NO_QUALIFYING_PLAN, None
    active = {span.plan_family for span in held_before if _active_at(span, eligible_at)}
    if not active:
        return Outcome.FORFEITED, Forfeit.CANCELLED_BEFORE_ELIGIBILITY, None
    if len(active) == 1:  # the usual case
        return Outcome.DUE, None, active.pop()
    return Outcome.DUE, None, best_family(active)


def _active_at(span: SubscriptionSpan, instant: datetime) -> bool:
    """Still in service at ``instant``, judged only on what was known before it."""
    if _ended_by(span.cancelled_at, span.effective_at, instant):
        return False
    return not (
        span.cancellations
        and any(_ended_by(c.cancelled_at, c.effective_at, instant) for c in span.cancellations)
    )


def _ended_by(
    cancelled_at: datetime | None, effective_at: datetime | None, instant: datetime
) -> bool:
    """A cancellation known before ``instant`` that ends service at or before it."""
    if effective_at is None:
        return False
    if cancelled_at is not None and cancelled_at >= instant:
        # Cancelled on or after the eligibility instant: a later fact, ignored (docs/rules.md).
        return False
    return effective_at <= instant


def decide_rows(
    facts: FactRows, as_of: date, tz: ZoneInfo, settle_days: int = 1, *, currency: str
) -> ChunkDecisions:
    """:func:`decide` for every referral of ``facts``, without a record per referral.

    The same rules, applied to columns: each referral is decided exactly as
    :func:`decide` decides its :class:`ReferralFacts` (a property test holds the
    two to it). What a referral's first-payment month implies (``eligible_on``,
    its first instant, ``pay_by``, decidable or not) is worked out once per month
    of the chunk, and the local month of a first payment is found by comparing
    it with the first instants of its UTC month and the next.
    """
    if settle_days < 0:
        raise ValueError(f"settle_days must be >= 0, got {settle_days}")
    ids = facts.referral_id
    statuses, reasons, payments = facts.status, facts.reason, facts.first_payment_at
    partner_periods, payees, referrers = (
        facts.referrer_partner_periods,
        facts.payee,
        facts.referrer_account_id,
    )
    subscriptions, families, created = facts.subscription_id, facts.plan_family, facts.created_at
    cancelled, effective = facts.cancelled_at, facts.effective_at
    month_starts: dict[int, datetime] = {}  # month number -> its first instant in tz, in UTC
    months: dict[int, _Month | None] = {}  # month of a first payment -> None if not decidable
    rulings: dict[tuple[int, Outcome, str | None, str | None], int] = {}
    decided = ChunkDecisions([], [], [], [], [])

    def month_start(number: int) -> datetime:
        start = month_starts.get(number)
        if start is None:
            start = calendar.eligibility_instant_utc(date(number // 12, number % 12 + 1, 1), tz)
            month_starts[number] = start
        return start

    def month_of(number: int) -> _Month | None:
        eligible = calendar.eligible_on(month_start(number), tz)
        if (as_of - eligible).days < settle_days:
            return None
        return _Month(
            eligible, calendar.eligibility_instant_utc(eligible, tz), calendar.pay_by(eligible)
        )

    n = len(ids)
    start = 0
    while start < n:
        referral_id = ids[start]
        end = start + 1
        while end < n and ids[end] == referral_id:
            end += 1
        paid = payments[start]
        if paid is None:
            start = end
            continue
        if paid.tzinfo is not UTC:
            if paid.utcoffset() is None:
                raise ValueError(f"first_payment_at must be tz-aware, got {paid!r}")
            paid = paid.astimezone(UTC)
        number = paid.year * 12 + paid.month - 1  # its UTC month; in tz, this one or a neighbour
        if paid < month_start(number):
            number -= 1
        elif paid >= month_start(number + 1):
            number += 1
        if number in months:
            month = months[number]
        else:
            month = months[number] = month_of(number)
        if month is None:
            start = end
            continue
        eligible_at = month.eligible_at

        family: str | None = None
        if statuses[start] == Status.INELIGIBLE:
            outcome, reason = Outcome.INELIGIBLE, reasons[start]
        elif partner_periods[start] and partner_at(partner_periods[start], eligible_at):
            outcome, reason = Outcome.INELIGIBLE, Ineligible.PARTNER
        elif end - start == 1:  # the usual: one subscription, at most one cancellation
            family = families[start]
            created_at = created[start]
            if (
                family is None
                or REWARD_CENTS.get(family, 0) <= 0
                or created_at is None
                or not created_at < eligible_at
            ):
                outcome, reason, family = Outcome.FORFEITED, Forfeit.NO_QUALIFYING_PLAN, None
            elif _ended_by(cancelled[start], effective[start], eligible_at):
                outcome, reason, family = (
                    Outcome.FORFEITED,
                    Forfeit.CANCELLED_BEFORE_ELIGIBILITY,
                    None,
                )
            else:
                outcome, reason = Outcome.DUE, None
        else:
            held: dict[str, str] = {}  # subscription held before eligible_at -> its family
            ended: set[str] = set()
            for i in range(start, end):
                subscription, held_family, created_at = subscriptions[i], families[i], created[i]
                if (
                    subscription is None
                    or held_family is None
                    or REWARD_CENTS.get(held_family, 0) <= 0
                    or created_at is None
                    or not created_at < eligible_at
                ):
                    continue
                held[subscription] = held_family
                if _ended_by(cancelled[i], effective[i], eligible_at):
                    ended.add(subscription)
            active = {f for s, f in held.items() if s not in ended}
            if not held:
                outcome, reason = Outcome.FORFEITED, Forfeit.NO_QUALIFYING_PLAN
            elif not active:
                outcome, reason = Outcome.FORFEITED, Forfeit.CANCELLED_BEFORE_ELIGIBILITY
            else:
                outcome, reason, family = Outcome.DUE, None, best_family(active)

        key = (number, outcome, reason, family)
        ruling = rulings.get(key)
        if ruling is None:
            ruling = rulings[key] = len(decided.rulings)
            decided.rulings.append(
                Ruling(
                    outcome,
                    reason,
                    family,
                    REWARD_CENTS[family] if family is not None else 0,
                    currency,
                    month.eligible_on,
                    month.pay_by,
                )
            )
        payee = payees[start]
        decided.row.append(start)
        decided.ruling.append(ruling)
        decided.payout_id.append(payout_id_text(referral_id))
        decided.payee.append(payee if payee is not None else referrers[start])
        start = end
    return decided


class _Month(NamedTuple):
    """What a first payment in one month implies, once it is decidable."""

    eligible_on: date
    eligible_at: datetime  # the first instant of eligible_on, in UTC
    pay_by: date

"""Due dates of a cash reward, counted from the referee's first payment in program time."""

from __future__ import annotations

import functools
from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo

from referral_program.business_days import nth_business_day

#: Cash becomes due in the third calendar month after the month of the first payment.
MONTHS_UNTIL_ELIGIBLE = 3
#: ...and must be paid by this business day of that month.
PAY_BY_BUSINESS_DAY = 15


def first_payment_month(first_payment_at: datetime, tz: ZoneInfo) -> date:
    """The 1st of the month, in the program time zone ``tz``, in which the first payment fell.

    ``first_payment_at`` must be tz-aware (any offset); a naive datetime raises ``ValueError``
    because its month would be a guess.
    """
    if first_payment_at.utcoffset() is None:
        raise ValueError(f"first_payment_at must be tz-aware, got {first_payment_at!r}")
    return first_payment_at.astimezone(tz).date().replace(day=1)


def eligible_on(first_payment_at: datetime, tz: ZoneInfo) -> date:
    """The 1st of the third calendar month after the first payment's month (program time).

    2027-01-17 → 2027-04-01; 2027-11-30 → 2028-02-01.
    """
    month = first_payment_month(first_payment_at, tz)
    return _eligible_on(month.year, month.month)


@functools.lru_cache(maxsize=512)
def _eligible_on(year: int, month: int) -> date:
    months = year * 12 + (month - 1) + MONTHS_UNTIL_ELIGIBLE
    return date(months // 12, months % 12 + 1, 1)


@functools.lru_cache(maxsize=512)
def eligibility_instant(eligible_on: date, tz: ZoneInfo) -> datetime:
    """The first instant of ``eligible_on`` in ``tz``, tz-aware: when "still active" is judged.

    Normally local midnight. In a zone whose clocks skip midnight, it is the
    first wall time that exists that day (the round trip through UTC resolves
    the gap to the transition instant).
    """
    local_midnight = datetime.combine(eligible_on, time(0), tzinfo=tz)
    return local_midnight.astimezone(UTC).astimezone(tz)


@functools.lru_cache(maxsize=512)
def eligibility_instant_utc(eligible_on: date, tz: ZoneInfo) -> datetime:
    """:func:`eligibility_instant` in UTC: the same instant, and aware datetimes that share
    a tzinfo compare without time zone lookups (a pass compares 10^5 facts with it)."""
    return eligibility_instant(eligible_on, tz).astimezone(UTC)


@functools.lru_cache(maxsize=512)
def pay_by(eligible_on: date) -> date:
    """The 15th business day of the month that starts on ``eligible_on`` (itself counted)."""
    return nth_business_day(eligible_on, PAY_BY_BUSINESS_DAY)

"""Business days: weekdays that are not US federal holidays (observed dates included)."""

from __future__ import annotations

import functools
from datetime import date, timedelta

import holidays

_SATURDAY = 5


@functools.lru_cache(maxsize=64)
def _federal_holidays(year: int) -> frozenset[date]:
    # A frozen snapshot: the holidays object grows itself on lookups, so sharing
    # it through a cache would make the cache mutable state.
    observed = holidays.country_holidays("US", years=year, observed=True)
    return frozenset(observed.keys())


def load_holidays(year: int) -> None:
    """Load the US federal holidays of ``year`` now rather than on first use.

    The holidays package imports its calendars lazily (a fraction of a second, once
    per process); a scheduler calls this as it starts, so that its first decision
    pass does not wait for it halfway through a chunk.
    """
    _federal_holidays(year)


def is_business_day(day: date) -> bool:
    """True when ``day`` is a weekday and not a US federal holiday or its observed date.

    A holiday falling on a weekend moves its day off to the nearest weekday
    (Saturday → Friday, Sunday → Monday), and that weekday is not a business day.
    """
    return day.weekday() < _SATURDAY and day not in _federal_holidays(day.year)


def nth_business_day(month_start: date, n: int) -> date:
    """The ``n``-th business day (1-based) of the month that begins on ``month_start``.

    ``month_start`` itself counts if it is a business day. Raises ``ValueError``
    if ``month_start`` is not the 1st, ``n`` < 1, or the month has fewer than
    ``n`` business days.
    """
    if month_start.day != 1:
        raise ValueError(f"month_start must be the 1st of a month, got {month_start}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    day = month_start
    seen = 0
    while day.month == month_start.month:
        if is_business_day(day):
            seen += 1
            if seen == n:
                return day
        day += timedelta(days=1)
    raise ValueError(f"{month_start:%Y-%m} has fewer than {n} business days")


def business_day_horizon(today: date, n: int) -> date:
    """The date of the ``n``-th business day strictly after ``today`` (``today`` for ``n`` = 0).

    "Due within the next 3 business days" is ``pay_by <= business_day_horizon(today, 3)``:
    on a Friday before a normal weekend that reaches the following Wednesday.
    Raises ``ValueError`` for a negative ``n``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    day = today
    remaining = n
    while remaining:
        day += timedelta(days=1)
        if is_business_day(day):
            remaining -= 1
    return day

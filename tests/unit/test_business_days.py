"""Business days: weekends and US federal holidays (observed dates included) are off.

Expected dates are counted by hand on a calendar; the comments show the count.
"""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from referral_program.business_days import (
    business_day_horizon,
    is_business_day,
    nth_business_day,
)

months = st.builds(
    date, st.integers(min_value=2024, max_value=2035), st.integers(min_value=1, max_value=12),
    st.just(1),
)  # fmt: skip
days = st.dates(min_value=date(2024, 1, 1), max_value=date(2035, 12, 31))


@pytest.mark.parametrize(
    ("day", "expected"),
    [
        (date(2027, 4, 1), True),  # Thursday, no holiday
        (date(2027, 4, 3), False),  # Saturday
        (date(2027, 4, 4), False),  # Sunday
        (date(2027, 1, 1), False),  # New Year's Day, Friday
        (date(2027, 1, 18), False),  # Martin Luther King Jr. Day
        (date(2027, 2, 15), False),  # Washington's Birthday
        (date(2027, 5, 31), False),  # Memorial Day
        (date(2027, 6, 18), False),  # Juneteenth (Sat 19th) observed Friday
        (date(2027, 7, 4), False),  # Independence Day, a Sunday
        (date(2027, 7, 5), False),  # ...observed Monday
        (date(2027, 7, 6), True),
        (date(2026, 7, 3), False),  # Independence Day (Sat 4th) observed Friday
        (date(2026, 7, 2), True),
        (date(2027, 9, 6), False),  # Labor Day
        (date(2027, 10, 11), False),  # Columbus Day
        (date(2027, 11, 11), False),  # Veterans Day, Thursday
        (date(2028, 11, 10), False),  # Veterans Day (Sat 11th) observed Friday
        (date(2027, 11, 25), False),  # Thanksgiving, fourth Thursday
        (date(2027, 11, 26), True),  # the Friday after is a business day
        (date(2027, 12, 24), False),  # Christmas (Sat 25th) observed Friday
        (date(2027, 12, 31), False),  # New Year's Day 2028 (Sat) observed Friday
        (date(2028, 1, 1), False),  # the Saturday itself
        (date(2028, 1, 3), True),
        (date(2022, 12, 26), False),  # Christmas (Sun 25th) observed Monday
    ],
)
def test_is_business_day(day: date, expected: bool) -> None:
    assert is_business_day(day) is expected


@pytest.mark.parametrize(
    ("month_start", "n", "expected"),
    [
        # Thu 1st is a business day and counts itself.
        (date(2027, 4, 1), 1, date(2027, 4, 1)),
        # Fri 1st is New Year's Day: first business day is Mon 4th.
        (date(2027, 1, 1), 1, date(2027, 1, 4)),
        # Sun 1st: counting starts Mon 2nd.
        (date(2027, 8, 1), 1, date(2027, 8, 2)),
        # Sat 1st: counting starts Mon 3rd.
        (date(2027, 5, 1), 1, date(2027, 5, 3)),
        # July 2027: 1, 2, (Mon 5 observed), 6, 7, 8, 9 → 6th business day is Fri 9th.
        (date(2027, 7, 1), 6, date(2027, 7, 9)),
        # Nov 2027: 15th is Mon 22nd; 16 Tue 23, 17 Wed 24, Thanksgiving Thu 25, 18 Fri 26.
        (date(2027, 11, 1), 17, date(2027, 11, 24)),
        (date(2027, 11, 1), 18, date(2027, 11, 26)),
        # Last business day of Nov 2027 is the 20th: Tue 30th.
        (date(2027, 11, 1), 20, date(2027, 11, 30)),
    ],
)
def test_nth_business_day(month_start: date, n: int, expected: date) -> None:
    assert nth_business_day(month_start, n) == expected


def test_nth_business_day_beyond_the_month_is_an_error() -> None:
    with pytest.raises(ValueError, match="fewer than 21"):
        nth_business_day(date(2027, 11, 1), 21)


@pytest.mark.parametrize(("month_start", "n"), [(date(2027, 4, 2), 1), (date(2027, 4, 1), 0)])
def test_nth_business_day_rejects_bad_arguments(month_start: date, n: int) -> None:
    with pytest.raises(ValueError):
        nth_business_day(month_start, n)


@pytest.mark.parametrize(
    ("today", "n", "expected"),
    [
        (date(2027, 4, 14), 0, date(2027, 4, 14)),
        (date(2027, 4, 3), 0, date(2027, 4, 3)),  # n = 0 is today, business day or not
        (date(2027, 4, 14), 1, date(2027, 4, 15)),  # Wed → Thu
        (date(2027, 4, 16), 3, date(2027, 4, 21)),  # Fri → Mon 19, Tue 20, Wed 21
        (date(2027, 4, 17), 1, date(2027, 4, 19)),  # from a Saturday
        (date(2027, 11, 24), 3, date(2027, 11, 30)),  # Thanksgiving: Fri 26, Mon 29, Tue 30
        (date(2027, 7, 2), 1, date(2027, 7, 6)),  # over the observed July 4th
        (date(2027, 12, 23), 3, date(2027, 12, 29)),  # Fri 24 observed: Mon 27, 28, 29
        # Across the year, past the observed New Year's Day on Fri Dec 31: Thu 30, Mon 3, Tue 4.
        (date(2027, 12, 29), 3, date(2028, 1, 4)),
    ],
)
def test_business_day_horizon(today: date, n: int, expected: date) -> None:
    assert business_day_horizon(today, n) == expected


def test_a_month_can_have_fewer_than_19_business_days() -> None:
    assert nth_business_day(date(2031, 11, 1), 18) == date(2031, 11, 28)
    with pytest.raises(ValueError, match="2031-11 has fewer than 19 business days"):
        nth_business_day(date(2031, 11, 1), 19)


def test_business_day_horizon_rejects_negative_n() -> None:
    with pytest.raises(ValueError):
        business_day_horizon(date(2027, 4, 1), -1)


@settings(deadline=None)
@given(month_start=months, n=st.integers(min_value=1, max_value=23))
def test_nth_business_day_is_the_nth_business_day_of_its_month(month_start: date, n: int) -> None:
    month_days = [month_start + timedelta(days=i) for i in range(31)]
    in_month = sum(is_business_day(d) for d in month_days if d.month == month_start.month)
    if n > in_month:  # e.g. November 2031: 18 (a Saturday 1st, Veterans Day, Thanksgiving)
        with pytest.raises(ValueError, match="fewer than"):
            nth_business_day(month_start, n)
        return
    day = nth_business_day(month_start, n)
    assert (day.year, day.month) == (month_start.year, month_start.month)
    assert is_business_day(day)
    earlier = [month_start + timedelta(days=i) for i in range(day.day - 1)]
    assert sum(map(is_business_day, earlier)) == n - 1


@settings(deadline=None)
@given(today=days, n=st.integers(min_value=0, max_value=10))
def test_business_day_horizon_counts_n_business_days_after_today(today: date, n: int) -> None:
    horizon = business_day_horizon(today, n)
    between = [today + timedelta(days=i) for i in range(1, (horizon - today).days + 1)]
    assert sum(map(is_business_day, between)) == n
    assert n == 0 or is_business_day(horizon)


def test_holidays_loaded_ahead_leave_nothing_to_import_on_first_use() -> None:
    """A scheduler loads the year's calendar as it starts; its first pass then imports nothing.

    In a fresh interpreter: this one has long imported every calendar.
    """
    import subprocess
    import sys

    check = (
        "import sys\n"
        "from datetime import date\n"
        "from referral_program.business_days import is_business_day, load_holidays\n"
        "{load}"
        "before = set(sys.modules)\n"
        "assert not is_business_day(date(2031, 7, 4))\n"
        "print(len(set(sys.modules) - before))\n"
    )
    run = [sys.executable, "-c"]
    ahead = subprocess.run([*run, check.format(load="load_holidays(2031)\n")], capture_output=True)
    lazily = subprocess.run([*run, check.format(load="")], capture_output=True)
    assert (ahead.returncode, lazily.returncode) == (0, 0), ahead.stderr + lazily.stderr
    assert int(ahead.stdout) == 0
    assert int(lazily.stdout) > 0  # what the first pass would otherwise have waited for

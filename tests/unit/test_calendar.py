"""Due dates: eligible_on, the eligibility instant and pay_by, in program time.

Expected dates are counted by hand; weekdays: 2027-01-01 Fri, 2027-04-01 Thu,
2027-06-01 Tue, 2027-07-01 Thu, 2027-08-01 Sun, 2027-11-01 Mon, 2028-01-01 Sat,
2028-02-01 Tue, 2028-05-01 Mon, 2026-07-01 Wed.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from referral_program.business_days import is_business_day
from referral_program.calendar import (
    eligibility_instant,
    eligible_on,
    first_payment_month,
    pay_by,
)

LA = ZoneInfo("America/Los_Angeles")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


@pytest.mark.parametrize(
    ("first_payment_at", "expected"),
    [
        (datetime(2027, 1, 17, 10, 0, tzinfo=LA), date(2027, 4, 1)),  # the spec's example
        (datetime(2027, 1, 31, 12, 0, tzinfo=LA), date(2027, 4, 1)),  # Jan 31
        (datetime(2028, 2, 29, 12, 0, tzinfo=LA), date(2028, 5, 1)),  # leap day
        (datetime(2027, 11, 30, 12, 0, tzinfo=LA), date(2028, 2, 1)),  # across the year
        (datetime(2027, 10, 5, 12, 0, tzinfo=LA), date(2028, 1, 1)),
        (datetime(2027, 12, 31, 12, 0, tzinfo=LA), date(2028, 3, 1)),
        (datetime(2027, 9, 1, 0, 0, tzinfo=LA), date(2027, 12, 1)),  # first instant of a month
    ],
)
def test_eligible_on_is_the_first_of_the_third_month_after(
    first_payment_at: datetime, expected: date
) -> None:
    assert eligible_on(first_payment_at, LA) == expected


@pytest.mark.parametrize(
    ("first_payment_at", "expected_month", "expected_eligible_on"),
    [
        # 23:30 PST on Jan 31 is already Feb 1 in UTC: the program's month is January.
        (utc(2027, 2, 1, 7, 30), date(2027, 1, 1), date(2027, 4, 1)),
        (datetime(2027, 1, 31, 23, 30, tzinfo=LA), date(2027, 1, 1), date(2027, 4, 1)),
        # Last minute of Feb in PST, and the first of March.
        (utc(2027, 3, 1, 7, 59), date(2027, 2, 1), date(2027, 5, 1)),
        (utc(2027, 3, 1, 8, 0), date(2027, 3, 1), date(2027, 6, 1)),
        # Month ends inside daylight time use -07:00.
        (utc(2027, 4, 1, 6, 59), date(2027, 3, 1), date(2027, 6, 1)),
        (utc(2027, 4, 1, 7, 0), date(2027, 4, 1), date(2027, 7, 1)),
        (utc(2027, 11, 1, 6, 30), date(2027, 10, 1), date(2028, 1, 1)),  # Oct 31 23:30 PDT
        (utc(2027, 12, 1, 7, 30), date(2027, 11, 1), date(2028, 2, 1)),  # Nov 30 23:30 PST
        (utc(2028, 3, 1, 7, 30), date(2028, 2, 1), date(2028, 5, 1)),  # Feb 29 23:30 PST
    ],
)
def test_the_month_is_taken_in_program_time(
    first_payment_at: datetime, expected_month: date, expected_eligible_on: date
) -> None:
    assert first_payment_month(first_payment_at, LA) == expected_month
    assert eligible_on(first_payment_at, LA) == expected_eligible_on


def test_the_program_time_zone_is_a_parameter() -> None:
    late_on_jan_31_pacific = utc(2027, 2, 1, 7, 30)
    assert eligible_on(late_on_jan_31_pacific, LA) == date(2027, 4, 1)
    assert eligible_on(late_on_jan_31_pacific, ZoneInfo("UTC")) == date(2027, 5, 1)


@pytest.mark.parametrize(
    ("switch_day", "expected_eligible_on"),
    [(date(2027, 3, 14), date(2027, 6, 1)), (date(2027, 11, 7), date(2028, 2, 1))],
)
def test_dst_switch_nights_stay_in_their_month(
    switch_day: date, expected_eligible_on: date
) -> None:
    # 06:00Z-13:00Z spans local 22:00-06:00 around the 02:00 switch, minute by minute.
    start = datetime(switch_day.year, switch_day.month, switch_day.day, 6, 0, tzinfo=UTC)
    for minute in range(0, 7 * 60, 7):
        instant = start + timedelta(minutes=minute)
        assert first_payment_month(instant, LA) == switch_day.replace(day=1)
        assert eligible_on(instant, LA) == expected_eligible_on


def test_dst_wall_times_that_are_ambiguous_or_skipped() -> None:
    # 01:30 happens twice on 2027-11-07 (PDT, then PST); both are November.
    first = datetime(2027, 11, 7, 1, 30, fold=0, tzinfo=LA)
    second = datetime(2027, 11, 7, 1, 30, fold=1, tzinfo=LA)
    assert first.utcoffset() != second.utcoffset()
    assert eligible_on(first, LA) == eligible_on(second, LA) == date(2028, 2, 1)
    # 02:30 never happens on 2027-03-14; a timestamp spelled that way is still March.
    skipped = datetime(2027, 3, 14, 2, 30, tzinfo=LA)
    assert eligible_on(skipped, LA) == date(2027, 6, 1)


def test_naive_first_payment_is_rejected() -> None:
    with pytest.raises(ValueError, match="tz-aware"):
        eligible_on(datetime(2027, 1, 17, 12, 0), LA)


@pytest.mark.parametrize(
    ("day", "expected_utc"),
    [
        (date(2027, 4, 1), utc(2027, 4, 1, 7, 0)),  # PDT
        (date(2027, 12, 1), utc(2027, 12, 1, 8, 0)),  # PST
        (date(2027, 3, 14), utc(2027, 3, 14, 8, 0)),  # switch day: midnight is still PST
        (date(2027, 3, 15), utc(2027, 3, 15, 7, 0)),
        (date(2027, 11, 7), utc(2027, 11, 7, 7, 0)),  # switch day: midnight is still PDT
        (date(2027, 11, 8), utc(2027, 11, 8, 8, 0)),
    ],
)
def test_eligibility_instant_is_local_midnight(day: date, expected_utc: datetime) -> None:
    instant = eligibility_instant(day, LA)
    assert instant == expected_utc
    assert instant.tzinfo is not None
    assert (instant.astimezone(LA).date(), instant.astimezone(LA).hour) == (day, 0)


def test_eligibility_instant_where_midnight_is_skipped() -> None:
    # São Paulo sprang forward at 00:00 on 2018-11-04: the day began at 01:00 -02:00.
    instant = eligibility_instant(date(2018, 11, 4), ZoneInfo("America/Sao_Paulo"))
    assert instant == utc(2018, 11, 4, 3, 0)
    assert instant.astimezone(ZoneInfo("America/Sao_Paulo")).hour == 1


@pytest.mark.parametrize(
    ("month_start", "expected"),
    [
        # Apr 2027, Thu 1st, no holidays: 1 2 | 5-9 | 12-16 | 19 20 21 → Wed 21st.
        (date(2027, 4, 1), date(2027, 4, 21)),
        # May 2028, Mon 1st (leap-day payments): 1-5 | 8-12 | 15-19 → Fri 19th.
        (date(2028, 5, 1), date(2028, 5, 19)),
        # Jun 2027, Tue 1st; Juneteenth Sat 19th observed Fri 18th:
        # 1-4 | 7-11 | 14-17, (18), 21, 22 → Tue 22nd.
        (date(2027, 6, 1), date(2027, 6, 22)),
        # Jul 2027, Thu 1st; July 4th Sun observed Mon 5th:
        # 1 2 | (5) 6-9 | 12-16 | 19-22 → Thu 22nd (Wed 21st without the holiday).
        (date(2027, 7, 1), date(2027, 7, 22)),
        # Jul 2026, Wed 1st; July 4th Sat observed Fri 3rd: 1 2 (3) | 6-10 | 13-17 | 20-22.
        (date(2026, 7, 1), date(2026, 7, 22)),
        # Aug 2027 begins on a Sunday: 2-6 | 9-13 | 16-20 → Fri 20th.
        (date(2027, 8, 1), date(2027, 8, 20)),
        # Nov 2027, Mon 1st; Veterans Day Thu 11th; Thanksgiving (25th) comes after:
        # 1-5 | 8 9 10 (11) 12 | 15-19 | 22 → Mon 22nd.
        (date(2027, 11, 1), date(2027, 11, 22)),
        # Dec 2027, Wed 1st; the observed Christmas (Fri 24th) comes after: ... 20 21 → Tue 21st.
        (date(2027, 12, 1), date(2027, 12, 21)),
        # Jan 2028 begins on a Saturday (New Year's observed Dec 31); MLK Mon 17th:
        # 3-7 | 10-14 | (17) 18-21 | 24 → Mon 24th.
        (date(2028, 1, 1), date(2028, 1, 24)),
        # Feb 2028, Tue 1st; Washington's Birthday Mon 21st: 1-4 | 7-11 | 14-18 | (21) 22.
        (date(2028, 2, 1), date(2028, 2, 22)),
    ],
)
def test_pay_by_is_the_15th_business_day(month_start: date, expected: date) -> None:
    assert pay_by(month_start) == expected


def test_due_dates_for_a_payment_late_on_jan_31_pacific() -> None:
    first_payment_at = datetime.fromisoformat("2027-01-31T23:30:00-08:00")
    assert first_payment_at == utc(2027, 2, 1, 7, 30)
    eligible = eligible_on(first_payment_at, LA)
    assert eligible == date(2027, 4, 1)
    assert eligibility_instant(eligible, LA) == utc(2027, 4, 1, 7, 0)
    assert pay_by(eligible) == date(2027, 4, 21)


@settings(deadline=None)
@given(
    st.datetimes(
        min_value=datetime(2024, 1, 1), max_value=datetime(2035, 12, 31), timezones=st.just(UTC)
    )
)
def test_due_dates_are_consistent(first_payment_at: datetime) -> None:
    eligible = eligible_on(first_payment_at, LA)
    local = first_payment_at.astimezone(LA)
    months_later = (eligible.year - local.year) * 12 + eligible.month - local.month
    assert (eligible.day, months_later) == (1, 3)
    instant = eligibility_instant(eligible, LA)
    assert instant > first_payment_at
    assert instant.astimezone(LA).date() == eligible
    assert (instant - timedelta(microseconds=1)).astimezone(LA).date() < eligible
    due = pay_by(eligible)
    # Fifteen business days take at least three weeks.
    assert (due.year, due.month) == (eligible.year, eligible.month)
    assert due.day >= 19
    assert is_business_day(due)

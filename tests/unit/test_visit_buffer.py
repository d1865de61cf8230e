"""Landing visits counted in memory: per code and day, bounded, and kept when a write fails."""

from __future__ import annotations

from datetime import date

from referral_web.visits import VisitBuffer

D1, D2 = date(2027, 1, 1), date(2027, 1, 2)


def test_visits_add_up_per_code_and_day_and_are_taken_once() -> None:
    buffer = VisitBuffer()
    for code, day in [("AAAA1111", D1)] * 3 + [("AAAA1111", D2), ("BBBB2222", D1)]:
        assert buffer.count(code, day)
    assert buffer.visits == 5
    assert buffer.take() == {("AAAA1111", D1): 3, ("AAAA1111", D2): 1, ("BBBB2222", D1): 1}
    assert buffer.take() == {} and buffer.visits == 0


def test_a_failed_write_puts_its_counts_back_beside_the_new_ones() -> None:
    buffer = VisitBuffer()
    buffer.count("AAAA1111", D1)
    taken = buffer.take()
    buffer.count("AAAA1111", D1)
    buffer.put_back(taken)
    assert buffer.take() == {("AAAA1111", D1): 2}


def test_the_buffer_holds_a_bounded_number_of_codes() -> None:
    buffer = VisitBuffer(max_codes=2)
    assert buffer.count("AAAA1111", D1) and buffer.count("BBBB2222", D1)
    assert not buffer.count("CCCC3333", D1)  # a third code is dropped...
    assert buffer.count("AAAA1111", D1)  # ...codes already held still count
    assert buffer.take() == {("AAAA1111", D1): 2, ("BBBB2222", D1): 1}

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from referral_program import codes


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("ABCD-EFGH", "ABCDEFGH"),
        ("abcd efgh", "ABCDEFGH"),
        (" 0o1i-lL23 ", "00111123"),  # O -> 0, I/L -> 1
        ("7k9m-2xpz", "7K9M2XPZ"),
    ],
)
def test_normalise_accepts_what_people_type(raw: str, expected: str) -> None:
    assert codes.normalise(raw) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("ABCD-EFG", "has 7"),
        ("ABCD-EFGHJ", "has 9"),
        ("ABCU-EFGH", "U"),  # U is never a Crockford symbol
        ("AB!D-EFGH", "!"),
        ("", "has 0"),
    ],
)
def test_normalise_rejects_with_a_reason(raw: str, message: str) -> None:
    with pytest.raises(codes.InvalidCode, match=message):
        codes.normalise(raw)


def test_try_normalise_maps_missing_and_malformed_to_none() -> None:
    assert codes.try_normalise(None) is None
    assert codes.try_normalise("nope") is None
    assert codes.try_normalise("abcd-efgh") == "ABCDEFGH"


def test_display_and_link() -> None:
    assert codes.display("ABCDEFGH") == "ABCD-EFGH"
    assert codes.link("https://x.test/r/", "ABCDEFGH") == "https://x.test/r/ABCD-EFGH"


@given(st.integers(min_value=0, max_value=2**40 - 1))
def test_generated_codes_round_trip(bits: int) -> None:
    code = codes.generate(lambda n: bits)
    assert len(code) == 8
    assert set(code) <= set(codes.ALPHABET)
    assert codes.normalise(codes.display(code).lower()) == code


def test_generate_uses_all_forty_bits() -> None:
    rng = random.Random(7)
    seen = {codes.generate(rng.getrandbits) for _ in range(2000)}
    assert len(seen) == 2000
    assert {c[0] for c in seen} == set(codes.ALPHABET)

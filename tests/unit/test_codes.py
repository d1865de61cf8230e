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
        ("abcd–efgh\n", "ABCDEFGH"),  # en dash, trailing newline
        ("\u00a0abcd\u2014efgh\u00a0", "ABCDEFGH"),  # non-breaking spaces, em dash
        ("abcd\u2212efgh", "ABCDEFGH"),  # minus sign
        ("ａｂｃｄ－ｅｆｇｈ", "ABCDEFGH"),  # full width (NFKC)
        (
            "\ufeffab\u200bcd\u00adefgh",
            "ABCDEFGH",
        ),  # byte-order mark, zero-width space, soft hyphen
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
        ("AB_D-EFGH", "_"),  # an underscore is not a dash
        ("AB.D-EFGH", "."),
        ("AB\u0000D-EFGH", "\u0000"),
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


# What people put between and around the symbols, written out here rather than taken
# from codes.py: Unicode spaces, line and paragraph separators, dashes and invisible format
# characters, the other characters Python counts as whitespace, and dash-like signs.
DECORATIONS = st.one_of(
    st.characters(categories=["Zs", "Zl", "Zp", "Pd", "Cf"]),
    st.sampled_from(
        ["\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x1f", "\x85",
         "-", "\u2212", "\u2053", "\u207b", "\u208b", "\u2011"]
    ),
)  # fmt: skip
FULL_WIDTH = 0xFEE0  # U+FF01..U+FF5E: full-width forms of ASCII '!'..'~'


@st.composite
def as_typed(draw: st.DrawFn, symbol: str) -> str:
    """One symbol as a person may type it: either case, a confusable letter, full width."""
    spellings = {"0": "0Oo", "1": "1IiLl"}.get(symbol, symbol + symbol.lower())
    typed = draw(st.sampled_from(spellings))
    return chr(ord(typed) + FULL_WIDTH) if draw(st.booleans()) else typed


@given(
    code=st.text(alphabet=codes.ALPHABET, min_size=8, max_size=8),
    data=st.data(),
)
def test_any_code_decorated_as_people_type_it_normalises_to_itself(
    code: str, data: st.DataObject
) -> None:
    def around() -> str:
        return "".join(data.draw(st.lists(DECORATIONS, max_size=3)))

    decorated = "".join(around() + data.draw(as_typed(symbol)) for symbol in code) + around()
    assert codes.normalise(decorated) == code

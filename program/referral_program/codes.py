"""Referral codes: 8 Crockford base32 symbols, shown as XXXX-XXXX, case-insensitive."""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from datetime import datetime

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
CODE_LENGTH = 8
_ALLOWED = frozenset(ALPHABET)
# Crockford's decoding table: letters people confuse with digits.
_CONFUSABLE = str.maketrans({"O": "0", "I": "1", "L": "1"})
# What a person types between or around the symbols, read as nothing (docs/rules.md,
# referral codes): every whitespace character (str.isspace), every dash (Unicode's Dash
# property: category Pd, plus the swung dash and the minus sign, which NFKC leaves as they
# are; it turns superscript and subscript minus into the minus sign) and every invisible
# format character (category Cf: soft hyphen, zero-width space, byte-order mark, direction marks).
_OTHER_DASHES = frozenset("\u2053\u2212")
_DROPPED_CATEGORIES = frozenset({"Pd", "Cf"})
_ASCII_DROPPED = str.maketrans(
    "", "", "".join(c for c in map(chr, range(128)) if c.isspace() or c == "-")
)


def _typed_between(char: str) -> bool:
    return (
        char.isspace() or char in _OTHER_DASHES or unicodedata.category(char) in _DROPPED_CATEGORIES
    )


class InvalidCode(ValueError):
    """The text cannot be a referral code even after normalisation."""


def normalise(raw: str) -> str:
    """Canonical stored form of a code typed by a person: ``" abcd–efgh\\n"`` -> ``"ABCDEFGH"``.

    The text is put in Unicode NFKC form (full-width letters become ASCII), every
    whitespace, dash and invisible format character is dropped, case is folded,
    ``O`` reads as ``0`` and ``I``/``L`` as ``1``. Raises :class:`InvalidCode` when
    the result is not eight symbols of the alphabet (``U`` is never valid).
    """
    if raw.isascii():  # what nearly everyone types: NFKC would change nothing
        text = raw.translate(_ASCII_DROPPED)
    else:
        text = "".join(c for c in unicodedata.normalize("NFKC", raw) if not _typed_between(c))
    text = text.upper().translate(_CONFUSABLE)
    if len(text) != CODE_LENGTH:
        raise InvalidCode(f"a referral code has {CODE_LENGTH} symbols, this one has {len(text)}")
    bad = sorted(set(text) - _ALLOWED)
    if bad:
        raise InvalidCode(f"not Crockford base32 symbols: {''.join(bad)}")
    return text


def try_normalise(raw: str | None) -> str | None:
    """:func:`normalise`, or ``None`` for a missing or malformed code."""
    if raw is None:
        return None
    try:
        return normalise(raw)
    except InvalidCode:
        return None


def display(code: str) -> str:
    """``ABCDEFGH`` -> ``ABCD-EFGH``."""
    return f"{code[:4]}-{code[4:]}"


def link(base: str, code: str) -> str:
    """The referral link for a stored code."""
    return f"{base.rstrip('/')}/{display(code)}"


def generate(randbits: Callable[[int], int]) -> str:
    """A new random code from ``randbits`` (e.g. ``secrets.randbits``): 40 bits of entropy."""
    value = randbits(5 * CODE_LENGTH)
    return "".join(ALPHABET[(value >> (5 * i)) & 31] for i in range(CODE_LENGTH))


def attributes(revoked_at: datetime | None, signed_up_at: datetime) -> bool:
    """Does a known code attribute a sign-up made at ``signed_up_at`` (business time)?

    A code revoked at ``revoked_at`` (``None``: never revoked) attributes the sign-ups
    made before that instant, however late they arrive, and none made from then on.
    The consumer applies this when it records a sign-up, and a revocation to the
    sign-ups already recorded, so the outcome does not depend on which came first.
    """
    return revoked_at is None or signed_up_at < revoked_at

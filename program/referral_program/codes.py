"""Referral codes: 8 Crockford base32 symbols, shown as XXXX-XXXX, case-insensitive."""

from __future__ import annotations

from collections.abc import Callable

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
CODE_LENGTH = 8
_ALLOWED = frozenset(ALPHABET)
# Crockford's decoding table: letters people confuse with digits.
_CONFUSABLE = str.maketrans({"O": "0", "I": "1", "L": "1"})


class InvalidCode(ValueError):
    """The text cannot be a referral code even after normalisation."""


def normalise(raw: str) -> str:
    """Canonical stored form of a code typed by a person: ``" abcd-efgh "`` -> ``"ABCDEFGH"``.

    Spaces and hyphens are dropped, case is folded, ``O`` reads as ``0`` and
    ``I``/``L`` as ``1``. Raises :class:`InvalidCode` when the result is not
    eight symbols of the alphabet (``U`` is never valid).
    """
    text = raw.replace(" ", "").replace("-", "").upper().translate(_CONFUSABLE)
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

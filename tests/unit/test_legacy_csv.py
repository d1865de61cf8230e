"""Parsing and validating the legacy-program CSV: every bad line reported, nothing half-read."""

from __future__ import annotations

import pytest

from referral_ops.legacy import LegacyRow, decode_legacy_csv, parse_legacy_csv
from referral_ops.support import LegacyImportError

HEADER = "referrer_account_id,referee_account_id,monthly_credit_cents\n"


def _errors(text: str, currency: str = "USD") -> list[str]:
    with pytest.raises(LegacyImportError) as info:
        parse_legacy_csv(text, currency)
    return info.value.errors


def test_rows_are_read_with_their_line_numbers() -> None:
    text = HEADER + "acct-1,acct-2,500\n\nacct-1, acct-3 ,1000\n"
    assert parse_legacy_csv(text, "USD") == [
        LegacyRow(2, "acct-1", "acct-2", 500, "USD"),
        LegacyRow(4, "acct-1", "acct-3", 1000, "USD"),  # blank line 3 skipped
    ]


def test_short_header_names_any_column_order_and_currency_column() -> None:
    text = "Monthly_Credit_Cents,referee,referrer,currency\r\n250,b,a,usd\r\n300,c,a,\r\n"
    assert parse_legacy_csv(text, "USD") == [
        LegacyRow(2, "a", "b", 250, "USD"),
        LegacyRow(3, "a", "c", 300, "USD"),  # empty currency: the program's
    ]


def test_every_bad_line_is_reported_with_its_number_and_reason() -> None:
    text = HEADER + (
        "a,b,500\n"  # 2 fine
        ",c,500\n"  # 3 missing referrer
        "a,d,10.50\n"  # 4 decimals
        "a,e,-5\n"  # 5 not positive
        "a,f,0\n"  # 6 zero
        "a,g,ten\n"  # 7 not a number
        "h,h,100\n"  # 8 self
        "x,b,500\n"  # 9 duplicate referee
        "a,i\n"  # 10 missing field
        "a,j,\n"  # 11 empty amount
    )
    errors = _errors(text)
    assert errors == [
        "line 3: referrer_account_id is empty",
        "line 4: monthly_credit_cents '10.50' is not a whole number: cents are integers "
        "(for 10.50 write 1050)",
        "line 5: monthly_credit_cents must be more than 0, found -5",
        "line 6: monthly_credit_cents must be more than 0, found 0",
        "line 7: monthly_credit_cents 'ten' is not a number of cents",
        "line 8: referrer and referee are the same account (h); "
        "nobody earns for referring themselves",
        "line 9: referee b is already on line 2; a referee has one legacy referral",
        "line 10: expected 3 fields, found 2",
        "line 11: monthly_credit_cents is empty",
    ]


def test_the_error_message_lists_everything_and_says_nothing_was_imported() -> None:
    with pytest.raises(LegacyImportError) as info:
        parse_legacy_csv(HEADER + "a,a,1\na,b,1.5\n", "USD")
    message = str(info.value)
    assert message.startswith("2 problems, nothing was imported:")
    assert "line 2:" in message and "line 3:" in message
    assert "cents are integers" in message


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("referrer,referee\n", "missing monthly_credit_cents"),
        ("referrer,referee,cents\n", "unknown 'cents'"),
        ("referrer,referrer_account_id,referee,monthly_credit_cents\n", "repeated"),
        ("a1,a2,500\n", "missing referrer_account_id, referee_account_id"),
    ],
)
def test_a_wrong_header_is_named(header: str, expected: str) -> None:
    [error] = _errors(header + "a,b,500\n")
    assert error.startswith("line 1: wrong header")
    assert expected in error
    assert "expected referrer_account_id,referee_account_id,monthly_credit_cents" in error


def test_currency_must_be_the_programs() -> None:
    text = "referrer,referee,monthly_credit_cents,currency\na,b,100,EUR\na,c,100,dollars\n"
    assert _errors(text) == [
        "line 2: currency EUR is not the program currency USD",
        "line 3: currency 'DOLLARS' is not an ISO 4217 code like USD",
    ]


def test_quoted_fields_and_multi_line_records_count_physical_lines() -> None:
    text = HEADER + '"a","b","100"\n"a","c\nd",1.5\n'
    assert _errors(text) == [
        "line 4: monthly_credit_cents '1.5' is not a whole number: cents are integers "
        "(for 1.5 write 150)"
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "the file is empty"),
        ("\n\n", "the file is empty"),
        (HEADER, "the file has a header but no rows"),
        (HEADER + "\n", "the file has a header but no rows"),
    ],
)
def test_empty_files_are_refused(text: str, expected: str) -> None:
    [error] = _errors(text)
    assert expected in error


def test_bom_is_accepted_and_non_utf8_is_refused_with_its_line() -> None:
    assert decode_legacy_csv(b"\xef\xbb\xbf" + HEADER.encode()) == HEADER
    with pytest.raises(LegacyImportError) as info:
        decode_legacy_csv(HEADER.encode() + b"caf\xe9,b,100\n")
    assert info.value.errors == [
        "line 2: not UTF-8 text (byte 0xE9); save the file as CSV UTF-8 and import it again"
    ]

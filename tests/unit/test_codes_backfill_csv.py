"""Billing's export of existing accounts: one column, every bad line reported, nothing personal."""

from __future__ import annotations

import pytest

from referral_ops.backfill import BackfillRow, decode_csv, parse_backfill_csv
from referral_ops.support import CodeBackfillError


def _errors(text: str) -> list[str]:
    with pytest.raises(CodeBackfillError) as raised:
        parse_backfill_csv(text)
    return raised.value.errors


def test_a_good_export() -> None:
    text = "account_id\r\nacct-1\r\n\r\n  acct-2  \r\nacct/3\r\n"
    assert parse_backfill_csv(text) == [
        BackfillRow(2, "acct-1"),
        BackfillRow(4, "acct-2"),
        BackfillRow(5, "acct/3"),
    ]
    assert parse_backfill_csv("Account_ID\nacct-1\n") == [BackfillRow(2, "acct-1")]


def test_every_bad_line_is_reported_with_its_number() -> None:
    text = "account_id\nacct-1\nacct 2\nacct-1\na,b\n" + "x" * 201 + "\nacct\t9\n"
    assert _errors(text) == [
        "line 3: account_id 'acct 2' contains spaces or control characters",
        "line 4: account acct-1 is already on line 2",
        "line 5: expected 1 field, found 2",
        "line 6: account_id is 201 characters long (at most 200)",
        "line 7: account_id 'acct\\t9' contains spaces or control characters",
    ]


def test_other_columns_are_refused_so_no_personal_data_comes_in() -> None:
    (error,) = _errors("account_id,email\nacct-1,a@b.example\n")
    assert error.startswith("line 1: wrong header")
    assert "'email'" in error and "no names, emails or other columns" in error
    (error,) = _errors("customer\nacct-1\n")
    assert "expected the one column account_id" in error


def test_empty_files_and_other_encodings_are_refused() -> None:
    assert _errors("") == ["the file is empty: expected the header account_id and rows"]
    assert _errors("account_id\n\n") == ["the file has a header but no rows"]
    with pytest.raises(CodeBackfillError) as raised:
        decode_csv("account_id\nacct-\xe9\n".encode("latin-1"))
    assert raised.value.errors == [
        "line 2: not UTF-8 text (byte 0xE9); export the file as CSV UTF-8 and run it again"
    ]
    assert decode_csv("\ufeffaccount_id\nx\n".encode()) == "account_id\nx\n"
    assert "no code was assigned" in str(CodeBackfillError(["line 2: x"]))

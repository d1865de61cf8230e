"""Signed, expiring page links: one account each, refused when missing, changed or expired."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest

from referral_runtime.page_links import MAX_DAYS, PageLinkRefused, PageLinks

KEY = "k" * 16 + "0123456789abcdef"
NOW = datetime(2027, 1, 17, 12, tzinfo=UTC)
LINKS = PageLinks(KEY, "https://app.example.com/my-referrals/")


def test_a_link_opens_its_account_until_it_expires() -> None:
    link = LINKS.link("acct-1", now=NOW, days=3)
    assert link.startswith("https://app.example.com/my-referrals/")
    token = link.rsplit("/", 1)[1]
    grant = LINKS.check(token, now=NOW + timedelta(days=3) - timedelta(seconds=1))
    assert grant.account_id == "acct-1"
    assert grant.expires_at == NOW + timedelta(days=3)
    with pytest.raises(PageLinkRefused) as refused:
        LINKS.check(token, now=NOW + timedelta(days=3))
    assert refused.value.reason == "expired"


@pytest.mark.parametrize("token", [None, ""])
def test_no_token_is_missing(token: str | None) -> None:
    with pytest.raises(PageLinkRefused) as refused:
        LINKS.check(token, now=NOW)
    assert refused.value.reason == "missing"


def _forge(payload: object, signature_of: str) -> str:
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=") + "." + signature_of.rsplit(".")[-1]


def test_a_changed_token_is_tampered_whatever_was_changed() -> None:
    token = LINKS.token("acct-1", now=NOW)
    forged_account = _forge({"a": "acct-2", "e": int(NOW.timestamp()) + 86400}, token)
    forged_expiry = _forge({"a": "acct-1", "e": 4102444800}, token)
    other_key = PageLinks("another-key-of-thirty-two-chars!!", "https://x").token("acct-1", now=NOW)
    for bad in (
        token[:-2] + ("AA" if not token.endswith("AA") else "BB"),
        forged_account,
        forged_expiry,
        other_key,
        "acct-1",
        token + "x",
        "a.b.c",
    ):
        with pytest.raises(PageLinkRefused) as refused:
            LINKS.check(bad, now=NOW)
        assert refused.value.reason == "tampered", bad


def test_a_signed_payload_of_the_wrong_shape_opens_nothing() -> None:
    from itsdangerous import URLSafeSerializer

    from referral_runtime import page_links

    signer = URLSafeSerializer(KEY, salt=page_links._SALT)
    for payload in ({"a": "acct-1"}, {"e": 4102444800}, ["acct-1"], {"a": "", "e": 1},
                    {"a": "acct-1", "e": True}, {"a": 7, "e": 4102444800}):  # fmt: skip
        with pytest.raises(PageLinkRefused) as refused:
            LINKS.check(signer.dumps(payload), now=NOW)
        assert refused.value.reason == "tampered", payload


def test_a_signature_made_for_another_purpose_with_the_same_key_opens_nothing() -> None:
    from itsdangerous import URLSafeSerializer

    other_purpose = URLSafeSerializer(KEY, salt="something-else").dumps(
        {"a": "acct-1", "e": 4102444800}
    )
    with pytest.raises(PageLinkRefused):
        LINKS.check(other_purpose, now=NOW)


def test_lifetimes_and_keys_are_bounded() -> None:
    for days in (0, -1, MAX_DAYS + 1):
        with pytest.raises(ValueError, match="days"):
            LINKS.token("acct-1", now=NOW, days=days)
    assert LINKS.check(LINKS.token("acct-1", now=NOW, days=MAX_DAYS), now=NOW).account_id
    with pytest.raises(ValueError, match="32"):
        PageLinks("short", "https://x")
    with pytest.raises(ValueError, match="account"):
        LINKS.token("", now=NOW)

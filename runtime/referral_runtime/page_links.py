"""Signed, expiring links to a referrer's page: `referrals page-link` makes them, referral-web
checks them.

A link is ``<PAGE_LINK_BASE>/<token>``. The token is an ``itsdangerous``
URL-safe signature (HMAC-SHA1 over a key derived from ``PAGE_SIGNING_KEY`` and
this purpose's salt) of ``{"a": account id, "e": expiry in Unix seconds}``.
It is signed, not encrypted: whoever holds the link can read the account id
in it, which is the account the link was made for. The expiry is inside the
signed payload, so each link carries its own lifetime and time is passed in
(never read here).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from itsdangerous import BadData, URLSafeSerializer

#: A purpose of its own, so a signature made for anything else with the same key never passes.
_SALT = "referral-rewards.referrer-page.v1"
#: The longest a link may live; emails are re-sent with fresh links long before.
MAX_DAYS = 366
DEFAULT_DAYS = 30


class PageLinkRefused(Exception):
    """A token that opens nothing; ``reason`` is ``missing``, ``tampered`` or ``expired``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class PageGrant:
    """What a valid token lets its holder see: one account's page, until ``expires_at``."""

    account_id: str
    expires_at: datetime


class PageLinks:
    """Makes and checks the tokens of referrer pages with one signing key."""

    def __init__(self, signing_key: str, base: str) -> None:
        if len(signing_key) < 32:
            raise ValueError("the page signing key must be at least 32 characters")
        self._serializer = URLSafeSerializer(signing_key, salt=_SALT)
        self._base = base.rstrip("/")

    def token(self, account_id: str, *, now: datetime, days: int = DEFAULT_DAYS) -> str:
        """A token for ``account_id``'s page, valid for ``days`` days from ``now``."""
        if not account_id:
            raise ValueError("an account id is needed")
        if not 1 <= days <= MAX_DAYS:
            raise ValueError(f"a link lives 1 to {MAX_DAYS} days, not {days}")
        expires = int((now + timedelta(days=days)).timestamp())
        signed: str = self._serializer.dumps({"a": account_id, "e": expires})
        return signed

    def link(self, account_id: str, *, now: datetime, days: int = DEFAULT_DAYS) -> str:
        """The full link, ``<PAGE_LINK_BASE>/<token>``."""
        return f"{self._base}/{self.token(account_id, now=now, days=days)}"

    def check(self, token: str | None, *, now: datetime) -> PageGrant:
        """The grant of a token, or :class:`PageLinkRefused` saying why it opens nothing."""
        if not token:
            raise PageLinkRefused("missing")
        try:
            payload: Any = self._serializer.loads(token)
        except BadData:
            raise PageLinkRefused("tampered") from None
        account, expires = _fields(payload)
        if account is None or expires is None:
            raise PageLinkRefused("tampered")
        expires_at = datetime.fromtimestamp(expires, tz=UTC)
        if now >= expires_at:
            raise PageLinkRefused("expired")
        return PageGrant(account, expires_at)


def _fields(payload: Any) -> tuple[str | None, int | None]:
    if not isinstance(payload, dict):
        return None, None
    account, expires = payload.get("a"), payload.get("e")
    if not isinstance(account, str) or not account:
        account = None
    if not isinstance(expires, int) or isinstance(expires, bool):
        expires = None
    return account, expires

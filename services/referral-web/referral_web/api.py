"""The JSON read API, behind `Authorization: Bearer <API_TOKEN>`.

- `GET /v1/codes/{code}`: for the sign-up page. Is the code valid (active, or an
  alias of a rotated code), and what does a new client get with it. It never
  says whose code it is.
- `GET /v1/accounts/{account_id}/referrals`: for support tools. A referrer's
  code, link and referrals, the same document as `referrals list --format json`.

Answers carry program facts only: no email, phone or payment fingerprint.
Without a configured `API_TOKEN` every call answers 503.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations, and
# those name the dependencies defined inside router().
import hmac
import json
from typing import TYPE_CHECKING, Annotated, Any, Literal

import asyncpg
from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.convertors import Convertor, register_url_convertor

from referral_ops.listing import referrals_page
from referral_ops.support import UnknownAccount
from referral_program import codes

if TYPE_CHECKING:
    from referral_web.app import WebService

PREFIX = "/v1"
#: Longer than any account id billing makes: such a path names no account.
MAX_ACCOUNT_ID = 200


class ApiProblem(Exception):
    """An answer other than 200: its status, JSON body and headers."""

    def __init__(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers or {}


async def problem_response(request: Request, exc: Exception) -> Response:
    """The JSON answer of an :class:`ApiProblem` (registered as the app's handler).

    ASCII-escaped, so that text echoed from a path that was not UTF-8 still makes a body.
    """
    assert isinstance(exc, ApiProblem)
    return Response(
        json.dumps(exc.body, ensure_ascii=True),
        status_code=exc.status,
        media_type="application/json",
        headers={"cache-control": "no-store", **exc.headers},
    )


class ApiError(BaseModel):
    error: str = Field(description="What is wrong, for a person to read")


class ValidCode(BaseModel):
    valid: Literal[True]
    code: str = Field(description="The code in its display form, e.g. ABCD-EFGH")
    referee_discount_cents: int = Field(ge=0, description="Off the first month, in cents")
    currency: str = Field(pattern=r"^[A-Z]{3}$")


class NoSuchCode(BaseModel):
    valid: Literal[False]


class MalformedCode(BaseModel):
    valid: Literal[False]
    error: str = Field(description="Why the text cannot be a referral code")


class Referral(BaseModel):
    referee_account_id: str
    plan_family: str | None = Field(description="The family the reward is (or would be) based on")
    plans: list[str] = Field(description="Every plan family the referee has subscribed to")
    status: str = Field(
        description="pending, qualified or ineligible while undecided; due, forfeited or "
        "ineligible once decided"
    )
    reason: str | None
    amount_cents: int = Field(ge=0)
    currency: str
    referral_code: str
    referred_on: str = Field(description="YYYY-MM-DD, program time zone")
    first_payment_on: str | None
    eligible_on: str | None
    pay_by: str | None
    decided: bool
    payout_status: str | None = Field(
        description="Where a due payout stands with finance: due, paid, failed, mismatched "
        "(paid another amount or currency), paid_twice; null when not a due payout"
    )
    paid_on: str | None = Field(description="YYYY-MM-DD (program time zone) finance paid it")


class Referrals(BaseModel):
    account_id: str
    code: str | None = Field(description="The active code, display form")
    link: str | None
    referrals: list[Referral]


class UnknownAccountError(BaseModel):
    error: Literal["unknown account"]
    account_id: str


_bearer = HTTPBearer(auto_error=False, description="API_TOKEN")


class _AnyText(Convertor[str]):
    """A path parameter that may hold anything, a slash or a line break included (Starlette's
    `path` stops at a line break, and the request would miss the route: a 404 unlike the
    documented one)."""

    regex = "(?s:.*)"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("any_text", _AnyText())

CodeParameter = Annotated[
    str,
    Path(
        description="A code as a person typed it: case, spaces and hyphens do not matter, "
        "O reads as 0 and I or L as 1",
        examples=["K3F7-9QXM"],
    ),
]
AccountParameter = Annotated[
    str,
    Path(
        description="Billing's account id (a slash in it is sent as %2F)",
        examples=["acct-7f3a9c21"],
    ),
]

_COMMON_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ApiError, "description": "Missing or wrong bearer token"},
    503: {"model": ApiError, "description": "API_TOKEN not configured, or not ready yet"},
}


def router(service: "WebService") -> APIRouter:
    """The API's routes, reading through ``service``'s pool."""

    def authorised(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        token = service.settings.api_token
        if not token:
            raise ApiProblem(503, {"error": "API_TOKEN not configured"})
        given = credentials.credentials if credentials else ""
        if not (credentials and hmac.compare_digest(given.encode(), token.encode())):
            raise ApiProblem(
                401,
                {"error": "missing or wrong bearer token"},
                {"www-authenticate": 'Bearer realm="referrals"'},
            )

    def pool() -> asyncpg.Pool:
        current = service.pool
        if current is None:
            raise ApiProblem(503, {"error": "not ready"}, {"retry-after": "5"})
        return current

    api = APIRouter(prefix=PREFIX, dependencies=[Depends(authorised)], tags=["read API"])

    @api.get(
        "/codes/{code}",
        operation_id="lookupCode",
        response_model=ValidCode,
        summary="Is this referral code valid, and what does a new client get with it",
        responses={
            400: {"model": MalformedCode, "description": "Text that cannot be a code"},
            404: {"model": NoSuchCode, "description": "Unknown or revoked code"},
            **_COMMON_ERRORS,
        },
    )
    async def code(code: CodeParameter, pool: Annotated[asyncpg.Pool, Depends(pool)]) -> ValidCode:
        try:
            stored = codes.normalise(code)
        except codes.InvalidCode as exc:
            raise ApiProblem(400, {"valid": False, "error": str(exc)}) from None
        async with pool.acquire() as conn:
            status = await conn.fetchval(
                "select status from referral_codes where code = $1", stored
            )
        if status is None or status == "revoked":
            raise ApiProblem(404, {"valid": False})
        return ValidCode(
            valid=True,
            code=codes.display(stored),
            referee_discount_cents=service.settings.referee_discount_cents,
            currency=service.settings.program_currency,
        )

    @api.get(
        "/accounts/{account_id:any_text}/referrals",
        operation_id="listReferrals",
        response_model=Referrals,
        summary="A referrer's code, link and referrals",
        responses={
            404: {"model": UnknownAccountError, "description": "No billing event seen for it"},
            **_COMMON_ERRORS,
        },
    )
    async def referrals(
        account_id: AccountParameter, pool: Annotated[asyncpg.Pool, Depends(pool)]
    ) -> Referrals:
        if not _plausible_account(account_id):
            raise ApiProblem(404, {"error": "unknown account", "account_id": account_id})
        try:
            async with pool.acquire() as conn:
                page = await referrals_page(conn, account_id, service.settings, service.clock())
        except UnknownAccount:
            raise ApiProblem(404, {"error": "unknown account", "account_id": account_id}) from None
        return Referrals.model_validate(page.to_json())

    return api


def _plausible_account(account_id: str) -> bool:
    """Whether the text can be an account id at all (text Postgres can hold, not too long)."""
    if not account_id.strip() or len(account_id) > MAX_ACCOUNT_ID or "\x00" in account_id:
        return False
    try:
        account_id.encode()
    except UnicodeEncodeError:  # a lone surrogate from a path that was not UTF-8
        return False
    return True

"""The two public pages, server-rendered: the friend's landing page and the referrer's page.

- ``<landing prefix>/<CODE>``: the offer and the way on to sign-up with the code
  filled in. An alias lands on its account's current code; an unknown, revoked
  or malformed code still lands, without the offer. Visits of known codes are
  counted (see ``visits.py``).
- ``<page prefix>/<token>``: one referrer's page, for a valid signed link only.
  A missing, tampered or expired link gets 403 and says how to ask for a new one.

Neither page carries an email, a phone, a payment fingerprint or an account id,
and both forbid caching, framing and leaking their address to the next site.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import structlog
from fastapi import APIRouter
from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from referral_ops.listing import ReferralLine, legacy_lines, referrals_page
from referral_ops.support import UnknownAccount
from referral_program import codes
from referral_program.table import PayoutStatus
from referral_runtime.page_links import PageLinkRefused
from referral_web import referrer_view, store, wording
from referral_web.wording import day_words, money_words

if TYPE_CHECKING:
    from referral_web.app import WebService

log = structlog.get_logger(__name__)

#: Where the stylesheet and the copy button's script are served.
ASSETS_PATH = "/referral-assets"
#: The referrer's page shows the visits of the last this many days beside the total.
VISIT_DAYS = 30

_templates = Environment(
    loader=PackageLoader("referral_web", "templates"),
    autoescape=select_autoescape(default=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)

#: Every page: nothing loads from elsewhere, nothing frames it, its address goes nowhere.
_HEADERS = {
    "content-security-policy": "default-src 'none'; style-src 'self'; script-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
    "cache-control": "no-store",
    "x-robots-tag": "noindex, nofollow",
}


def render(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    """A template rendered with the security headers every page carries."""
    html = _templates.get_template(name).render(assets=ASSETS_PATH, **context)
    return HTMLResponse(html, status_code=status, headers=_HEADERS)


def unavailable() -> HTMLResponse:
    """The page shown while the database cannot be reached."""
    response = render("unavailable.html", 503)
    response.headers["retry-after"] = "30"
    return response


def signup_link(signup_url: str, code: str | None) -> str:
    """``SIGNUP_URL`` with ``referral_code=<CODE>`` added to its query (if a code is given)."""
    if code is None:
        return signup_url
    parts = urlsplit(signup_url)
    query = "&".join(q for q in (parts.query, urlencode({"referral_code": code})) if q)
    return urlunsplit(parts._replace(query=query))


#: Finance's statuses of a due payout in which money went out: the referrer was paid
#: (a wrong amount or a second payment is for finance and support to sort out).
_MONEY_OUT = frozenset({PayoutStatus.PAID, PayoutStatus.MISMATCHED, PayoutStatus.PAID_TWICE})


def page_referral(line: ReferralLine) -> referrer_view.Referral:
    """A line of the read model as the page shows it: a due payout as finance reported it
    (paid, with the day; failed, with finance's reason), anything else as it was decided."""
    status, reason = line.status, line.reason
    if line.payout_status in _MONEY_OUT:
        status = wording.PAID
    elif line.payout_status == PayoutStatus.FAILED:
        status, reason = wording.FAILED, line.failure_reason
    return referrer_view.Referral(
        referee_account_id=line.referee_account_id,
        plan_family=line.plan_family,
        status=status,
        reason=reason,
        amount_cents=line.amount_cents,
        currency=line.currency,
        referred_on=line.referred_on,
        eligible_on=line.eligible_on,
        pay_by=line.pay_by,
        paid_on=line.paid_on if status == wording.PAID else None,
    )


def router(service: WebService, *, landing_prefix: str, page_prefix: str) -> APIRouter:
    """The pages' routes; the prefixes are the path parts of the two link bases."""
    settings = service.settings
    pages = APIRouter(include_in_schema=False)
    offer = money_words(settings.referee_discount_cents, settings.program_currency)

    def refused(reason: str) -> HTMLResponse:
        service.metrics.page_links.labels(reason).inc()
        log.info("page_link_refused", reason=reason)
        return render("forbidden.html", 403, reason=reason)

    @pages.get(page_prefix)
    @pages.get(page_prefix + "/")
    async def no_token() -> HTMLResponse:
        return refused("missing")

    @pages.get(page_prefix + "/{token}")
    async def referrer_page(token: str) -> HTMLResponse:
        now = service.clock()
        try:
            grant = service.links.check(token, now=now)
        except PageLinkRefused as refusal:
            return refused(refusal.reason)
        pool = service.pool
        if pool is None:
            return unavailable()
        today = now.astimezone(settings.tz).date()
        async with pool.acquire() as conn:
            legacy = await legacy_lines(conn, grant.account_id, settings.tz)
            try:
                page = await referrals_page(conn, grant.account_id, settings, now)
                code, link, lines = page.code, page.link, page.referrals
            except UnknownAccount:
                if not legacy:
                    return refused("unknown_account")
                code, link, lines = None, None, []
            recent, total = await store.visits_of_account(
                conn, grant.account_id, today - timedelta(days=VISIT_DAYS - 1)
            )
        service.metrics.page_links.labels("valid").inc()
        view = referrer_view.referrer_view(
            code=code,
            link=link,
            referrals=[page_referral(line) for line in lines],
            legacy=[
                referrer_view.LegacyCredit(
                    x.referee_account_id,
                    x.monthly_credit_cents,
                    x.currency,
                    x.credits,
                    x.credited_cents,
                )
                for x in legacy
            ],
            visits_recent=recent,
            visits_total=total,
            visits_days=VISIT_DAYS,
            discount_cents=settings.referee_discount_cents,
            currency=settings.program_currency,
        )
        return render(
            "referrer.html",
            view=view,
            expires_on=day_words(grant.expires_at.astimezone(settings.tz).date()),
        )

    @pages.get(landing_prefix + "/")
    async def landing_without_code() -> HTMLResponse:
        service.metrics.landings.labels("malformed").inc()
        return render("landing.html", offer=None, code=None, signup=settings.signup_url)

    @pages.get(landing_prefix + "/{code}")
    async def landing(code: str) -> HTMLResponse:
        stored = codes.try_normalise(code)
        state = None
        if stored is not None:
            pool = service.pool
            if pool is None:
                return unavailable()
            async with pool.acquire() as conn:
                state = await store.code_state(conn, stored)
        kind = "malformed" if stored is None else ("unknown" if state is None else state.status)
        service.metrics.landings.labels(kind).inc()
        if stored is None or state is None or not state.attributes:
            return render("landing.html", offer=None, code=None, signup=settings.signup_url)
        if service.visits.count(stored, service.clock().astimezone(settings.tz).date()):
            service.metrics.visits_buffered.inc()
        else:
            service.metrics.visits_dropped.inc()
        shown = codes.display(state.current_code or stored)
        return render(
            "landing.html",
            offer=offer,
            code=shown,
            signup=signup_link(settings.signup_url, shown),
        )

    return pages

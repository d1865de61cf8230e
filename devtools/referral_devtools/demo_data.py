"""The demo's synthetic year of billing: a pure, seeded generator (no I/O, no clock).

Two steps, because the consumer assigns the referral codes:

1. :func:`plan_year` decides everything about the accounts from the seed: the
   referrers (clients since the year before), the new clients signing up during
   the year, their plans, prices, churn, which code each one types and how
   sloppily, the ineligible cases, the partners. Its :attr:`YearPlan.setup`
   messages (everything before the year) are published first.
2. :func:`billing_months` renders the year, month by month, once the codes of
   the referrers are known: sign-ups, monthly invoices, cancellations, a few
   broken messages and a few redeliveries.

For a seed, size and year the logical stream is always the same; only the code
strings differ between runs (the consumer draws them at random).
"""

from __future__ import annotations

import json
import random
import uuid
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from referral_devtools import synthetic as bill
from referral_program import codes as code_rules

VR = "virtual_receptionist"
VA = "voice_assistant"
CHAT = "chat"
OUTREACH = "outreach_campaign"

#: Monthly list prices per plan family, in cents (tiers of each family).
PRICES: dict[str, tuple[int, ...]] = {
    VR: (24900, 44900, 82900),
    VA: (9900, 14900, 29900),
    CHAT: (4900, 14900),
    OUTREACH: (19900, 39900),
}
#: The referee's first month is $100 cheaper (never below zero).
REFEREE_DISCOUNT_CENTS = 10000
#: The demo runs this many months past the year so the last referrals get decided.
TRAILING_MONTHS = 4

#: New clients' plan mix (weights).
REFEREE_PLANS: tuple[tuple[tuple[str, ...], float], ...] = (
    ((VR,), 0.40),
    ((VA,), 0.22),
    ((CHAT,), 0.15),
    ((OUTREACH,), 0.11),
    ((VR, VA), 0.12),
)

# How new clients enter the code field (weights); the rest type nothing.
VALID_CODE_SHARE = 0.78
UNKNOWN_CODE_SHARE = 0.03
MALFORMED_CODE_SHARE = 0.01
#: How a valid code is typed: as shown, lower case, a space for the hyphen,
#: no hyphen, the letters O/I for the digits 0/1. Every one is recognised.
CODE_STYLES: tuple[tuple[str, float], ...] = (
    ("as shown", 0.62),
    ("lower case", 0.15),
    ("with spaces", 0.09),
    ("no hyphen", 0.09),
    ("letters for digits", 0.05),
)
MALFORMED_CODES = ("FRIEND100", "SAVE-100", "REF 2027", "WELCOME", "SPRING-DEAL")

#: Share of referrals of each ineligible kind (at least one of each, whatever the size).
INELIGIBLE_SHARE = 0.01
PARTNER_SHARE = 0.02

# Churn: some cancel in the first weeks, the rest with a small monthly hazard.
EARLY_CHURN = 0.10
MONTHLY_CHURN = 0.03
IMMEDIATE_CANCELLATION = 0.2
CANCEL_REASONS = (None, "too_expensive", "switched_provider", "business_closed", "not_using")

PUBLIC_DOMAINS = ("gmail.com", "outlook.com", "yahoo.com", "icloud.com")
_NAMES = (
    "ana", "ben", "chloe", "dev", "emma", "felix", "grace", "hugo", "ivy", "jamal",
    "kim", "leo", "maya", "noah", "olga", "priya", "quinn", "raj", "sara", "tom",
)  # fmt: skip
_WORDS = (
    "harbor", "summit", "cedar", "bright", "north", "river", "oak", "blue", "pine", "maple",
)  # fmt: skip
_TRADES = (
    "law", "dental", "realty", "plumbing", "clinic", "studio", "consulting", "auto", "spa",
    "roofing", "vet", "accounting",
)  # fmt: skip

#: Kinds of account the demo generates, each meant to show one rule.
NEW_CLIENT = "new_client"
SELF_REFERRAL = "self_referral"
SAME_ORGANIZATION = "same_organization"
SHARED_PAYMENT_METHOD = "shared_payment_method"
SAME_EMAIL_DOMAIN = "same_email_domain"
NOT_FIRST_TIME = "existing_client (first_time_client: false)"
RETURNING_CLIENT = "existing_client (paid before)"
PARTNER_REFERRAL = "partner_ineligible"
INELIGIBLE_CASES = (
    SELF_REFERRAL,
    SAME_ORGANIZATION,
    SHARED_PAYMENT_METHOD,
    SAME_EMAIL_DOMAIN,
    NOT_FIRST_TIME,
    RETURNING_CLIENT,
)

_BEGINNING = datetime.min.replace(tzinfo=UTC)
DEMO_NAMESPACE = uuid.UUID("3d6f0c1a-8e2b-4f57-9a4c-6b1e0d2f7c93")

#: The event type each billing topic carries (the shell maps it to a topic name).
CREATED, PAID, CANCELLED = "subscription.created", "invoice.paid", "subscription.cancelled"


# --- the plan -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Customer:
    email: str | None
    organization_id: str | None
    payment_fingerprint: str | None


@dataclass(frozen=True)
class CodeUse:
    """What a new client typed in the code field."""

    kind: str  # "referrer" | "unknown" | "malformed"
    referrer: str | None = None  # whose code, for kind "referrer"
    style: str = "as shown"
    text: str | None = None  # the typed text, for "unknown" / "malformed"


@dataclass(frozen=True)
class Cancellation:
    requested_at: datetime
    effective_at: datetime | None  # None: immediate (the event leaves the field out)
    reason: str | None


@dataclass(frozen=True)
class SubscriptionPlan:
    subscription_id: str
    family: str
    price_cents: int
    created_at: datetime
    code: CodeUse | None = None
    discounted: bool = False  # the first invoice carries the referee discount
    first_time_client: bool = True
    cancellation: Cancellation | None = None


@dataclass(frozen=True)
class AccountPlan:
    account_id: str
    kind: str  # "referrer", NEW_CLIENT or one of INELIGIBLE_CASES / PARTNER_REFERRAL
    customer: Customer
    subscriptions: tuple[SubscriptionPlan, ...]
    weight: float = 0.0  # referrers: how prolific


@dataclass(frozen=True)
class Message:
    """One Kafka message as billing (or a broken producer) publishes it."""

    topic_type: str  # the event type of the topic it goes to
    key: bytes
    value: bytes
    at: datetime  # business time (UTC)
    event_id: str | None  # None for a message that is not a valid event
    redelivery: bool = False

    @property
    def bad(self) -> bool:
        return self.event_id is None


@dataclass(frozen=True)
class Month:
    """The messages of one calendar month (program time); ``start`` is its 1st."""

    start: date
    messages: tuple[Message, ...]

    @property
    def label(self) -> str:
        return f"{self.start:%Y-%m}"

    def days(self) -> list[date]:
        """Every date of the month: the scheduler runs one pass per day."""
        end = _add_months(self.start, 1)
        return [self.start + timedelta(days=n) for n in range((end - self.start).days)]


@dataclass(frozen=True)
class YearPlan:
    seed: int
    year: int
    tz: ZoneInfo
    referrers: tuple[AccountPlan, ...]
    partners: tuple[str, ...]
    clients: tuple[AccountPlan, ...]  # everyone else who appears (new and returning clients)
    setup: Month  # everything before the year: referrers and returning clients' history
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def horizon(self) -> datetime:
        """The end of the demo (exclusive): TRAILING_MONTHS after the year."""
        return _local(date(self.year + 1, 1 + TRAILING_MONTHS, 1), 0, 0, self.tz)


def plan_year(seed: int, accounts: int, year: int, tz: ZoneInfo) -> YearPlan:
    """Decide every account of the demo; ``accounts`` counts referrers and new clients.

    About one account in eleven is a referrer (a client since ``year - 1``);
    the rest sign up during ``year``. Each ineligible case and partner referrals
    appear at least once, whatever the size.
    """
    if accounts < 50:
        raise ValueError(f"the demo needs at least 50 accounts, got {accounts}")
    rng = random.Random(f"referrals-demo:{seed}:{year}")
    n_referrers = max(5, round(accounts / 11))
    n_clients = accounts - n_referrers
    referrers = [_referrer(rng, n, year, tz) for n in range(1, n_referrers + 1)]
    # Partners (agencies, accountants) are among the prolific referrers.
    n_partners = max(1, round(n_referrers * 0.03))
    prolific = sorted(referrers, key=lambda r: (-r.weight, r.account_id))
    partners = sorted(r.account_id for r in prolific[1 : 3 * n_partners : 3])
    regular = [r for r in referrers if r.account_id not in partners]

    kinds = [case for case in INELIGIBLE_CASES for _ in range(_share(n_clients, INELIGIBLE_SHARE))]
    kinds += [PARTNER_REFERRAL] * _share(n_clients, PARTNER_SHARE)
    self_referrers = {r.account_id for r in rng.sample(regular, kinds.count(SELF_REFERRAL))}
    kinds = [k for k in kinds if k != SELF_REFERRAL]
    kinds += [NEW_CLIENT] * (n_clients - len(kinds))
    rng.shuffle(kinds)
    clients = [
        _client(rng, f"A{n:05d}", kind, year, tz, regular, partners)
        for n, kind in enumerate(kinds, start=1)
    ]
    referrers = [
        _self_referral(rng, r, year, tz) if r.account_id in self_referrers else r for r in referrers
    ]
    plan = YearPlan(
        seed=seed,
        year=year,
        tz=tz,
        referrers=tuple(referrers),
        partners=tuple(partners),
        clients=tuple(clients),
        setup=Month(date(year - 1, 1, 1), ()),
    )
    ids = _EventIds(seed, year)
    year_start = _local(date(year, 1, 1), 0, 0, tz)
    history = [
        message
        for account in (*plan.referrers, *plan.clients)
        for message in _account_messages(account, {}, ids, tz, until=year_start)
    ]
    history.sort(key=lambda m: m.at)
    return replace(plan, setup=replace(plan.setup, messages=tuple(history)), stats=_stats(plan))


def _share(n: int, share: float) -> int:
    return max(1, round(n * share))


def _pick(rng: random.Random, weighted: Sequence[tuple[Any, float]]) -> Any:
    return rng.choices([v for v, _ in weighted], weights=[w for _, w in weighted])[0]


def _fingerprint(rng: random.Random) -> str:
    return f"pm_{rng.getrandbits(64):016x}"


def _referrer(rng: random.Random, n: int, year: int, tz: ZoneInfo) -> AccountPlan:
    account = f"R{n:04d}"
    business = f"{rng.choice(_WORDS)}{rng.choice(_TRADES)}{n}.com"
    domain = rng.choice(PUBLIC_DOMAINS) if rng.random() < 0.1 else business
    since = _signup_time(rng, year - 1, tz, last_day=350)
    family = VR if rng.random() < 0.85 else VA
    return AccountPlan(
        account_id=account,
        kind="referrer",
        customer=Customer(f"{rng.choice(_NAMES)}@{domain}", f"org-{account}", _fingerprint(rng)),
        subscriptions=(
            SubscriptionPlan(f"{account}-s1", family, rng.choice(PRICES[family]), since),
        ),
        weight=rng.paretovariate(1.3),
    )


def _self_referral(
    rng: random.Random, referrer: AccountPlan, year: int, tz: ZoneInfo
) -> AccountPlan:
    """A referrer adds a plan with its own code: the referral is ``self_referral``."""
    family = VA if referrer.subscriptions[0].family == VR else VR
    addon = SubscriptionPlan(
        f"{referrer.account_id}-s2",
        family,
        rng.choice(PRICES[family]),
        _signup_time(rng, year, tz),
        code=CodeUse("referrer", referrer.account_id, _pick(rng, CODE_STYLES)),
        discounted=True,
    )
    return replace(referrer, subscriptions=(*referrer.subscriptions, addon))


def _client(
    rng: random.Random,
    account: str,
    kind: str,
    year: int,
    tz: ZoneInfo,
    regular: list[AccountPlan],
    partners: list[str],
) -> AccountPlan:
    """A client who signs up during ``year`` (with a code or not), or a returning one."""
    n = int(account[1:])
    business = f"{rng.choice(_WORDS)}-{rng.choice(_TRADES)}-{n}.com"
    domain = rng.choice(PUBLIC_DOMAINS) if rng.random() < 0.4 else business
    customer = Customer(f"{rng.choice(_NAMES)}@{domain}", f"org-{account}", _fingerprint(rng))
    style = _pick(rng, CODE_STYLES)
    code: CodeUse | None
    if kind == NEW_CLIENT:
        roll = rng.random()
        if roll < VALID_CODE_SHARE:
            code = CodeUse("referrer", _weighted_referrer(rng, regular).account_id, style)
        elif roll < VALID_CODE_SHARE + UNKNOWN_CODE_SHARE:
            code = CodeUse("unknown", text=code_rules.display(code_rules.generate(rng.getrandbits)))
        elif roll < VALID_CODE_SHARE + UNKNOWN_CODE_SHARE + MALFORMED_CODE_SHARE:
            code = CodeUse("malformed", text=rng.choice(MALFORMED_CODES))
        else:
            code = None
    elif kind == PARTNER_REFERRAL:
        code = CodeUse("referrer", rng.choice(partners), style)
    else:
        candidates = regular
        if kind == SAME_EMAIL_DOMAIN:
            candidates = [r for r in regular if _domain(r) not in PUBLIC_DOMAINS] or regular
        referrer = _weighted_referrer(rng, candidates)
        code = CodeUse("referrer", referrer.account_id, style)
        theirs = referrer.customer
        if kind == SAME_ORGANIZATION:  # a new location of the referrer's business
            customer = replace(customer, organization_id=theirs.organization_id)
        elif kind == SHARED_PAYMENT_METHOD:  # paid with the referrer's card
            customer = replace(customer, payment_fingerprint=theirs.payment_fingerprint)
        elif kind == SAME_EMAIL_DOMAIN:  # an employee of the referrer
            customer = replace(customer, email=f"{rng.choice(_NAMES)}.staff@{_domain(referrer)}")

    subscriptions: list[SubscriptionPlan] = []
    if kind == RETURNING_CLIENT:  # a paying client last year, without a code; back with one
        family = rng.choice([VR, VA, CHAT])
        start = _signup_time(rng, year - 1, tz, last_day=180)
        months = rng.randint(2, 5)
        ended = _add_months_local(start, months, tz)
        subscriptions.append(
            SubscriptionPlan(
                f"{account}-s0",
                family,
                rng.choice(PRICES[family]),
                start,
                cancellation=Cancellation(ended - timedelta(days=3), ended, "switched_provider"),
            )
        )
    signup = _signup_time(rng, year, tz)
    families: tuple[str, ...] = _pick(rng, REFEREE_PLANS)
    churn = _churn(rng, signup, tz)
    addon_only = churn is not None and len(families) > 1 and rng.random() < 0.3
    for index, family in enumerate(families, start=1):
        # A second plan is bought at sign-up half of the time, otherwise added later.
        same_checkout = index == 1 or rng.random() < 0.5
        created = signup if same_checkout else signup + _days(rng, 10, 90)
        cancellation = None if index == 1 and addon_only else churn
        if cancellation is not None and cancellation.requested_at <= created:
            cancellation = None
        subscriptions.append(
            SubscriptionPlan(
                f"{account}-s{index}",
                family,
                rng.choice(PRICES[family]),
                created,
                code=code if same_checkout else None,
                discounted=index == 1 and code is not None and code.kind == "referrer",
                first_time_client=kind != NOT_FIRST_TIME,
                cancellation=cancellation,
            )
        )
    return AccountPlan(account, kind, customer, tuple(subscriptions))


def _weighted_referrer(rng: random.Random, referrers: list[AccountPlan]) -> AccountPlan:
    return rng.choices(referrers, weights=[r.weight for r in referrers])[0]


def _domain(account: AccountPlan) -> str:
    return (account.customer.email or "@").rsplit("@", 1)[1]


def _churn(rng: random.Random, signup: datetime, tz: ZoneInfo) -> Cancellation | None:
    """When (if ever, within two years) the client cancels; most cancellations take effect
    at the end of the paid month, some at once."""
    if rng.random() < EARLY_CHURN:
        requested = signup + _days(rng, 7, 55)
    else:
        months = 1
        while rng.random() >= MONTHLY_CHURN:
            months += 1
            if months > 24:
                return None
        requested = signup + timedelta(days=30 * months) + _days(rng, 0, 29)
    reason = rng.choice(CANCEL_REASONS)
    if rng.random() < IMMEDIATE_CANCELLATION:
        return Cancellation(requested, None, reason)
    k = 1
    while _add_months_local(signup, k, tz) <= requested:
        k += 1
    return Cancellation(requested, _add_months_local(signup, k, tz), reason)


def _days(rng: random.Random, low: int, high: int) -> timedelta:
    return timedelta(days=rng.randint(low, high), minutes=rng.randint(0, 600))


def _signup_time(rng: random.Random, year: int, tz: ZoneInfo, last_day: int = 366) -> datetime:
    """A business-hours moment of ``year`` (program time); weekends are quieter."""
    start, end = date(year, 1, 1), date(year + 1, 1, 1)
    day = start + timedelta(days=rng.randrange(min((end - start).days, last_day)))
    if day.weekday() >= 5 and rng.random() < 0.7:
        monday = day + timedelta(days=7 - day.weekday())
        day = monday if monday < end else day - timedelta(days=day.weekday() - 4)
    return _local(day, rng.randint(8, 17), rng.randint(0, 59), tz)


def _stats(plan: YearPlan) -> dict[str, int]:
    """Counts of what was generated, for the demo's header: kinds of account, code typing."""
    stats: Counter[str] = Counter(
        referrers=len(plan.referrers), partners=len(plan.partners), clients=len(plan.clients)
    )
    for account in (*plan.referrers, *plan.clients):
        signed_up = [s for s in account.subscriptions if s.created_at >= _year_start(plan)]
        typed = next((s.code for s in signed_up if s.code is not None), None)
        if account.kind == "referrer":
            if typed is not None:
                stats[SELF_REFERRAL] += 1
        else:
            stats[account.kind] += 1
        if signed_up:
            stats["code " + ("none" if typed is None else _code_label(typed))] += 1
    return dict(stats)


def _code_label(code: CodeUse) -> str:
    return code.style if code.kind == "referrer" else code.kind


def _year_start(plan: YearPlan) -> datetime:
    return _local(date(plan.year, 1, 1), 0, 0, plan.tz)


# --- rendering the events -----------------------------------------------------------------


class _EventIds:
    """Event ids derived from what the event is (its subscription, invoice...) and the seed,
    so an event has the same id however and whenever it is rendered."""

    def __init__(self, seed: int, year: int) -> None:
        self._namespace = uuid.uuid5(DEMO_NAMESPACE, f"{seed}:{year}")

    def __call__(self, what: str) -> str:
        return str(uuid.uuid5(self._namespace, what))


def billing_months(plan: YearPlan, codes: Mapping[str, str]) -> list[Month]:
    """The year plus TRAILING_MONTHS, month by month (the setup excluded).

    ``codes`` maps each referrer account to its active code (display form
    ``XXXX-XXXX``, as the consumer assigned it). Each month's messages are in
    business-time order; the year also carries a few broken messages and a
    few redeliveries of events already sent.
    """
    missing = sorted({a.account_id for a in plan.referrers} - set(codes))
    if missing:
        raise ValueError(f"no code for referrers {missing[:5]}")
    rng = random.Random(f"referrals-demo-render:{plan.seed}:{plan.year}")
    ids = _EventIds(plan.seed, plan.year)
    taken = frozenset(code_rules.normalise(c) for c in codes.values())
    messages = [
        message
        for account in (*plan.referrers, *plan.clients)
        for message in _account_messages(
            account, codes, ids, plan.tz, since=_year_start(plan), until=plan.horizon, taken=taken
        )
    ]
    messages += _bad_messages(rng, plan, ids)
    messages += _redeliveries(rng, messages, plan.horizon)

    starts = [_add_months(date(plan.year, 1, 1), k) for k in range(12 + TRAILING_MONTHS)]
    buckets: dict[date, list[Message]] = {start: [] for start in starts}
    for message in messages:
        buckets[message.at.astimezone(plan.tz).date().replace(day=1)].append(message)
    return [
        Month(start, tuple(sorted(buckets[start], key=lambda m: (m.at, m.redelivery))))
        for start in starts
    ]


def billing_currency(account_id: str) -> str:
    """Billing's currency of an account: one in ten is billed in CAD. Derived from the id,
    not drawn from the plan's random stream, so the rest of the year is unchanged; the
    rewards stay in the program currency whatever the account is billed in."""
    return "CAD" if zlib.crc32(account_id.encode()) % 10 == 0 else "USD"


def _account_messages(
    account: AccountPlan,
    codes: Mapping[str, str],
    ids: _EventIds,
    tz: ZoneInfo,
    *,
    since: datetime = _BEGINNING,
    until: datetime,
    taken: frozenset[str] = frozenset(),
) -> list[Message]:
    """The billing events of one account whose business time is in ``[since, until)``."""
    out: list[Message] = []
    key = account.account_id.encode()
    customer = account.customer
    currency = billing_currency(account.account_id)

    def within(at: datetime) -> bool:
        return since <= at < until

    for sub in account.subscriptions:
        if within(sub.created_at):
            event = bill.subscription_created(
                account.account_id,
                sub.subscription_id,
                sub.family,
                sub.created_at,
                code=_typed(sub.code, codes, taken),
                first_time_client=sub.first_time_client,
                email=customer.email,
                organization_id=customer.organization_id,
                payment_fingerprint=customer.payment_fingerprint,
                plan_id=f"{sub.family}-{sub.price_cents // 100}",
                currency=currency,
                event_id=ids(f"created:{sub.subscription_id}"),
            )
            out.append(_message(CREATED, key, event))
        cancel = sub.cancellation
        service_ends = until if cancel is None else (cancel.effective_at or cancel.requested_at)
        for k in range(1000):
            at = sub.created_at + timedelta(minutes=4) if k == 0 else _renewal(sub, k, tz)
            if at >= min(service_ends, until):
                break
            if not within(at):
                continue
            discount = min(REFEREE_DISCOUNT_CENTS, sub.price_cents) if sub.discounted else 0
            discount = discount if k == 0 else 0
            invoice = f"{sub.subscription_id}-in{k + 1:02d}"
            event = bill.invoice_paid(
                account.account_id,
                sub.subscription_id,
                invoice,
                sub.price_cents - discount,
                at,
                discount_cents=discount,
                currency=currency,
                event_id=ids(f"paid:{invoice}"),
            )
            out.append(_message(PAID, key, event))
        if cancel is not None and within(cancel.requested_at):
            event = bill.subscription_cancelled(
                account.account_id,
                sub.subscription_id,
                cancel.requested_at,
                effective_at=cancel.effective_at,
                reason=cancel.reason,
                event_id=ids(f"cancelled:{sub.subscription_id}"),
            )
            out.append(_message(CANCELLED, key, event))
    return out


def _renewal(sub: SubscriptionPlan, k: int, tz: ZoneInfo) -> datetime:
    """The k-th monthly renewal: the sign-up's day of month (up to the 28th) and time."""
    return _add_months_local(sub.created_at, k, tz)


def _typed(code: CodeUse | None, codes: Mapping[str, str], taken: frozenset[str]) -> str | None:
    """The text the client typed in the code field."""
    if code is None:
        return None
    if code.kind == "malformed":
        return code.text
    if code.kind == "unknown":
        text = code.text or ""
        while code_rules.normalise(text) in taken:  # by chance a real code: draw another
            text = code_rules.display(code_rules.generate(random.Random(text).getrandbits))
        return text
    shown = codes[code.referrer or ""]
    match code.style:
        case "lower case":
            return shown.lower()
        case "with spaces":
            return f" {shown.replace('-', ' ')} "
        case "no hyphen":
            return shown.replace("-", "")
        case "letters for digits":
            return shown.replace("0", "O").replace("1", "I")
    return shown


def _message(topic_type: str, key: bytes, event: dict[str, Any]) -> Message:
    at = datetime.fromisoformat(event["occurred_at"])
    return Message(topic_type, key, _dumps(event), at, event["event_id"])


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _bad_messages(rng: random.Random, plan: YearPlan, ids: _EventIds) -> list[Message]:
    """One message of each kind billing should never send; each ends in the dead-letter topic."""
    account = plan.clients[0].account_id
    sub = f"{account}-s1"

    def when(month: int) -> datetime:
        return _local(date(plan.year, month, rng.randint(1, 28)), 12, 0, plan.tz)

    def paid(month: int) -> dict[str, Any]:
        event: dict[str, Any] = bill.invoice_paid(
            account, sub, f"{sub}-x{month}", 4900, when(month), event_id=ids(f"bad:{month}")
        )
        return event

    created = bill.subscription_created(
        account, f"{account}-s9", CHAT, when(4), event_id=ids("bad:created")
    )
    cancelled = bill.subscription_cancelled(account, sub, when(8), event_id=ids("bad:cancelled"))
    as_string = paid(3)
    as_string["data"]["amount_paid_cents"] = "49.00"
    no_account = {
        **created,
        "data": {k: v for k, v in created["data"].items() if k != "account_id"},
    }
    oversized = {**created, "data": {**created["data"], "notes": "x" * 70_000}}
    broken = [
        (PAID, _dumps(paid(1))[:60], 1),  # truncated JSON
        (PAID, _dumps(as_string), 3),  # wrong type: dollars as a string
        (CREATED, _dumps(no_account), 4),  # a required field missing
        (PAID, _dumps({**paid(6), "schema_version": 2}), 6),  # newer than the reader knows
        (PAID, _dumps(cancelled), 8),  # a cancellation on the invoice topic
        (CREATED, _dumps(oversized), 10),  # over the 64 KiB limit
        (CANCELLED, b"PING", 11),  # not JSON at all
    ]
    return [
        Message(topic, account.encode(), value, when(month), None) for topic, value, month in broken
    ]


def _redeliveries(rng: random.Random, messages: list[Message], horizon: datetime) -> list[Message]:
    """Billing re-sends a handful of events (same bytes, same event id), minutes to days later."""
    valid = [m for m in messages if not m.bad]
    copies = []
    for original in rng.sample(valid, min(len(valid), max(5, len(valid) // 1000))):
        at = original.at + timedelta(minutes=rng.choice([1, 30, 60 * 24, 60 * 24 * 5]))
        if at < horizon:
            copies.append(replace(original, at=at, redelivery=True))
    return copies


# --- calendar helpers ---------------------------------------------------------------------


def _local(day: date, hour: int, minute: int, tz: ZoneInfo) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=tz).astimezone(UTC)


def _add_months(day: date, months: int) -> date:
    index = day.year * 12 + day.month - 1 + months
    return date(index // 12, index % 12 + 1, min(day.day, 28))


def _add_months_local(at: datetime, months: int, tz: ZoneInfo) -> datetime:
    """The same local time ``months`` later (day clamped to the 28th), in UTC."""
    local = at.astimezone(tz)
    day = _add_months(local.date(), months)
    return _local(day, local.hour, local.minute, tz)

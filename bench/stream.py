"""A reproducible, realistic mixed billing stream and the state it must produce.

Everything the consumer's final state is checked against is computed here from
the generator's own facts (an independent reading of docs/rules.md, not the
consumer's code), so a fast wrong answer fails the benchmark.

Mix of the messages of a stream of ``M`` (defaults, :class:`Mix`):

- 0.5 % bad messages (unparseable, wrong type, missing field, newer schema,
  event type on the wrong topic, NUL, oversized): each one a dead letter;
- 3 % redeliveries of an earlier valid event (same bytes, later in the stream);
- the remaining distinct valid events: 25 % ``subscription.created`` (30 % of
  them carry a code: mostly real codes, some typed sloppily, a few unknown or
  malformed), 60 % ``invoice.paid``, 15 % ``subscription.cancelled``.

Referees with a real code are sometimes ineligible by construction (same
organization, shared payment method, same email domain, not a first-time
client, self-referral), and some end ineligible naturally (an earlier payment).
"""

from __future__ import annotations

import json
import random
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from referral_devtools import synthetic as bill

T0 = datetime(2027, 1, 4, 16, tzinfo=UTC)
DAY = 86_400
CREATED, PAID, CANCELLED = 0, 1, 2
KIND_TYPES = ("subscription.created", "invoice.paid", "subscription.cancelled")
FAMILIES = ("virtual_receptionist", "voice_assistant", "chat", "outreach_campaign")
FAMILY_WEIGHTS = (0.35, 0.25, 0.25, 0.15)
QUALIFYING = frozenset({"virtual_receptionist", "voice_assistant"})
#: The only public mail domains the generator uses (docs/rules.md: they prove nothing).
PUBLIC_DOMAINS = frozenset({"gmail.com", "outlook.com"})
ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
MALFORMED_CODES = ("UUUU-UUUU", "ABC", "1234-5678-90", "REF 2027 XYZ!", "#?")
#: (outcome planned for a referee with a real code, share of them)
PLANNED_INELIGIBLE = (
    ("same_organization", 0.03),
    ("shared_payment_method", 0.03),
    ("same_email_domain", 0.03),
    ("existing_client", 0.03),
)


@dataclass(frozen=True)
class Mix:
    created: float = 0.25
    code_share: float = 0.30
    paid: float = 0.60
    cancelled: float = 0.15
    duplicates: float = 0.03
    bad: float = 0.005
    unknown_code_share: float = 0.04  # of code-bearing subscriptions
    malformed_code_share: float = 0.04
    self_referral_share: float = 0.005


@dataclass(frozen=True)
class ExpectedReferral:
    referrer: str
    status: str
    reason: str | None
    first_payment_invoice_id: str | None


@dataclass
class Expected:
    """What the consumer must end with after consuming the stream (and the referrers)."""

    messages: int = 0
    distinct_events: int = 0  # inbox rows
    duplicates: int = 0
    dead_letters: int = 0
    by_type: Counter[str] = field(default_factory=Counter)  # distinct events by type
    accounts: int = 0  # accounts (and active codes) the stream adds
    subscriptions: int = 0
    invoices: int = 0
    cancellations: int = 0
    code_outcomes: Counter[str] = field(default_factory=Counter)  # none/known/unknown/malformed
    referrals: dict[str, ExpectedReferral] = field(default_factory=dict)
    bad_kinds: Counter[str] = field(default_factory=Counter)

    def referral_counts(self) -> Counter[tuple[str, str]]:
        return Counter((r.status, r.reason or "") for r in self.referrals.values())

    def summary(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "distinct_events": self.distinct_events,
            "duplicates": self.duplicates,
            "dead_letters": self.dead_letters,
            "by_type": dict(self.by_type),
            "accounts": self.accounts,
            "subscriptions": self.subscriptions,
            "invoices": self.invoices,
            "cancellations": self.cancellations,
            "code_outcomes": dict(self.code_outcomes),
            "referrals": len(self.referrals),
            "referrals_by_status": {
                f"{s}/{r}" if r else s: n for (s, r), n in sorted(self.referral_counts().items())
            },
            "bad_kinds": dict(self.bad_kinds),
        }


@dataclass
class Stream:
    """Messages in publish order: (kind, key, value); ``tracked[i]`` is the event id of a
    message that must add an inbox row (first delivery of a valid event), else None."""

    messages: list[tuple[int, bytes, bytes]]
    tracked: list[str | None]
    expected: Expected


# -- referrers ---------------------------------------------------------------


def referrer_id(i: int) -> str:
    return f"R{i}"


def _referrer_customer(account: str) -> tuple[str, str, str]:
    """(email, organization_id, payment_fingerprint) of a referrer account."""
    return f"owner@{account.lower()}.example", f"org-{account}", f"fp-{account}"


def referrer_events(n: int, seed: int = 7) -> list[dict[str, Any]]:
    """``subscription.created`` of ``n`` referrer accounts (no code): the consumer gives
    each one a code, which the stream then uses."""
    rng = random.Random(seed)
    events = []
    for i in range(n):
        account = referrer_id(i)
        email, org, fp = _referrer_customer(account)
        events.append(
            bill.subscription_created(
                account,
                f"{account}-s",
                "virtual_receptionist",
                T0 - timedelta(days=400),
                email=email,
                organization_id=org,
                payment_fingerprint=fp,
                event_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            )
        )
    return events


def normalise(code: str) -> str | None:
    """Code normalisation as docs/rules.md states it (not the consumer's): None when malformed."""
    text = code.replace(" ", "").replace("-", "").upper()
    text = text.replace("O", "0").replace("I", "1").replace("L", "1")
    if len(text) != 8 or any(c not in ALPHABET for c in text):
        return None
    return text


# -- the stream --------------------------------------------------------------


@dataclass
class _Sub:
    account: str
    sub_id: str
    created: int  # seconds after T0
    family: str
    code: str | None  # as typed
    referrer: str | None  # owner of a known code
    first_time: bool
    email: str | None
    org: str | None
    fp: str | None


def _domain(email: str | None) -> str | None:
    if not email or "@" not in email:
        return None
    return email.rsplit("@", 1)[1].lower()


def _private_domain(sub: _Sub) -> str | None:
    d = _domain(sub.email)
    return None if d is None or d in PUBLIC_DOMAINS else d


def _at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


def generate(
    messages: int,
    codes: dict[str, str],
    *,
    seed: int = 1,
    mix: Mix = Mix(),
    track: bool = False,
    account_prefix: str = "A",
) -> Stream:
    """A stream of ``messages`` messages whose referees use ``codes`` (referrer -> code)."""
    if not codes:
        raise ValueError("the stream needs at least one referrer code")
    rng = random.Random(seed)
    ids = random.Random(seed + 1)

    def eid() -> str:
        return str(uuid.UUID(int=ids.getrandbits(128), version=4))

    n_bad = round(messages * mix.bad)
    n_dup = round(messages * mix.duplicates)
    n_unique = messages - n_bad - n_dup
    n_created = round(n_unique * mix.created)
    n_cancelled = round(n_unique * mix.cancelled)
    n_paid = n_unique - n_created - n_cancelled
    if n_cancelled > n_created:
        raise ValueError("the mix cancels more subscriptions than it creates")

    referrers = sorted(codes)
    known = {normalise(c) for c in codes.values()}
    referrer_customer = {r: _referrer_customer(r) for r in referrers}

    # Subscriptions: a few self-referrals on referrer accounts, the rest on new
    # accounts (one in eleven accounts holds a second, later subscription).
    n_self = min(len(referrers), round(n_created * mix.code_share * mix.self_referral_share))
    n_new = n_created - n_self
    n_accounts = max(1, round(n_new / 1.1))
    subs: list[_Sub] = []
    first_created: dict[str, int] = {}
    for j in range(n_new):
        if j < n_accounts:
            account = f"{account_prefix}{j}"
            created = rng.randrange(0, 300 * DAY)
            first_created[account] = created
            sub_id = f"{account}-s"
        else:
            account = f"{account_prefix}{j - n_accounts}"
            created = first_created[account] + rng.randrange(DAY, 90 * DAY)
            sub_id = f"{account}-s2"
        family = rng.choices(FAMILIES, FAMILY_WEIGHTS)[0]
        email = (
            f"{account.lower()}@gmail.com"
            if rng.random() < 0.25
            else f"billing@{account.lower()}.example"
        )
        org = f"org-{account}" if rng.random() < 0.9 else None
        fp = f"fp-{account}" if rng.random() < 0.9 else None
        sub = _Sub(account, sub_id, created, family, None, None, True, email, org, fp)
        if rng.random() < mix.code_share:
            roll = rng.random()
            if roll < mix.unknown_code_share:
                while (code := "".join(rng.choice(ALPHABET) for _ in range(8))) in known:
                    pass
                sub.code = f"{code[:4]}-{code[4:]}"
            elif roll < mix.unknown_code_share + mix.malformed_code_share:
                sub.code = rng.choice(MALFORMED_CODES)
            else:
                referrer = rng.choice(referrers)
                sub.code = _as_typed(codes[referrer], rng)
                sub.referrer = referrer
                _plan_ineligibility(sub, referrer_customer[referrer], rng)
        subs.append(sub)
    for referrer in rng.sample(referrers, n_self):
        email, org, fp = referrer_customer[referrer]
        subs.append(
            _Sub(
                referrer,
                f"{referrer}-self",
                rng.randrange(0, 300 * DAY),
                "voice_assistant",
                codes[referrer],
                referrer,
                True,
                email,
                org,
                fp,
            )
        )

    # Invoices: spread n_paid over the subscriptions (2-3 each by default); the first
    # one is sometimes $0 (the referee discount covers it).
    base, extra = divmod(n_paid, len(subs))
    with_extra = set(rng.sample(range(len(subs)), extra))
    invoices: dict[str, list[tuple[int, str, int, str]]] = {}  # account -> (at, id, cents, sub)
    events: list[tuple[int, int, dict[str, Any]]] = []  # (business time, kind, event)
    for j, sub in enumerate(subs):
        events.append((sub.created, CREATED, _created_event(sub, eid())))
        for k in range(base + (j in with_extra)):
            at = sub.created + k * 30 * DAY + rng.randrange(0, 3600)
            cents = 0 if k == 0 and rng.random() < 0.3 else rng.choice((4900, 9900, 19900, 29900))
            invoice_id = f"{sub.sub_id}-i{k}"
            invoices.setdefault(sub.account, []).append((at, invoice_id, cents, sub.sub_id))
            events.append(
                (
                    at,
                    PAID,
                    bill.invoice_paid(
                        sub.account,
                        sub.sub_id,
                        invoice_id,
                        cents,
                        _at(at),
                        discount_cents=10000 if k == 0 and sub.code else 0,
                        event_id=eid(),
                    ),
                )
            )
    for j in rng.sample(range(len(subs)), n_cancelled):
        sub = subs[j]
        at = sub.created + rng.randrange(10 * DAY, 200 * DAY)
        effective = _at(at + 30 * DAY) if rng.random() < 0.5 else None
        reason = rng.choice((None, "too_expensive", "switched_provider", "closed_business"))
        events.append(
            (
                at,
                CANCELLED,
                bill.subscription_cancelled(
                    sub.account,
                    sub.sub_id,
                    _at(at),
                    effective_at=effective,
                    reason=reason,
                    event_id=eid(),
                ),
            )
        )
    events.sort(key=lambda e: e[0])

    expected = Expected(
        messages=messages,
        distinct_events=n_unique,
        duplicates=n_dup,
        dead_letters=n_bad,
        by_type=Counter(
            {
                "subscription.created": n_created,
                "invoice.paid": n_paid,
                "subscription.cancelled": n_cancelled,
            }
        ),
        accounts=n_accounts,
        subscriptions=len(subs),
        invoices=n_paid,
        cancellations=n_cancelled,
    )
    for sub in subs:
        outcome = (
            "none"
            if sub.code is None
            else "known"
            if sub.referrer
            else "malformed"
            if normalise(sub.code) is None
            else "unknown"
        )
        expected.code_outcomes[outcome] += 1
    expected.referrals = _expected_referrals(subs, invoices, referrer_customer)

    # Publish order: business time; redeliveries a little later than the original;
    # bad messages anywhere.
    ordered: list[tuple[float, int, bytes, bytes, str | None]] = []
    for i, (_, kind, event) in enumerate(events):
        key = event["data"]["account_id"].encode()
        ordered.append((i, kind, key, json.dumps(event).encode(), event["event_id"]))
    for i in rng.sample(range(n_unique), n_dup) if n_dup <= n_unique else []:
        _, kind, key, value, _ = ordered[i]
        ordered.append((i + rng.randrange(1, 5000) + 0.5, kind, key, value, None))
    for b in range(n_bad):
        kind, value, name = _bad_message(rng, events, b)
        expected.bad_kinds[name] += 1
        key = f"{account_prefix}{rng.randrange(n_accounts)}".encode()
        ordered.append((rng.uniform(0, n_unique), kind, key, value, None))
    ordered.sort(key=lambda m: m[0])
    return Stream(
        [(kind, key, value) for _, kind, key, value, _ in ordered],
        [t for *_, t in ordered] if track else [],
        expected,
    )


def _as_typed(display: str, rng: random.Random) -> str:
    """A real code the way people type it: mostly as shown, sometimes sloppily."""
    roll = rng.random()
    if roll < 0.7:
        return display
    if roll < 0.8:
        return display.lower()
    if roll < 0.9:
        return display.replace("-", " ")
    return f" {display.replace('0', 'O').replace('1', 'l')} "


def _plan_ineligibility(sub: _Sub, referrer: tuple[str, str, str], rng: random.Random) -> None:
    email, org, fp = referrer
    roll = rng.random()
    edge = 0.0
    for reason, share in PLANNED_INELIGIBLE:
        edge += share
        if roll < edge:
            if reason == "same_organization":
                sub.org = org
            elif reason == "shared_payment_method":
                sub.fp = fp
            elif reason == "same_email_domain":
                sub.email = f"ops@{_domain(email)}"
            else:
                sub.first_time = False
            return


def _created_event(sub: _Sub, event_id: str) -> dict[str, Any]:
    event: dict[str, Any] = bill.subscription_created(
        sub.account,
        sub.sub_id,
        sub.family,
        _at(sub.created),
        code=sub.code,
        first_time_client=sub.first_time,
        email=sub.email,
        organization_id=sub.org,
        payment_fingerprint=sub.fp,
        event_id=event_id,
    )
    return event


def _expected_referrals(
    subs: list[_Sub],
    invoices: dict[str, list[tuple[int, str, int, str]]],
    referrer_customer: dict[str, tuple[str, str, str]],
) -> dict[str, ExpectedReferral]:
    """Attribution and eligibility as docs/rules.md states them, over the generated facts."""
    by_account: dict[str, list[_Sub]] = {}
    for sub in subs:
        by_account.setdefault(sub.account, []).append(sub)
    # Referrers' facts: their own subscription (published before the stream) + any in it.
    referrer_subs: dict[str, list[_Sub]] = {}
    for account, (email, org, fp) in referrer_customer.items():
        base = _Sub(
            account,
            f"{account}-s",
            -400 * DAY,
            "virtual_receptionist",
            None,
            None,
            True,
            email,
            org,
            fp,
        )
        referrer_subs[account] = [base, *by_account.get(account, [])]
    family = {s.sub_id: s.family for s in subs}
    out: dict[str, ExpectedReferral] = {}
    for account, own in by_account.items():
        candidates = [s for s in own if s.referrer is not None]
        if not candidates:
            continue
        touch = min(candidates, key=lambda s: (s.created, s.sub_id))
        assert touch.referrer is not None
        mine = referrer_subs.get(account, own)
        theirs = referrer_subs[touch.referrer]
        paid = [i for i in invoices.get(account, []) if i[2] > 0]

        def shared(attr: Any, mine: list[_Sub] = mine, theirs: list[_Sub] = theirs) -> bool:
            values = {v for s in mine if (v := attr(s)) is not None}
            return any(attr(s) in values for s in theirs)

        reason: str | None = None
        if touch.referrer == account:
            reason = "self_referral"
        elif shared(lambda s: s.org):
            reason = "same_organization"
        elif shared(lambda s: s.fp):
            reason = "shared_payment_method"
        elif shared(_private_domain):
            reason = "same_email_domain"
        elif not touch.first_time or any(at < touch.created for at, *_ in paid):
            reason = "existing_client"
        first = min(
            (
                (at, invoice_id)
                for at, invoice_id, _, sub_id in paid
                if family[sub_id] in QUALIFYING and at >= touch.created
            ),
            default=None,
        )
        status = "ineligible" if reason else "qualified" if first else "pending"
        out[account] = ExpectedReferral(touch.referrer, status, reason, first[1] if first else None)
    return out


def _bad_message(
    rng: random.Random, events: list[tuple[int, int, dict[str, Any]]], n: int
) -> tuple[int, bytes, str]:
    """(kind of topic, bytes, name) of the ``n``-th message the consumer must dead-letter."""
    _, kind, event = rng.choice(events)
    doc = json.loads(json.dumps(event))
    name = rng.choice(
        (
            "unparseable",
            "not_an_object",
            "missing_field",
            "wrong_type",
            "newer_schema",
            "wrong_topic",
            "bad_event_id",
            "nul",
            "numeric_time",
        )
    )
    if n % 100 == 99:
        name = "oversized"
    if name == "unparseable":
        return kind, b'{"event_id": "' + doc["event_id"].encode() + b'", "data": {', name
    if name == "not_an_object":
        return kind, b'["subscription.created", 1]', name
    if name == "missing_field":
        del doc["data"]["account_id"]
    elif name == "wrong_type":
        doc["data"]["subscription_id"] = 12345
    elif name == "newer_schema":
        doc["schema_version"] = 2
    elif name == "wrong_topic":
        kind = (kind + 1) % 3
    elif name == "bad_event_id":
        doc["event_id"] = "not-a-uuid"
    elif name == "nul":
        doc["data"]["account_id"] = "A\u0000"
    elif name == "numeric_time":
        doc["occurred_at"] = 1_800_000_000
    elif name == "oversized":
        doc["data"]["subscription_id"] = "x" * 70_000
    if name != "bad_event_id":
        doc["event_id"] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    return kind, json.dumps(doc).encode(), name

"""The benchmark's stream generator: proportions, and expected counts that add up."""

from __future__ import annotations

import json
from collections import Counter
from types import SimpleNamespace

from bench import stream
from referral_consumer.ingest import Parsed, parse_record
from referral_runtime.settings import Topics

CODES = {stream.referrer_id(i): f"{i:04d}-ABCD".replace("0", "Z") for i in range(50)}
TOPICS = Topics()
KIND_TOPIC = [TOPICS.subscription_created, TOPICS.invoice_paid, TOPICS.subscription_cancelled]


def _generate(n: int = 20_000) -> stream.Stream:
    return stream.generate(n, CODES, seed=5, track=True)


def test_mix_matches_the_issue() -> None:
    s = _generate()
    e = s.expected
    assert len(s.messages) == e.messages == 20_000
    assert e.dead_letters == 100  # 0.5 %
    assert e.duplicates == 600  # 3 %
    assert e.distinct_events == 20_000 - 100 - 600
    assert e.by_type["subscription.created"] == round(e.distinct_events * 0.25)
    assert e.by_type["subscription.cancelled"] == round(e.distinct_events * 0.15)
    assert sum(e.by_type.values()) == e.distinct_events
    with_code = e.code_outcomes["known"] + e.code_outcomes["unknown"] + e.code_outcomes["malformed"]
    assert abs(with_code / e.subscriptions - 0.30) < 0.03
    assert e.code_outcomes["unknown"] > 0
    assert e.code_outcomes["malformed"] > 0
    assert len(e.bad_kinds) >= 8


def test_every_message_is_what_the_expected_counts_say() -> None:
    s = _generate()
    seen: set[str] = set()
    outcomes: Counter[str] = Counter()
    for i, (kind, key, value) in enumerate(s.messages):
        record = SimpleNamespace(
            topic=KIND_TOPIC[kind], partition=0, offset=i, key=key, value=value
        )
        parsed = parse_record(record, TOPICS.billing, 64 * 1024)
        if not isinstance(parsed, Parsed):
            outcomes["dead"] += 1
            assert s.tracked[i] is None
        elif str(parsed.event.event_id) in seen:
            outcomes["duplicate"] += 1
            assert s.tracked[i] is None
        else:
            seen.add(str(parsed.event.event_id))
            outcomes["new"] += 1
            assert s.tracked[i] == str(parsed.event.event_id)
            assert json.loads(value)["data"]["account_id"].encode() == key
    e = s.expected
    assert outcomes == {"new": e.distinct_events, "duplicate": e.duplicates, "dead": e.dead_letters}


def test_expected_referrals_follow_the_rules() -> None:
    e = _generate().expected
    counts = e.referral_counts()
    assert 0 < len(e.referrals) <= e.code_outcomes["known"]
    for reason in ("same_organization", "shared_payment_method", "same_email_domain",
                   "existing_client", "self_referral"):  # fmt: skip
        assert counts[("ineligible", reason)] > 0, reason
    assert counts[("qualified", "")] > 0 and counts[("pending", "")] > 0
    for referee, r in e.referrals.items():
        assert r.referrer in CODES
        assert (r.status == "ineligible") == (r.reason is not None)
        if r.status == "qualified":
            assert r.first_payment_invoice_id and r.first_payment_invoice_id.startswith(referee)


def test_same_seed_same_stream() -> None:
    a = stream.generate(3000, CODES, seed=9)
    b = stream.generate(3000, CODES, seed=9)
    assert a.messages == b.messages
    assert a.expected.referrals == b.expected.referrals

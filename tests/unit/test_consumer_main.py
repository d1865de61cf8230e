"""The consumer's collector budget rests on a measured count: keep the count true."""

from __future__ import annotations

import asyncio
import gc
import json
from datetime import timedelta

from referral_consumer.main import TRACKED_PER_RECORD, young_generation_size
from referral_consumer.parser import BatchParser
from referral_devtools import synthetic as bill
from tests.unit.records import TOPICS, Rec, T


def test_a_parsed_batch_holds_no_more_tracked_objects_per_record_than_budgeted() -> None:
    # subscription.created is the widest event (envelope, data and customer models).
    records = [
        Rec(
            "created",
            json.dumps(
                bill.subscription_created(
                    f"A{n}",
                    f"S{n}",
                    "virtual_receptionist",
                    T + timedelta(seconds=n),
                    code="ABCD-EFGH",
                    email=f"owner{n}@example.test",
                    organization_id=f"org-{n}",
                    payment_fingerprint=f"fp-{n}",
                )
            ).encode(),
            offset=n,
        )
        for n in range(2000)
    ]
    parser = BatchParser(TOPICS, max_message_bytes=65536)
    gc.collect()
    gc.disable()
    try:
        before = len(gc.get_objects())
        batch = asyncio.run(parser.parse_interleaved(records))
        per_record = (len(gc.get_objects()) - before) / len(records)
    finally:
        gc.enable()
    assert len(batch.plan.events) == len(records)
    assert 1 < per_record <= TRACKED_PER_RECORD  # > 1: the count sees the records


def test_the_young_generation_holds_three_default_batches() -> None:
    assert young_generation_size(5000) == 180_000
    assert young_generation_size(100) == 50_000  # never below the service's old floor

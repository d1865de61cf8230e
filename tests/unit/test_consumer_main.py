"""The consumer's start: its collector budget rests on a measured count (keep the count
true), and its pool must leave a connection beside the batch transactions."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from referral_consumer.main import TRACKED_PER_RECORD, young_generation_size
from referral_consumer.parser import BatchParser
from referral_devtools import synthetic as bill
from referral_runtime.settings import ConsumerSettings, load_settings
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


def test_a_pool_the_transactions_in_flight_would_take_whole_is_refused_at_start() -> None:
    env = {
        **os.environ,
        "REFERRALS_ENV_FILE": "/nonexistent",
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
        "DATABASE_URL": "postgresql://u:p@127.0.0.1:1/db",
        "CONSUMER_TRANSACTIONS_IN_FLIGHT": "3",
        "DB_POOL_SIZE": "3",
    }
    exe = Path(sys.executable).with_name("referral-consumer")
    done = subprocess.run([exe], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "DB_POOL_SIZE=3 is taken whole by CONSUMER_TRANSACTIONS_IN_FLIGHT=3" in done.stderr
    assert "set DB_POOL_SIZE to at least 4" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_pool_with_a_connection_beside_the_transactions_is_accepted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:p@127.0.0.1:1/db")
    monkeypatch.setenv("CONSUMER_TRANSACTIONS_IN_FLIGHT", "3")
    monkeypatch.setenv("DB_POOL_SIZE", "4")
    settings = load_settings(ConsumerSettings)
    assert (settings.db_pool_size, settings.consumer_transactions_in_flight) == (4, 3)

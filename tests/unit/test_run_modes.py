"""Log coordinates, `--help` without configuration, and `faststream run --factory` logging."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import structlog

from referral_consumer.logfields import batch_fields, event_id_of, record_fields
from referral_runtime.settings import Settings
from tests.unit.records import Rec


def test_batch_fields_give_first_and_last_offsets_per_partition() -> None:
    records = [Rec("created", b"{}", offset=o, partition=p) for o, p in [(7, 0), (3, 0), (9, 1)]]
    fields = batch_fields(records)
    assert fields["records"] == 3
    assert [(o["partition"], o["first"], o["last"]) for o in fields["offsets"]] == [
        (0, 3, 7),
        (1, 9, 9),
    ]


def test_record_fields_carry_the_event_id_and_nothing_else_of_the_body() -> None:
    record = Rec("created", b'{"event_id": "e-1", "customer": {"email": "a@b.c"}}', offset=4)
    fields = record_fields(record)
    assert fields["event_id"] == "e-1" and fields["offset"] == 4
    assert "a@b.c" not in repr(fields)
    assert event_id_of(Rec("created", b"\xff not json", offset=0)) is None
    assert event_id_of(Rec("created", b"[1]", offset=0)) is None


def test_every_console_script_answers_help_without_configuration() -> None:
    env = {
        k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS"}
    }
    env["REFERRALS_ENV_FILE"] = "/nonexistent"
    bindir = Path(sys.executable).parent
    for script in ("referral-consumer", "payout-scheduler"):
        done = subprocess.run(
            [str(bindir / script), "--help"], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert "usage:" in done.stdout and "configuration error" not in done.stderr


def test_create_app_configures_logging_like_the_console_script() -> None:
    from referral_consumer.app import create_app

    root = logging.getLogger()
    saved_structlog, saved_handlers, saved_level = (
        structlog.get_config(),
        root.handlers[:],
        root.level,
    )
    try:
        root.handlers.clear()
        create_app(Settings(kafka_bootstrap_servers="127.0.0.1:1", database_url="postgresql://x/y"))
        assert len(root.handlers) == 1
        assert isinstance(root.handlers[0].formatter, structlog.stdlib.ProcessorFormatter)
        renderer = structlog.get_config()["processors"][-1]
        assert isinstance(renderer, structlog.processors.JSONRenderer)
    finally:
        structlog.configure(**saved_structlog)
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)

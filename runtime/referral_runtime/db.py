"""asyncpg pool construction and the transient-error classification used for retries."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from referral_runtime.settings import Settings

#: Errors that mean "the database is unavailable for now", not "the data is wrong".
TRANSIENT_DB_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ConnectionError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.PostgresConnectionError,
    TimeoutError,
)


#: What handlers receive: a plain connection or one checked out of a pool.
Conn = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def create_pool(dsn: str, *, size: int = 4, **kwargs: Any) -> asyncpg.Pool:
    """A pool whose connections decode jsonb to Python objects."""
    return await asyncpg.create_pool(
        dsn,
        min_size=1,
        max_size=size,
        init=_init_connection,
        command_timeout=60,
        **kwargs,
    )


async def open_pool(settings: Settings) -> asyncpg.Pool:
    """The service pool: ``DATABASE_URL``, ``DB_POOL_SIZE`` connections."""
    return await create_pool(settings.database_url, size=settings.db_pool_size)


async def connect(dsn: str) -> asyncpg.Connection:
    """A single connection configured like the pool's."""
    conn = await asyncpg.connect(dsn)
    await _init_connection(conn)
    return conn

"""asyncpg pool construction and the transient-error classification used for retries."""

from __future__ import annotations

import json
import re
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


#: The role referral-web switches to on each connection: it may select what the pages and
#: the read API show and count landing visits, nothing else (migration 0013).
WEB_ROLE = "referral_web"
_ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def create_pool(
    dsn: str, *, size: int = 4, role: str | None = None, **kwargs: Any
) -> asyncpg.Pool:
    """A pool whose connections decode jsonb to Python objects.

    With ``role``, every connection runs ``SET ROLE`` to it first, so its
    statements have that role's privileges only, whatever the login's are
    (the pool's reset between uses keeps the role: ``RESET ALL`` leaves it).
    """
    init = _init_connection
    if role is not None:
        if not _ROLE_NAME.match(role):
            raise ValueError(f"not a plain role name: {role!r}")

        async def init(conn: asyncpg.Connection) -> None:
            await conn.execute(f"set role {role}")
            await _init_connection(conn)

    return await asyncpg.create_pool(
        dsn,
        min_size=1,
        max_size=size,
        init=init,
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

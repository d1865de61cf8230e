"""Support handles the outbox rows set aside because the broker refused them for good.

A row set aside stays in the table with its bytes and the reason. Support lists
them (``referrals outbox set-aside``), puts one back in the queue once the cause
is fixed (``retry``: the relay publishes it within a poll), or dismisses it when
it is not to be published (``dismiss``: typically the dead-letter copy of an
oversized billing message, whose original stays on its topic). Rows are never
deleted; every change is audited.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from referral_ops.support import InvalidInput, audit, checked_actor


@dataclass(frozen=True)
class SetAsideRow:
    id: int
    topic: str
    size: int  # bytes of the payload
    created_at: datetime
    set_aside_at: datetime
    reason: str
    headers: dict[str, Any]
    dismissed_at: datetime | None


async def set_aside_rows(
    conn: asyncpg.Connection, *, include_dismissed: bool = False
) -> list[SetAsideRow]:
    """The rows set aside, oldest first (dismissed ones only with ``include_dismissed``)."""
    rows = await conn.fetch(
        """select id, topic, octet_length(payload) as size, created_at, set_aside_at,
                  set_aside_reason, headers::text as headers, dismissed_at
           from outbox
           where set_aside_at is not null and ($1 or dismissed_at is null)
           order by id""",
        include_dismissed,
    )
    return [
        SetAsideRow(
            r["id"],
            r["topic"],
            r["size"],
            r["created_at"],
            r["set_aside_at"],
            r["set_aside_reason"],
            json.loads(r["headers"]),
            r["dismissed_at"],
        )
        for r in rows
    ]


async def _lock(conn: asyncpg.Connection, ids: Sequence[int]) -> list[asyncpg.Record]:
    if not ids:
        raise InvalidInput("give at least one outbox row id (see `referrals outbox set-aside`)")
    rows = await conn.fetch(
        """select id, topic, set_aside_reason, dismissed_at from outbox
           where id = any($1::bigint[]) and set_aside_at is not null
           order by id for update""",
        list(ids),
    )
    missing = sorted(set(ids) - {r["id"] for r in rows})
    if missing:
        raise InvalidInput(
            f"no outbox row set aside with id {', '.join(map(str, missing))} "
            "(see `referrals outbox set-aside`); nothing was changed"
        )
    return rows


async def retry(conn: asyncpg.Connection, ids: Sequence[int], *, actor: str) -> int:
    """Put rows set aside back in the queue (their cause is fixed); returns how many."""
    actor = checked_actor(actor)
    async with conn.transaction():
        rows = await _lock(conn, ids)
        await conn.execute(
            """update outbox set set_aside_at = null, set_aside_reason = null,
                   dismissed_at = null
               where id = any($1::bigint[])""",
            [r["id"] for r in rows],
        )
        for r in rows:
            await audit(
                conn,
                actor,
                "outbox.retry",
                str(r["id"]),
                {"topic": r["topic"], "was_set_aside_for": r["set_aside_reason"]},
            )
    return len(rows)


async def dismiss(conn: asyncpg.Connection, ids: Sequence[int], *, actor: str, note: str) -> int:
    """Record that rows set aside were handled and are not to be published; returns how many."""
    actor = checked_actor(actor)
    note = note.strip()
    if not note:
        raise InvalidInput("say why the rows are not to be published: --note TEXT")
    async with conn.transaction():
        rows = await _lock(conn, ids)
        already = [r["id"] for r in rows if r["dismissed_at"] is not None]
        if already:
            raise InvalidInput(
                f"outbox row {', '.join(map(str, already))} was dismissed already; "
                "nothing was changed"
            )
        await conn.execute(
            "update outbox set dismissed_at = now() where id = any($1::bigint[])",
            [r["id"] for r in rows],
        )
        for r in rows:
            await audit(
                conn,
                actor,
                "outbox.dismiss",
                str(r["id"]),
                {"topic": r["topic"], "set_aside_for": r["set_aside_reason"], "note": note},
            )
    return len(rows)

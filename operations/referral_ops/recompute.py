"""Support recomputes the undecided referrals under the rules installed now (`referrals recompute`).

``referrals migrate`` does it once when a release changes the rules; this is the
same recomputation on demand, with a dry run that shows what would change, and
an audit record of the real run.
"""

from __future__ import annotations

from zoneinfo import ZoneInfo

import asyncpg

from referral_ops.support import audit, checked_actor
from referral_program.table import RULES_VERSION
from referral_runtime.recompute import Recomputation, recompute_undecided


async def recompute(
    conn: asyncpg.Connection, *, actor: str, tz: ZoneInfo, dry_run: bool
) -> Recomputation:
    """Recompute every undecided referral (each chunk its own transaction); with ``dry_run``
    nothing is written. A real run is recorded in the audit log with its counts."""
    actor = checked_actor(actor)
    done = await recompute_undecided(conn, tz, dry_run=dry_run)
    if not dry_run:
        await audit(
            conn,
            actor,
            "referrals.recompute",
            f"rules v{RULES_VERSION}",
            {
                "examined": done.examined,
                "changed": len(done.changes),
                "by_change": {f"{b} -> {a}": n for (b, a), n in sorted(done.by_kind().items())},
            },
        )
    return done

"""Erasing a user: behaviour deleted, the user's link in logs removed, an audit row kept.

Aggregates survive: decisions, impressions, clicks and conversions stay (they are the advertisers'
counts and the bandit's propensities) with their user column set to NULL. The users row becomes a
tombstone (`erased_at`), which every training query excludes. Keys erased: the consented key and
the no-consent day keys of the last `SESSION_KEY_DAYS` days (keys of explicit session ids cannot
be derived from the user id and expire with the session anyway).

Rows of the user that are not in Postgres yet (queued in some process's log writer, or spooled on
its disk while Postgres was away) are reached too: every key gets a tombstone, committed first, and
the log writer stores a row from before its key's tombstone without the user, or not at all for
behaviour events (adserve/events/writer.py). Then the erasure waits for every writer transaction
that may have started before the tombstones were visible (`WRITE_BARRIER_KEY`), and only then
deletes and unlinks, so no row slips between the two.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import msgspec

from adserve.events.writer import WRITE_BARRIER_KEY

if TYPE_CHECKING:
    import asyncpg

    from adserve.signing.identity import UserKeys

__all__ = ["SESSION_KEY_DAYS", "ErasureResult", "erase_user"]

SESSION_KEY_DAYS = 31


class ErasureResult(msgspec.Struct, kw_only=True):
    user_key: str
    events_deleted: int
    decisions_unlinked: int
    impressions_unlinked: int
    clicks_unlinked: int
    conversions_unlinked: int
    erased_at: datetime


def _count(status: str) -> int:
    return int(status.split()[-1])


async def erase_user(
    connection: asyncpg.Connection,
    user_keys: UserKeys,
    user_id: str,
    requested_by_key_id: int | None,
    requested_by_role: str,
    now: datetime | None = None,
) -> ErasureResult:
    now = now or datetime.now(UTC)
    key = user_keys.consented(user_id)
    keys = [key] + [
        user_keys.session(user_id, None, now - timedelta(days=d)) for d in range(SESSION_KEY_DAYS)
    ]
    async with connection.transaction():
        # Tombstones first, committed: from here on, log writers keep the user out of new rows.
        await connection.execute(
            "INSERT INTO users (id, consent, erased_at) SELECT unnest($1::text[]), false, $2 "
            "ON CONFLICT (id) DO UPDATE SET consent = false, segments = '{}', erased_at = $2",
            keys,
            now,
        )
    async with connection.transaction():
        # Every writer transaction that began before the tombstones were visible has ended.
        await connection.execute("SELECT pg_advisory_xact_lock($1)", WRITE_BARRIER_KEY)
    async with connection.transaction():
        counts = {
            "events_deleted": _count(
                await connection.execute("DELETE FROM user_events WHERE user_id = ANY($1)", keys)
            )
        }
        for table in ("decisions", "impressions", "clicks", "conversions"):
            status = await connection.execute(
                f"UPDATE {table} SET user_id = NULL WHERE user_id = ANY($1)", keys
            )
            counts[f"{table}_unlinked"] = _count(status)
        await connection.execute(
            "INSERT INTO erasures (user_id, requested_by_key_id, requested_by_role, erased_at, counts) "
            "VALUES ($1, $2, $3, $4, $5::jsonb)",
            key,
            requested_by_key_id,
            requested_by_role,
            now,
            msgspec.json.encode(counts).decode(),
        )
        # serving processes drop their in-memory copy of the user's behaviour at commit
        await connection.execute(
            "SELECT pg_notify('adserve_user_state', string_agg('e ' || k, E'\\n')) FROM unnest($1::text[]) k",
            keys,
        )
    return ErasureResult(user_key=key, erased_at=now, **counts)

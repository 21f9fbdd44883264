"""Erasing a user: behaviour deleted, the user's link in logs removed, an audit row kept.

Aggregates survive: decisions, impressions, clicks and conversions stay (they are the advertisers'
counts and the bandit's propensities) with their user column set to NULL. The users row becomes a
tombstone (`erased_at`), which every training query excludes. Keys erased: the consented key and
the no-consent day keys of the last `SESSION_KEY_DAYS` days (keys of explicit session ids cannot
be derived from the user id and expire with the session anyway).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    import asyncpg

    from adserve.serving.identity import UserKeys

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
            "INSERT INTO users (id, consent, erased_at) VALUES ($1, false, $2) "
            "ON CONFLICT (id) DO UPDATE SET consent = false, segments = '{}', erased_at = $2",
            key,
            now,
        )
        await connection.execute(
            "INSERT INTO erasures (user_id, requested_by_key_id, requested_by_role, erased_at, counts) "
            "VALUES ($1, $2, $3, $4, $5::jsonb)",
            key,
            requested_by_key_id,
            requested_by_role,
            now,
            msgspec.json.encode(counts).decode(),
        )
    return ErasureResult(user_key=key, erased_at=now, **counts)

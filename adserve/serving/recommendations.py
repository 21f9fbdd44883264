"""Product recommendations from the interest model's next-item head, fresh to the last event.

The user's history comes from the process's user state (`user_state.py`: kept true by Postgres
notifications, so an event posted a moment before, to any process, counts). Without consent or without a trained model the answer is the most
viewed items of the last week, and says so in `source`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal

import msgspec

from adserve.domain import EventType

if TYPE_CHECKING:
    import asyncpg

    from adserve.serving.user_state import UserStateCache

__all__ = ["Recommendation", "Recommendations", "recommend"]

POPULAR_SQL = """
SELECT item_id, count(*) AS n FROM user_events
WHERE ts > $1 AND item_id IS NOT NULL AND NOT (item_id = ANY($2::text[]))
GROUP BY item_id ORDER BY n DESC, item_id LIMIT $3
"""


class Recommendation(msgspec.Struct, kw_only=True):
    item_id: str
    score: float


class Recommendations(msgspec.Struct, kw_only=True):
    items: list[Recommendation]
    source: Literal["model", "popular"]
    model_version: str | None = None


async def recommend(
    pool: asyncpg.Pool, user_states: UserStateCache, interest, user_key: str | None, k: int
) -> Recommendations:
    history = ()
    if user_key is not None:
        state = await user_states.get(user_key, True, [], datetime.now(UTC))
        history = state.history
    purchased = sorted({e.item_id for e in history if e.event_type is EventType.PURCHASE and e.item_id})
    if interest is not None and history:
        ranked = interest.recommend(history, k, exclude_purchased=True, user_key=user_key)
        return Recommendations(
            items=[Recommendation(item_id=item, score=float(score)) for item, score in ranked],
            source="model",
            model_version=interest.version,
        )
    async with pool.acquire(timeout=2.0) as connection:
        rows = await connection.fetch(POPULAR_SQL, datetime.now(UTC) - timedelta(days=7), purchased, k)
    total = sum(row["n"] for row in rows) or 1
    return Recommendations(
        items=[Recommendation(item_id=row["item_id"], score=row["n"] / total) for row in rows],
        source="popular",
    )

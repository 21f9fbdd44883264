"""Training and evaluation data from Postgres, as the plain domain rows `interest/` and `bandit/` take.

Point-in-time: a logged decision keeps the context and candidate scores it was served with; the
behaviour history a click example sees is cut at the decision time by `interest.data` itself.
Users marked erased are excluded from every data set.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import msgspec

from adserve.db.rows import candidate_from_row, columns
from adserve.domain import BehaviourEvent, Candidate, DecisionContext, EventType

if TYPE_CHECKING:
    from collections.abc import Iterable

    import asyncpg

__all__ = [
    "LoggedImpression",
    "decision_context",
    "load_impressions",
    "load_sequences",
    "store_imported_events",
]

SEQUENCES_SQL = """
SELECT e.user_id, e.event_type, e.ts, e.item_id, e.category, e.price, e.query
FROM user_events e
LEFT JOIN users u ON u.id = e.user_id
WHERE e.ts >= $1 AND e.ts < $2 AND u.erased_at IS NULL
ORDER BY e.user_id, e.ts
"""

IMPRESSIONS_SQL = """
SELECT d.id, d.ts, d.user_id, d.context, d.candidate_ids, d.scores, d.pmf, d.chosen_creative_id,
       p.key AS placement, p.position,
       cr.campaign_id, cr.advertiser_id, cr.category, cr.brand, cr.product_ids, cr.price,
       c.pricing, c.bid,
       EXISTS (SELECT 1 FROM clicks k WHERE k.decision_id = d.id AND k.valid) AS clicked
FROM impressions i
JOIN decisions d ON d.id = i.decision_id
JOIN placements p ON p.id = d.placement_id
JOIN creatives cr ON cr.id = d.chosen_creative_id
JOIN campaigns c ON c.id = cr.campaign_id
LEFT JOIN users u ON u.id = d.user_id
WHERE d.ts >= $1 AND d.ts < $2 AND u.erased_at IS NULL
ORDER BY d.ts
"""


async def load_sequences(
    connection: asyncpg.Connection, since: datetime, until: datetime
) -> dict[str, list[BehaviourEvent]]:
    """user key → behaviour events, oldest first."""
    sequences: dict[str, list[BehaviourEvent]] = {}
    for row in await connection.fetch(SEQUENCES_SQL, since, until):
        sequences.setdefault(row["user_id"], []).append(
            BehaviourEvent(
                event_type=EventType(row["event_type"]),
                ts=row["ts"].timestamp(),
                item_id=row["item_id"],
                category=row["category"],
                price=None if row["price"] is None else float(row["price"]),
                query=row["query"],
            )
        )
    return sequences


@dataclass(frozen=True, slots=True)
class LoggedImpression:
    """An impression with the decision it came from: context at serving time, the chosen
    candidate, and whether it drew a valid click."""

    decision_ts: float
    user_key: str | None
    context: DecisionContext
    candidate: Candidate
    clicked: bool


def decision_context(row: asyncpg.Record) -> DecisionContext:
    """The context a logged decision was served with, from its row (context JSON, ts, placement)."""
    raw = row["context"]
    context = msgspec.json.decode(raw) if isinstance(raw, str | bytes) else (raw or {})
    return DecisionContext(
        placement=row["placement"],
        now=row["ts"].timestamp(),
        page_category=context.get("page_category"),
        keywords=tuple(context.get("keywords") or ()),
        device=context.get("device"),
        geo=context.get("geo"),
        hour=int(context.get("hour") or 0),
        position=row["position"],
        user_key=row["user_id"] if context.get("consent") else None,
    )


async def load_impressions(
    connection: asyncpg.Connection, since: datetime, until: datetime
) -> list[LoggedImpression]:
    impressions = []
    for row in await connection.fetch(IMPRESSIONS_SQL, since, until):
        context = decision_context(row)
        impressions.append(
            LoggedImpression(
                decision_ts=row["ts"].timestamp(),
                user_key=context.user_key,
                context=context,
                candidate=candidate_from_row(row, creative_id="chosen_creative_id"),
                clicked=row["clicked"],
            )
        )
    return impressions


async def store_imported_events(
    connection: asyncpg.Connection, rows: Iterable[tuple], batch_size: int = 10_000
) -> int:
    """COPY historical events (rows of user_events' columns) in batches; repeated imports of the
    same file store each event once (ids are derived from the file's content)."""
    names = list(columns("user_events"))
    total = 0
    batch: list[tuple] = []

    async def flush() -> None:
        nonlocal total
        async with connection.transaction():
            await connection.execute(
                "CREATE TEMP TABLE IF NOT EXISTS import_stage (LIKE user_events) ON COMMIT DELETE ROWS"
            )
            await connection.copy_records_to_table("import_stage", records=batch, columns=names)
            status = await connection.execute(
                "INSERT INTO user_events SELECT * FROM import_stage ON CONFLICT DO NOTHING"
            )
        total += int(status.split()[-1])
        batch.clear()

    for row in rows:
        batch.append(row)
        if len(batch) >= batch_size:
            await flush()
    if batch:
        await flush()
    return total

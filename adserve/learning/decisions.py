"""Logged decisions as the bandit learns from them: rewarded `decisions` rows → `LoggedDecision`.

The context comes from the decision's logged context JSON and its placement; candidates from
`candidate_ids` joined to today's creatives and campaigns. Their bids at serving time are not
logged, so a re-priced campaign's candidates carry today's bid; the pmf, propensity and scores are
the logged ones, so importance weights stay exact and only the features of a re-priced campaign
move. A decision one of whose candidates was deleted is skipped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from adserve.bandit.records import LoggedDecision
from adserve.db.rows import candidate_from_row
from adserve.domain import Candidate
from adserve.learning.datasets import decision_context

if TYPE_CHECKING:
    import uuid

    import asyncpg

    from adserve.db.engine import Database

__all__ = [
    "CANDIDATES_SQL",
    "EPOCH",
    "FAR_FUTURE",
    "LoggedBatch",
    "fetch_logged",
    "load_logged_decisions",
]

log = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
FAR_FUTURE = datetime(9999, 1, 1, tzinfo=UTC)

LOGGED_SQL = """
SELECT d.id, d.ts, d.user_id, d.context, d.candidate_ids, d.scores, d.pmf, d.chosen_creative_id,
       d.scorer_version, COALESCE(p.key, 'placement-' || d.placement_id) AS placement, COALESCE(p.position, 0) AS position,
       r.clicked, r.revenue, r.conversion_value
FROM rewards r
JOIN decisions d ON d.id = r.decision_id
LEFT JOIN placements p ON p.id = d.placement_id
WHERE r.decision_ts >= $1::timestamptz AND r.decision_ts < $2::timestamptz
  AND (NOT $3::bool OR NOT r.learned)
ORDER BY r.decision_ts, r.decision_id
LIMIT $4::bigint
"""

CANDIDATES_SQL = """
SELECT cr.id, cr.campaign_id, cr.advertiser_id, cr.category, cr.brand, cr.product_ids, cr.price,
       c.pricing, c.bid
FROM creatives cr JOIN campaigns c ON c.id = cr.campaign_id
WHERE cr.id = ANY($1::bigint[])
"""


@dataclass(frozen=True, slots=True)
class LoggedBatch:
    """The records that could be rebuilt, and the decision id of every reward read (the learner
    marks all of them learned, rebuilt or not, so a malformed row is not read forever)."""

    records: list[LoggedDecision]
    reward_ids: list[uuid.UUID]


async def fetch_logged(
    connection: asyncpg.Connection,
    since: datetime,
    until: datetime,
    only_unlearned: bool,
    limit: int | None,
) -> LoggedBatch:
    """Rewarded decisions in [since, until), oldest first, on an open connection."""
    rows = await connection.fetch(LOGGED_SQL, since, until, only_unlearned, limit)
    creative_ids = sorted({cid for row in rows for cid in row["candidate_ids"] or ()})
    candidates: dict[int, Candidate] = {}
    if creative_ids:
        for row in await connection.fetch(CANDIDATES_SQL, creative_ids):
            candidates[row["id"]] = candidate_from_row(row)
    records, skipped = [], 0
    for row in rows:
        record = _record(row, candidates)
        if record is None:
            skipped += 1
        else:
            records.append(record)
    if skipped:
        log.info(
            "%d logged decisions skipped (a candidate creative was deleted or the row is malformed)", skipped
        )
    return LoggedBatch(records, [row["id"] for row in rows])


def _record(row: asyncpg.Record, candidates: dict[int, Candidate]) -> LoggedDecision | None:
    ids = list(row["candidate_ids"] or ())
    if row["chosen_creative_id"] not in ids or any(cid not in candidates for cid in ids):
        return None
    try:
        return LoggedDecision(
            context=decision_context(row),
            candidates=tuple(candidates[cid] for cid in ids),
            click_probabilities=tuple(float(s) for s in row["scores"]),
            pmf=tuple(float(p) for p in row["pmf"]),
            chosen=ids.index(row["chosen_creative_id"]),
            clicked=bool(row["clicked"]),
            revenue=float(row["revenue"] or 0.0),
            conversion_value=float(row["conversion_value"] or 0.0),
            decision_id=row["id"],
            scorer_version=row["scorer_version"],
        )
    except (ValueError, TypeError):
        return None


async def load_logged_decisions(
    database: Database,
    since: datetime | None = None,
    until: datetime | None = None,
    only_unlearned: bool = False,
    limit: int | None = None,
) -> list[LoggedDecision]:
    """Rewarded decisions in [since, until) as `LoggedDecision` records, oldest first; clicked,
    revenue and conversion value come from each decision's `rewards` row."""
    async with database.pool.acquire() as connection:
        batch = await fetch_logged(connection, since or EPOCH, until or FAR_FUTURE, only_unlearned, limit)
    return batch.records

"""The reward join: decisions whose outcome is known → `rewards` rows (idempotent).

Which bid is revenue. Decisions log the candidates' ids, scores and pmf but not their bids; the
signed tracking token does carry the price as served, and the tracking layer stores it as the
charged `cost` of the impression (CPM: price/1000) or the valid click (CPC: the bid). The join
uses those charged costs, so a campaign whose bid or pricing changed after serving is rewarded
at the price it was served at. Only where nothing was charged (no impression or valid click:
revenue 0 for CPC either way) does it fall back to the campaign's current pricing and bid.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from adserve.bandit.rewards import (
    DEFAULT_REWARD_WINDOW_S,
    ClickEvent,
    ConversionEvent,
    ServedDecision,
    join_rewards,
)
from adserve.domain import Pricing

if TYPE_CHECKING:
    import uuid

    import asyncpg

    from adserve.db.engine import Database

__all__ = ["JOIN_LOOKBACK_S", "RewardJoin", "join_rewards_once"]

# decisions older than this that were never joined (the learner was down for longer) stay unlabelled
JOIN_LOOKBACK_S = 7 * 86400.0

PENDING_SQL = """
SELECT d.id, d.ts, d.chosen_creative_id, c.pricing, c.bid,
       i.cost AS impression_cost, i.decision_id IS NOT NULL AS impressed
FROM decisions d
LEFT JOIN rewards r ON r.decision_id = d.id
LEFT JOIN impressions i ON i.decision_id = d.id
  -- an impression follows its decision: the bound lets Postgres skip older partitions
  AND i.ts >= $1::timestamptz - make_interval(secs => $3::float8 + 3600)
LEFT JOIN campaigns c ON c.id = d.campaign_id
WHERE r.decision_id IS NULL AND d.chosen_creative_id IS NOT NULL
  AND d.ts >= $1::timestamptz - make_interval(secs => $3::float8)
  AND d.ts < $1::timestamptz - make_interval(secs => $2::float8)
ORDER BY d.ts
LIMIT $4::bigint
"""

INSERT_REWARDS_SQL = """
INSERT INTO rewards (decision_id, decision_ts, clicked, conversion_value, revenue, learned)
SELECT id, ts, clicked, conversion_value::numeric, revenue::numeric, false
FROM unnest($1::uuid[], $2::timestamptz[], $3::bool[], $4::float8[], $5::float8[])
     AS t(id, ts, clicked, conversion_value, revenue)
ON CONFLICT (decision_id) DO NOTHING
"""


@dataclass(frozen=True, slots=True)
class RewardJoin:
    """One join: rows stored, decisions examined, and the clicks and revenue of those labelled."""

    joined: int = 0
    pending: int = 0
    clicked: int = 0
    revenue: float = 0.0


async def join_rewards_once(
    database: Database,
    now: datetime | None = None,
    reward_window_s: float = DEFAULT_REWARD_WINDOW_S,
    batch_max: int = 100_000,
) -> RewardJoin:
    """Labels every decision whose outcome is known at `now` and stores its `rewards` row.

    A decision is joined once its window has closed (default reward: no click) or as soon as a
    valid click inside the window is known; invalid clicks and clicks after the window never
    count (`adserve.bandit.rewards`). Inserts are ON CONFLICT DO NOTHING, so concurrent or
    repeated joins store each decision once (`joined` counts the rows this call stored).
    """
    at = now or datetime.now(UTC)
    lookback = max(JOIN_LOOKBACK_S, 2 * reward_window_s)
    async with database.pool.acquire() as connection:
        pending = await connection.fetch(PENDING_SQL, at, float(reward_window_s), lookback, batch_max)
        if not pending:
            return RewardJoin()
        ids = [row["id"] for row in pending]
        click_rows = await connection.fetch(
            "SELECT decision_id, ts, valid, cost FROM clicks WHERE decision_id = ANY($1::uuid[])", ids
        )
        conversion_rows = await connection.fetch(
            "SELECT decision_id, value FROM conversions WHERE decision_id = ANY($1::uuid[])", ids
        )
        clicks = [ClickEvent(r["decision_id"], r["ts"].timestamp(), r["valid"]) for r in click_rows]
        click_cost: dict[uuid.UUID, float] = {}
        for row in click_rows:
            if row["valid"] and row["cost"]:
                click_cost.setdefault(row["decision_id"], float(row["cost"]))
        decisions = [_served(row, click_cost.get(row["id"])) for row in pending]
        conversions = [ConversionEvent(r["decision_id"], float(r["value"] or 0.0)) for r in conversion_rows]
        rewards = join_rewards(decisions, clicks, at.timestamp(), reward_window_s, conversions)
        if not rewards:
            return RewardJoin(pending=len(pending))
        status = await connection.execute(
            INSERT_REWARDS_SQL,
            [r.decision_id for r in rewards],
            [datetime.fromtimestamp(r.decided_at, UTC) for r in rewards],
            [r.clicked for r in rewards],
            [r.conversion_value for r in rewards],
            [r.revenue for r in rewards],
        )
    return RewardJoin(
        joined=int(status.split()[-1]),
        pending=len(pending),
        clicked=sum(r.clicked for r in rewards),
        revenue=round(sum(r.revenue for r in rewards), 6),
    )


def _served(row: asyncpg.Record, valid_click_cost: float | None) -> ServedDecision:
    """The decision as served: pricing and bid from what was charged, else the campaign's today."""
    impression_cost = float(row["impression_cost"] or 0.0)
    if impression_cost > 0:
        pricing, bid = Pricing.CPM, impression_cost * 1000.0
    elif valid_click_cost:
        pricing, bid = Pricing.CPC, valid_click_cost
    elif row["pricing"] is not None:
        pricing, bid = Pricing(row["pricing"]), float(row["bid"])
    else:  # campaign deleted and nothing charged: nothing earned
        pricing, bid = Pricing.CPC, 0.0
    return ServedDecision(
        decision_id=row["id"],
        decided_at=row["ts"].timestamp(),
        creative_id=row["chosen_creative_id"],
        pricing=pricing,
        bid=bid,
        impressed=bool(row["impressed"]),
    )

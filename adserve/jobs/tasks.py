"""The scheduled jobs. Each takes a `JobContext` (and an explicit `now` where time matters) and
returns the figures recorded on its `job_runs` row. All are idempotent: running one twice, or
again after a crash, gives the same state.

No catalogue/pacing job: every serving process already refreshes its catalogue snapshot every
`serving.catalog_refresh_s`, and the log writer moves `spend_today` in the same transaction that
stores the costs, so a scheduled pass would only repeat that work.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import asyncpg

from adserve.db.engine import Database
from adserve.jobs.gate import TrainingRun, train_and_gate
from adserve.jobs.partitions import purge_table
from adserve.learning.learner import learn_once
from adserve.learning.rewards import join_rewards_once

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from adserve.settings import Settings

__all__ = [
    "JobContext",
    "learn_bandit",
    "purge_user_events",
    "reset_daily_budgets",
    "retrain_interest",
    "rollup_daily_stats",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class JobContext:
    url: str  # for the training process, which opens its own connections
    settings: Settings
    pool: asyncpg.Pool
    sessionmaker: async_sessionmaker[AsyncSession]

    @property
    def database(self) -> Database:
        return Database(self.pool, self.sessionmaker)


def _now(now: datetime | None) -> datetime:
    return now or datetime.now(UTC)


async def _by_campaign(
    connection: asyncpg.Connection,
    job: str,
    apply: Callable[[int | None], Awaitable[int]],
    campaign_ids: Callable[[], Awaitable[list[int]]],
) -> tuple[int, list[dict[str, Any]]]:
    """Runs `apply(None)`, one statement over every campaign, in a transaction; if Postgres rejects
    it, `apply(campaign_id)` for each campaign in its own transaction, so one bad row (a time zone
    Postgres does not know, a value out of range) cannot stop the others. Returns the rows changed
    and the campaigns that failed, which are logged and land in the run's figures.

    A statement timeout is not retried campaign by campaign: it would only take longer.
    """
    try:
        async with connection.transaction():
            return await apply(None), []
    except asyncpg.QueryCanceledError:
        raise
    except asyncpg.PostgresError as exc:
        log.warning("%s: one pass over all campaigns failed (%s); campaign by campaign", job, _describe(exc))
    changed, failed = 0, []
    for campaign_id in await campaign_ids():
        try:
            async with connection.transaction():
                changed += await apply(campaign_id)
        except asyncpg.QueryCanceledError:
            raise
        except asyncpg.PostgresError as exc:
            log.error("%s: campaign %d skipped: %s", job, campaign_id, _describe(exc))
            failed.append({"campaign_id": campaign_id, "error": _describe(exc)})
    return changed, failed


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


def _count(status: str) -> int:
    return int(status.split()[-1])


def _campaign_sql(template: str, column: str, parameter: int) -> tuple[str, str]:
    """(statement over every campaign, statement over one). The one-campaign filter is a plain
    equality, so the plan fetches that campaign's row by its key before any expression over the
    row (such as ``AT TIME ZONE timezone``) is evaluated; a bad row elsewhere is never read."""
    return (
        template.format(campaign_filter=""),
        template.format(campaign_filter=f"AND {column} = ${parameter}"),
    )


RESET_SQL, RESET_ONE_SQL = _campaign_sql(
    """
    UPDATE campaigns
    SET spend_today = 0, spend_day = ($1::timestamptz AT TIME ZONE timezone)::date
    WHERE spend_day < ($1::timestamptz AT TIME ZONE timezone)::date {campaign_filter}
    """,
    "id",
    2,
)


# Buckets no serving process counts any more (adserve/serving/catalog.py counts one until a
# minute after its tokens' TTL); a further minute of margin.
RESERVATIONS_EXPIRED_SQL = """
DELETE FROM budget_reservations
WHERE served_minute < $1::timestamptz - make_interval(secs => $2 + 120) OR amount <= 0
"""


async def reset_daily_budgets(
    pool: asyncpg.Pool, now: datetime | None = None, reservation_ttl_s: float | None = None
) -> dict[str, Any]:
    """At local midnight in each campaign's timezone: spend_today = 0, spend_day = local today.

    Only campaigns whose spend_day is before their local today change, so it runs every minute
    and is a no-op between midnights. The log writer's own day rollover agrees with it. A campaign
    whose row Postgres rejects is skipped and reported under "failed"; the others still reset.
    With `reservation_ttl_s` (the token TTL) it also deletes budget reservations that have lapsed
    (serving already ignores them; this only keeps the table small).
    """
    now = _now(now)
    released: dict[str, Any] = {}
    if reservation_ttl_s is not None:
        status = await pool.execute(RESERVATIONS_EXPIRED_SQL, now, float(reservation_ttl_s))
        released = {"reservations_deleted": _count(status)}
    async with pool.acquire() as connection:

        async def apply(campaign_id: int | None) -> int:
            if campaign_id is None:
                return _count(await connection.execute(RESET_SQL, now))
            return _count(await connection.execute(RESET_ONE_SQL, now, campaign_id))

        async def campaign_ids() -> list[int]:
            return [row["id"] for row in await connection.fetch("SELECT id FROM campaigns ORDER BY id")]

        reset, failed = await _by_campaign(connection, "budget_reset", apply, campaign_ids)
    return {"reset": reset, **released, **({"failed": failed} if failed else {})}


ROLLUP_TEMPLATE = """
WITH facts AS (
    SELECT d.ts, d.campaign_id, d.chosen_creative_id AS creative_id, d.placement_id,
           1 AS decisions, 0 AS impressions, 0 AS clicks, 0 AS invalid_clicks,
           0 AS conversions, 0::numeric AS conversion_value, 0::numeric AS spend,
           0::numeric AS unbilled
    FROM decisions d
    WHERE d.ts >= $3 AND d.ts < $4 AND d.chosen_creative_id IS NOT NULL AND d.campaign_id IS NOT NULL
    UNION ALL
    SELECT i.ts, i.campaign_id, i.creative_id, i.placement_id, 0, 1, 0, 0, 0, 0, i.cost, i.unbilled
    FROM impressions i
    WHERE i.ts >= $3 AND i.ts < $4
    UNION ALL
    SELECT k.ts, k.campaign_id, k.creative_id, k.placement_id, 0, 0,
           CASE WHEN k.valid THEN 1 ELSE 0 END, CASE WHEN k.valid THEN 0 ELSE 1 END,
           0, 0, CASE WHEN k.valid THEN k.cost ELSE 0 END, CASE WHEN k.valid THEN k.unbilled ELSE 0 END
    FROM clicks k
    WHERE k.ts >= $3 AND k.ts < $4
      AND k.campaign_id IS NOT NULL AND k.creative_id IS NOT NULL AND k.placement_id IS NOT NULL
    UNION ALL
    SELECT v.ts, d.campaign_id, d.chosen_creative_id, d.placement_id, 0, 0, 0, 0, 1, v.value, 0, 0
    FROM conversions v JOIN decisions d ON d.id = v.decision_id
    WHERE v.ts >= $3 AND v.ts < $4 AND d.chosen_creative_id IS NOT NULL AND d.campaign_id IS NOT NULL
),
local AS (
    SELECT (f.ts AT TIME ZONE c.timezone)::date AS day, f.*, c.advertiser_id
    FROM facts f JOIN campaigns c ON c.id = f.campaign_id
    WHERE true {campaign_filter}
)
INSERT INTO daily_stats (day, campaign_id, creative_id, placement_id, advertiser_id, decisions,
                         impressions, clicks, invalid_clicks, conversions, conversion_value, spend,
                         unbilled)
SELECT day, campaign_id, creative_id, placement_id, advertiser_id, sum(decisions), sum(impressions),
       sum(clicks), sum(invalid_clicks), sum(conversions), sum(conversion_value), sum(spend),
       sum(unbilled)
FROM local
WHERE day BETWEEN $1 AND $2
GROUP BY day, campaign_id, creative_id, placement_id, advertiser_id
ON CONFLICT (day, campaign_id, creative_id, placement_id) DO UPDATE SET
    advertiser_id = EXCLUDED.advertiser_id, decisions = EXCLUDED.decisions,
    impressions = EXCLUDED.impressions, clicks = EXCLUDED.clicks,
    invalid_clicks = EXCLUDED.invalid_clicks, conversions = EXCLUDED.conversions,
    conversion_value = EXCLUDED.conversion_value, spend = EXCLUDED.spend, unbilled = EXCLUDED.unbilled
"""


ROLLUP_SQL, ROLLUP_ONE_SQL = _campaign_sql(ROLLUP_TEMPLATE, "c.id", 5)
ROLLUP_DELETE_SQL, ROLLUP_DELETE_ONE_SQL = _campaign_sql(
    "DELETE FROM daily_stats WHERE day BETWEEN $1 AND $2 {campaign_filter}", "campaign_id", 3
)

# Campaigns a rollup touches: every campaign, and those of rows already rolled up in the range.
ROLLUP_CAMPAIGNS_SQL = """
SELECT id FROM campaigns UNION SELECT campaign_id FROM daily_stats WHERE day BETWEEN $1 AND $2 ORDER BY 1
"""


async def rollup_daily_stats(pool: asyncpg.Pool, days: int, now: datetime | None = None) -> dict[str, Any]:
    """Recomputes daily_stats for the last `days` local days (each campaign's timezone).

    The touched days are deleted and rebuilt from the raw logs in one transaction, so a rerun
    never double counts and late clicks or conversions land on their day at the next run. A
    campaign whose rows Postgres rejects keeps its previous figures and is reported under
    "failed"; the others are still rolled up.
    """
    now = _now(now)
    first_day = (now - timedelta(days=days)).date()
    last_day = (now + timedelta(days=1)).date()
    # Raw rows a day either side of the UTC range cover every timezone's local day.
    since = datetime.combine(first_day, datetime.min.time(), UTC) - timedelta(days=1)
    until = datetime.combine(last_day, datetime.min.time(), UTC) + timedelta(days=1)
    async with pool.acquire() as connection:

        async def apply(campaign_id: int | None) -> int:
            if campaign_id is None:
                await connection.execute(ROLLUP_DELETE_SQL, first_day, last_day)
                return _count(await connection.execute(ROLLUP_SQL, first_day, last_day, since, until))
            await connection.execute(ROLLUP_DELETE_ONE_SQL, first_day, last_day, campaign_id)
            status = await connection.execute(ROLLUP_ONE_SQL, first_day, last_day, since, until, campaign_id)
            return _count(status)

        async def campaign_ids() -> list[int]:
            rows = await connection.fetch(ROLLUP_CAMPAIGNS_SQL, first_day, last_day)
            return [row["id"] for row in rows]

        rows, failed = await _by_campaign(connection, "rollup", apply, campaign_ids)
    return {
        "from": first_day.isoformat(),
        "to": last_day.isoformat(),
        "rows": rows,
        **({"failed": failed} if failed else {}),
    }


async def purge_user_events(
    pool: asyncpg.Pool, retention_days: int, now: datetime | None = None
) -> dict[str, Any]:
    """Drops the user_events partitions older than `retention_days` (adserve/jobs/partitions.py)."""
    return await purge_table(pool, "user_events", retention_days, now)


async def retrain_interest(context: JobContext) -> dict[str, Any]:
    """Trains a challenger in a separate process (warm start from the champion), then gates it."""
    run = TrainingRun.scheduled(context.settings.jobs)
    retrained = await train_and_gate(context.database, context.url, run, context.settings)
    decision = retrained.decision
    if decision is None:
        return {"skipped": retrained.skipped}
    return {
        "version": retrained.version,
        "champion": retrained.champion,
        "promoted": decision.promote,
        "reason": decision.reason,
        "holdout": retrained.holdout,
        "click_examples": retrained.click_examples,
    }


async def learn_bandit(context: JobContext) -> dict[str, Any]:
    """The bandit's learning loop: label what the reward window closed on, then one VW step."""
    database, settings = context.database, context.settings
    joined = await join_rewards_once(database, reward_window_s=settings.bandit.reward_window_s)
    step = await learn_once(database, settings)
    if step.skipped is not None:
        learned: dict[str, Any] = {"skipped": step.skipped}
    elif step.registered is None:
        learned = {"learned": 0}
    else:
        row = step.registered
        learned = {
            "version": row.version,
            "status": row.status,
            "learned": row.metrics.get("examples"),
            "examples_learned": row.metrics.get("examples_learned"),
        }
    return {"join": asdict(joined), "learn": learned}

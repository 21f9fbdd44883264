"""The scheduled jobs. Each takes a `JobContext` (and an explicit `now` where time matters) and
returns the figures recorded on its `job_runs` row. All are idempotent: running one twice, or
again after a crash, gives the same state.

No catalogue/pacing job: every serving process already refreshes its catalogue snapshot every
`serving.catalog_refresh_s`, and the log writer moves `spend_today` in the same transaction that
stores the costs, so a scheduled pass would only repeat that work.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adserve.jobs.gate import apply_gate
from adserve.learning.bandit import join_rewards_once, learn_once
from adserve.learning.registry import Registry

if TYPE_CHECKING:
    import asyncpg
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

PURGE_BATCH = 10_000


@dataclass(frozen=True, slots=True)
class JobContext:
    url: str
    settings: Settings
    pool: asyncpg.Pool
    sessionmaker: async_sessionmaker[AsyncSession]


def _now(now: datetime | None) -> datetime:
    return now or datetime.now(UTC)


async def reset_daily_budgets(pool: asyncpg.Pool, now: datetime | None = None) -> dict[str, Any]:
    """At local midnight in each campaign's timezone: spend_today = 0, spend_day = local today.

    Only campaigns whose spend_day is before their local today change, so it runs every minute
    and is a no-op between midnights. The log writer's own day rollover agrees with it.
    """
    status = await pool.execute(
        """
        UPDATE campaigns
        SET spend_today = 0, spend_day = ($1::timestamptz AT TIME ZONE timezone)::date
        WHERE spend_day < ($1::timestamptz AT TIME ZONE timezone)::date
        """,
        _now(now),
    )
    return {"reset": int(status.split()[-1])}


ROLLUP_SQL = """
WITH facts AS (
    SELECT d.ts, d.campaign_id, d.chosen_creative_id AS creative_id, d.placement_id,
           1 AS decisions, 0 AS impressions, 0 AS clicks, 0 AS invalid_clicks,
           0 AS conversions, 0::numeric AS conversion_value, 0::numeric AS spend
    FROM decisions d
    WHERE d.ts >= $3 AND d.ts < $4 AND d.chosen_creative_id IS NOT NULL AND d.campaign_id IS NOT NULL
    UNION ALL
    SELECT i.ts, i.campaign_id, i.creative_id, i.placement_id, 0, 1, 0, 0, 0, 0, i.cost
    FROM impressions i
    WHERE i.ts >= $3 AND i.ts < $4
    UNION ALL
    SELECT k.ts, k.campaign_id, k.creative_id, k.placement_id, 0, 0,
           CASE WHEN k.valid THEN 1 ELSE 0 END, CASE WHEN k.valid THEN 0 ELSE 1 END,
           0, 0, CASE WHEN k.valid THEN k.cost ELSE 0 END
    FROM clicks k
    WHERE k.ts >= $3 AND k.ts < $4
      AND k.campaign_id IS NOT NULL AND k.creative_id IS NOT NULL AND k.placement_id IS NOT NULL
    UNION ALL
    SELECT v.ts, d.campaign_id, d.chosen_creative_id, d.placement_id, 0, 0, 0, 0, 1, v.value, 0
    FROM conversions v JOIN decisions d ON d.id = v.decision_id
    WHERE v.ts >= $3 AND v.ts < $4 AND d.chosen_creative_id IS NOT NULL AND d.campaign_id IS NOT NULL
),
local AS (
    SELECT (f.ts AT TIME ZONE c.timezone)::date AS day, f.*, c.advertiser_id
    FROM facts f JOIN campaigns c ON c.id = f.campaign_id
)
INSERT INTO daily_stats (day, campaign_id, creative_id, placement_id, advertiser_id, decisions,
                         impressions, clicks, invalid_clicks, conversions, conversion_value, spend)
SELECT day, campaign_id, creative_id, placement_id, advertiser_id, sum(decisions), sum(impressions),
       sum(clicks), sum(invalid_clicks), sum(conversions), sum(conversion_value), sum(spend)
FROM local
WHERE day BETWEEN $1 AND $2
GROUP BY day, campaign_id, creative_id, placement_id, advertiser_id
ON CONFLICT (day, campaign_id, creative_id, placement_id) DO UPDATE SET
    advertiser_id = EXCLUDED.advertiser_id, decisions = EXCLUDED.decisions,
    impressions = EXCLUDED.impressions, clicks = EXCLUDED.clicks,
    invalid_clicks = EXCLUDED.invalid_clicks, conversions = EXCLUDED.conversions,
    conversion_value = EXCLUDED.conversion_value, spend = EXCLUDED.spend
"""


async def rollup_daily_stats(pool: asyncpg.Pool, days: int, now: datetime | None = None) -> dict[str, Any]:
    """Recomputes daily_stats for the last `days` local days (each campaign's timezone).

    The touched days are deleted and rebuilt from the raw logs in one transaction, so a rerun
    never double counts and late clicks or conversions land on their day at the next run.
    """
    now = _now(now)
    first_day = (now - timedelta(days=days)).date()
    last_day = (now + timedelta(days=1)).date()
    # Raw rows a day either side of the UTC range cover every timezone's local day.
    since = datetime.combine(first_day, datetime.min.time(), UTC) - timedelta(days=1)
    until = datetime.combine(last_day, datetime.min.time(), UTC) + timedelta(days=1)
    async with pool.acquire() as connection, connection.transaction():
        await connection.execute("DELETE FROM daily_stats WHERE day BETWEEN $1 AND $2", first_day, last_day)
        status = await connection.execute(ROLLUP_SQL, first_day, last_day, since, until)
    return {"from": first_day.isoformat(), "to": last_day.isoformat(), "rows": int(status.split()[-1])}


async def purge_user_events(
    pool: asyncpg.Pool, retention_days: int, now: datetime | None = None
) -> dict[str, Any]:
    """Deletes raw behaviour events older than `retention_days`, in batches (short locks)."""
    cutoff = _now(now) - timedelta(days=retention_days)
    deleted = 0
    while True:
        status = await pool.execute(
            "WITH doomed AS (SELECT id FROM user_events WHERE ts < $1 LIMIT $2) "
            "DELETE FROM user_events u USING doomed WHERE u.id = doomed.id",
            cutoff,
            PURGE_BATCH,
        )
        count = int(status.split()[-1])
        deleted += count
        if count < PURGE_BATCH:
            return {"deleted": deleted, "cutoff": cutoff.isoformat()}


async def _run_training_process(context: JobContext, warm_start: str | None, out: Path) -> None:
    jobs = context.settings.jobs
    command = [sys.executable, "-m", "adserve.jobs.retrain", "--out", str(out)]
    command += ["--days", str(jobs.retrain_days), "--threads", str(jobs.retrain_threads)]
    command += ["--max-epochs", str(jobs.retrain_max_epochs)]
    if warm_start:
        command += ["--warm-start", warm_start]
    threads = str(jobs.retrain_threads)
    env = {
        **os.environ,
        "ADSERVE_DATABASE_URL": context.url,
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
    }
    process = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    try:
        _, stderr = await asyncio.wait_for(process.communicate(), jobs.retrain_timeout_s)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise TimeoutError(f"training process ran past {jobs.retrain_timeout_s:.0f} s") from None
    except asyncio.CancelledError:
        # The scheduler stepped down or shut down: no orphaned training process.
        process.kill()
        await process.wait()
        raise
    if process.returncode != 0:
        # The tail goes to the log only: a stack trace has no place in job_runs.
        log.error("training process failed:\n%s", stderr.decode(errors="replace")[-4000:])
        raise RuntimeError(f"training process exited with status {process.returncode}")


async def retrain_interest(context: JobContext) -> dict[str, Any]:
    """Trains a challenger in a separate process (warm start from the champion), then gates it."""
    async with context.sessionmaker() as session:
        champion = await Registry(session).champion("interest")
    warm_start = champion.path if champion else None
    with tempfile.TemporaryDirectory(prefix="adserve-retrain-") as folder:
        out = Path(folder) / "result.json"
        await _run_training_process(context, warm_start, out)
        result = json.loads(out.read_text())
    if "skipped" in result:
        return {"skipped": result["skipped"]}
    decision = await apply_gate(context.sessionmaker, result["path"], result["pair"])
    return {
        "version": Path(result["path"]).name,
        "champion": champion.version if champion else None,
        "promoted": decision.promote,
        "reason": decision.reason,
        "holdout": result["pair"],
    }


async def learn_bandit(context: JobContext) -> dict[str, Any]:
    """The bandit's learning loop: label what the reward window closed on, then one VW step."""
    joined = await join_rewards_once(context) or {}
    learned = await learn_once(context) or {}
    return {"join": joined, "learn": learned}

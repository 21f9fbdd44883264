"""Daily budgets reset at local midnight in each campaign's own timezone, and only then."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from adserve.jobs.tasks import reset_daily_budgets
from tests.integration.jobs.conftest import make_campaign

DAY = date(2026, 3, 10)  # Auckland on daylight time (UTC+13), Los Angeles too (UTC-7)
MINUTE = timedelta(minutes=1)


def local_midnight(zone: str, day: date) -> datetime:
    return datetime.combine(day, time(0), ZoneInfo(zone))


async def spend(pool, campaign_id: int) -> tuple[float, date]:
    row = await pool.fetchrow("SELECT spend_today, spend_day FROM campaigns WHERE id = $1", campaign_id)
    return float(row["spend_today"]), row["spend_day"]


async def test_each_campaign_resets_at_its_own_local_midnight(jobs_pool) -> None:
    _, auckland = await make_campaign(jobs_pool, "Auckland shop", "Pacific/Auckland")
    _, los_angeles = await make_campaign(jobs_pool, "LA shop", "America/Los_Angeles")
    next_day = DAY + timedelta(days=1)
    auckland_midnight = local_midnight("Pacific/Auckland", next_day)
    la_midnight = local_midnight("America/Los_Angeles", next_day)
    assert auckland_midnight < la_midnight
    await jobs_pool.execute(
        "UPDATE campaigns SET spend_today = 7.5, spend_day = $2 WHERE id = ANY($1::bigint[])",
        [auckland, los_angeles],
        DAY,
    )

    await reset_daily_budgets(jobs_pool, now=auckland_midnight - MINUTE)
    assert await spend(jobs_pool, auckland) == (7.5, DAY)
    assert await spend(jobs_pool, los_angeles) == (7.5, DAY)

    await reset_daily_budgets(jobs_pool, now=auckland_midnight + MINUTE)
    assert await spend(jobs_pool, auckland) == (0.0, next_day)
    assert await spend(jobs_pool, los_angeles) == (7.5, DAY)

    # Auckland spends on its new day; running again before LA's midnight changes nothing.
    await jobs_pool.execute("UPDATE campaigns SET spend_today = 2.0 WHERE id = $1", auckland)
    await reset_daily_budgets(jobs_pool, now=la_midnight - MINUTE)
    assert await spend(jobs_pool, auckland) == (2.0, next_day)
    assert await spend(jobs_pool, los_angeles) == (7.5, DAY)

    figures = await reset_daily_budgets(jobs_pool, now=la_midnight + MINUTE)
    assert figures["reset"] >= 1
    assert await spend(jobs_pool, auckland) == (2.0, next_day)
    assert await spend(jobs_pool, los_angeles) == (0.0, next_day)

    # Idempotent: the same minute again resets nothing more.
    await jobs_pool.execute("UPDATE campaigns SET spend_today = 1.0 WHERE id = $1", los_angeles)
    await reset_daily_budgets(jobs_pool, now=la_midnight + MINUTE)
    assert await spend(jobs_pool, los_angeles) == (1.0, next_day)

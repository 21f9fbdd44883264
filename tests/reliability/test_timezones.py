"""Finding 2: a time zone Python knows but Postgres does not must not reach the campaigns table,
and one bad row must not stop the budget-reset and rollup jobs for every other campaign."""

from __future__ import annotations

import importlib.resources
import shutil
import zoneinfo
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from adserve.db.engine import asyncpg_dsn
from adserve.jobs.tasks import reset_daily_budgets, rollup_daily_stats
from tests.integration.conftest import bearer
from tests.reliability.conftest import make_served_campaign, serve

NOON = datetime(2025, 6, 15, 12, 0, tzinfo=UTC)
# Stored before validation existed; every Postgres rejects it.
UNKNOWN_TO_POSTGRES = "Adserve_Test/Nowhere"


def _utc_tzif() -> Path:
    for base in zoneinfo.TZPATH:
        if (Path(base) / "UTC").is_file():
            return Path(base) / "UTC"
    return Path(str(importlib.resources.files("tzdata.zoneinfo") / "UTC"))


@pytest.fixture
def zone_only_python_knows(tmp_path):
    """A name Python's zoneinfo resolves and Postgres does not: the case of `posix/UTC` against
    the embedded Postgres, whatever tz database the test server has."""
    name = "Adserve_Test/Olympus_Mons"
    (tmp_path / "Adserve_Test").mkdir()
    shutil.copyfile(_utc_tzif(), tmp_path / name)
    original = zoneinfo.TZPATH
    zoneinfo.reset_tzpath([str(tmp_path), *original])
    zoneinfo.ZoneInfo.clear_cache()
    try:
        zoneinfo.ZoneInfo(name)
        yield name
    finally:
        zoneinfo.reset_tzpath(list(original))
        zoneinfo.ZoneInfo.clear_cache()


async def _postgres_knows(database_url: str, name: str) -> bool:
    connection = await asyncpg.connect(**asyncpg_dsn(database_url))
    try:
        await connection.fetchval("SELECT now() AT TIME ZONE $1", name)
        return True
    except asyncpg.InvalidParameterValueError:
        return False
    finally:
        await connection.close()


def _problem(response) -> dict:
    assert response.headers["content-type"].startswith("application/problem+json")
    return response.json()


async def test_patch_with_a_zone_postgres_does_not_know_is_a_400(client, tenants, zone_only_python_knows):
    campaign = f"/admin/v1/campaigns/{tenants.a.campaign_id}"
    headers = bearer(tenants.a.manager_key)
    response = await client.patch(campaign, json={"timezone": zone_only_python_knows}, headers=headers)
    assert response.status_code == 400, response.text
    assert zone_only_python_knows in _problem(response)["detail"]
    assert (await client.get(campaign, headers=headers)).json()["timezone"] == "UTC"


async def test_create_with_a_zone_postgres_does_not_know_is_a_400(client, tenants, zone_only_python_knows):
    body = {"name": "tz check", "pricing": "cpc", "bid": 0.5, "timezone": zone_only_python_knows}
    response = await client.post("/admin/v1/campaigns", json=body, headers=bearer(tenants.a.manager_key))
    assert response.status_code == 400, response.text
    assert zone_only_python_knows in _problem(response)["detail"]


async def test_posix_utc_is_accepted_exactly_when_postgres_knows_it(client, tenants, database_url):
    campaign = f"/admin/v1/campaigns/{tenants.b.campaign_id}"
    headers = bearer(tenants.b.manager_key)
    expected = 200 if await _postgres_knows(database_url, "posix/UTC") else 400
    try:
        response = await client.patch(campaign, json={"timezone": "posix/UTC"}, headers=headers)
        assert response.status_code == expected, response.text
    finally:
        await client.patch(campaign, json={"timezone": "UTC"}, headers=headers)


async def test_budget_reset_skips_a_bad_row_and_resets_the_others(own_pool):
    good = await make_served_campaign(own_pool)
    bad = await make_served_campaign(own_pool, timezone=UNKNOWN_TO_POSTGRES)
    yesterday = NOON.date() - timedelta(days=1)
    await own_pool.execute(
        "UPDATE campaigns SET spend_today = 5, spend_day = $1 WHERE id = ANY($2::bigint[])",
        yesterday,
        [good["campaign_id"], bad["campaign_id"]],
    )
    try:
        figures = await reset_daily_budgets(own_pool, now=NOON)
        row = await own_pool.fetchrow(
            "SELECT spend_today::float8 AS spend, spend_day FROM campaigns WHERE id = $1", good["campaign_id"]
        )
        assert (row["spend"], row["spend_day"]) == (0.0, NOON.date())
        assert figures["reset"] >= 1
        assert [f["campaign_id"] for f in figures["failed"]] == [bad["campaign_id"]]
        assert "time zone" in figures["failed"][0]["error"]
    finally:
        await own_pool.execute("DELETE FROM campaigns WHERE id = $1", bad["campaign_id"])


async def test_rollup_skips_a_bad_row_and_rolls_up_the_others(own_pool):
    good = await make_served_campaign(own_pool)
    bad = await make_served_campaign(own_pool, timezone=UNKNOWN_TO_POSTGRES)
    await serve(own_pool, good, NOON - timedelta(hours=1))
    await serve(own_pool, bad, NOON - timedelta(hours=1))
    try:
        figures = await rollup_daily_stats(own_pool, days=2, now=NOON)
        stats = await own_pool.fetch(
            "SELECT day, decisions, impressions FROM daily_stats WHERE campaign_id = $1", good["campaign_id"]
        )
        assert [tuple(s) for s in stats] == [(date(2025, 6, 15), 1, 1)]
        assert [f["campaign_id"] for f in figures["failed"]] == [bad["campaign_id"]]
    finally:
        await own_pool.execute("DELETE FROM campaigns WHERE id = $1", bad["campaign_id"])

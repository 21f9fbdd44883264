"""Jobs tests run on their own migrated database: budget resets, rollups and champion changes
touch every row of a table, so they must not meet the rest of the suite's data."""

from __future__ import annotations

import asyncio
import os

import asyncpg
import pytest

from adserve.db.engine import Database, asyncpg_dsn, create_engine, sessionmaker_for
from adserve.db.migrate import upgrade
from adserve.settings import Settings, load_settings


@pytest.fixture(scope="session")
async def jobs_database_url(fresh_database) -> str:
    url = await fresh_database()
    await asyncio.to_thread(upgrade, url)
    return url


@pytest.fixture(scope="session")
def jobs_settings(jobs_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    var = tmp_path_factory.mktemp("jobs-var")
    return load_settings(
        environ={
            **os.environ,
            "ADSERVE_DATABASE_URL": jobs_database_url,
            "ADSERVE_VAR_DIR": str(var),
            "ADSERVE_MODELS_DIR": str(tmp_path_factory.mktemp("jobs-models")),
            "ADSERVE_JOBS_RETRAIN_MAX_EPOCHS": "2",
        }
    )


@pytest.fixture(scope="session")
async def jobs_pool(jobs_database_url: str):
    pool = await asyncpg.create_pool(**asyncpg_dsn(jobs_database_url), min_size=1, max_size=4)
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
async def jobs_sessionmaker(jobs_database_url: str, jobs_settings: Settings):
    engine = create_engine(jobs_database_url, jobs_settings)
    yield sessionmaker_for(engine)
    await engine.dispose()


@pytest.fixture(scope="session")
def jobs_database(jobs_pool: asyncpg.Pool, jobs_sessionmaker) -> Database:
    return Database(jobs_pool, jobs_sessionmaker)


async def make_campaign(pool: asyncpg.Pool, name: str, timezone: str = "UTC") -> tuple[int, int]:
    """(advertiser id, campaign id) of a fresh CPC campaign."""
    advertiser_id = await pool.fetchval("INSERT INTO advertisers (name) VALUES ($1) RETURNING id", name)
    campaign_id = await pool.fetchval(
        "INSERT INTO campaigns (advertiser_id, name, pricing, bid, daily_budget, timezone) "
        "VALUES ($1, $2, 'cpc', 0.5, 100, $3) RETURNING id",
        advertiser_id,
        f"{name} campaign",
        timezone,
    )
    return advertiser_id, campaign_id

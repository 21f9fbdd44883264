"""Reliability tests (issue 13): the integration app and catalogue, and a migrated database of
their own for jobs that read every campaign (a deliberately bad row must not meet other tests)."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from adserve.db.engine import asyncpg_dsn
from adserve.db.migrate import upgrade
from tests.integration.conftest import app, client, sessionmaker, settings, tenants

__all__ = ["app", "client", "make_served_campaign", "serve", "sessionmaker", "settings", "tenants"]


@pytest.fixture(scope="module")
async def own_database_url(fresh_database) -> str:
    url = await fresh_database()
    await asyncio.to_thread(upgrade, url)
    return url


@pytest.fixture(scope="module")
async def own_pool(own_database_url: str):
    pool = await asyncpg.create_pool(**asyncpg_dsn(own_database_url), min_size=1, max_size=2)
    yield pool
    await pool.close()


async def make_served_campaign(pool: asyncpg.Pool, timezone: str = "UTC") -> dict[str, int]:
    """A CPC campaign with one creative and placement, inserted directly (as rows stored before
    any validation would be): its ids."""
    name = f"reliability {uuid.uuid4().hex[:8]}"
    advertiser_id = await pool.fetchval("INSERT INTO advertisers (name) VALUES ($1) RETURNING id", name)
    campaign_id = await pool.fetchval(
        "INSERT INTO campaigns (advertiser_id, name, pricing, bid, daily_budget, timezone) "
        "VALUES ($1, $2, 'cpc', 0.5, 100, $3) RETURNING id",
        advertiser_id,
        name,
        timezone,
    )
    creative_id = await pool.fetchval(
        "INSERT INTO creatives (campaign_id, advertiser_id, width, height, title, image_url, landing_url) "
        "VALUES ($1, $2, 300, 250, 'ad', 'https://cdn.example.com/a.png', 'https://example.com') RETURNING id",
        campaign_id,
        advertiser_id,
    )
    placement_id = await pool.fetchval(
        "INSERT INTO placements (key, width, height) VALUES ($1, 300, 250) RETURNING id",
        f"slot-{uuid.uuid4().hex[:8]}",
    )
    return {
        "advertiser_id": advertiser_id,
        "campaign_id": campaign_id,
        "creative_id": creative_id,
        "placement_id": placement_id,
    }


async def serve(pool: asyncpg.Pool, ids: dict[str, int], ts) -> uuid.UUID:
    """A logged decision and its impression for the campaign `ids` at `ts`."""
    decision_id = uuid.uuid4()
    await pool.execute(
        "INSERT INTO decisions (id, ts, request_id, placement_id, context, candidate_ids, scores, pmf, "
        "chosen_creative_id, campaign_id, propensity, scorer_version, policy_version) "
        "VALUES ($1, $2, $3, $4, '{}'::jsonb, $5, '{0.1}', '{1.0}', $6, $7, 1.0, 'test', 'test')",
        decision_id,
        ts,
        uuid.uuid4(),
        ids["placement_id"],
        [ids["creative_id"]],
        ids["creative_id"],
        ids["campaign_id"],
    )
    await pool.execute(
        "INSERT INTO impressions (decision_id, ts, creative_id, campaign_id, placement_id) "
        "VALUES ($1, $2, $3, $4, $5)",
        decision_id,
        ts,
        ids["creative_id"],
        ids["campaign_id"],
        ids["placement_id"],
    )
    return decision_id

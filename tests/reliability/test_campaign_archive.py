"""Issue 13, "a campaign DELETE removes its spend from reports": a campaign with delivery
(impressions or spend) is archived, not deleted: never served again, hidden from the default
campaign list but listed with `status=archived`, and its spend stays in the live analytics and
the rollups behind /reports. A campaign without delivery is still deleted, and an advertiser with
a delivered campaign cannot be deleted (the cascade would take the campaign with it).

Before this change DELETE removed the row: GET answered 404, the live analytics (which join
campaigns) lost the spend at once, and the next rollup deleted its daily_stats rows."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

from adserve.db.engine import create_engine, sessionmaker_for
from adserve.jobs.tasks import rollup_daily_stats
from tests.integration.conftest import bearer
from tests.integration.serving.catalog_builder import CatalogBuilder, wait_for_placement
from tests.integration.serving.test_decisions import decide
from tests.integration.serving.test_tracking import path_of
from tests.reliability.conftest import make_served_campaign, serve

CAMPAIGNS = "/admin/v1/campaigns"


async def _eventually(check, deadline_s: float = 10.0):
    stop = time.monotonic() + deadline_s
    while True:
        outcome = await check()
        if outcome or time.monotonic() > stop:
            return outcome
        await asyncio.sleep(0.05)  # polling interval of a condition wait


async def _spend(client, admin, advertiser_id: int) -> tuple[int, float]:
    response = await client.get(
        "/admin/v1/analytics/daily", params={"advertiser_id": advertiser_id}, headers=admin
    )
    assert response.status_code == 200, response.text
    days = response.json()["items"]
    return sum(day["impressions"] for day in days), round(sum(day["spend"] for day in days), 6)


async def test_a_delivered_campaign_is_archived_and_keeps_its_spend(client, tenants, sessionmaker) -> None:
    admin = bearer(tenants.admin_key)
    async with sessionmaker() as session:
        builder = CatalogBuilder(session)
        campaign_id = await builder.campaign("archive", pricing="cpm", bid=2.0)
        key = await builder.placement("slot")
    await wait_for_placement(client, key)
    decision = await decide(client, key, user="archive-shopper")
    assert decision["creative"] is not None
    assert (await client.get(path_of(decision["impression_url"]))).status_code == 200
    advertiser_id = builder.built.advertiser_id

    async def delivered() -> bool:
        return await _spend(client, admin, advertiser_id) == (1, 0.002)

    assert await _eventually(delivered)

    assert (await client.delete(f"{CAMPAIGNS}/{campaign_id}", headers=admin)).status_code == 204
    campaign = await client.get(f"{CAMPAIGNS}/{campaign_id}", headers=admin)
    assert campaign.status_code == 200, campaign.text
    assert campaign.json()["status"] == "archived"
    assert campaign.json()["spend_total"] == 0.002
    assert await _spend(client, admin, advertiser_id) == (1, 0.002)

    listed = await client.get(CAMPAIGNS, params={"advertiser_id": advertiser_id}, headers=admin)
    assert [row["id"] for row in listed.json()["items"]] == []
    archived = await client.get(
        CAMPAIGNS, params={"advertiser_id": advertiser_id, "status": "archived"}, headers=admin
    )
    assert [row["id"] for row in archived.json()["items"]] == [campaign_id]

    async def not_served() -> bool:
        return (await decide(client, key, user="archive-shopper-2"))["creative"] is None

    assert await _eventually(not_served)
    assert (await client.delete(f"{CAMPAIGNS}/{campaign_id}", headers=admin)).status_code == 204
    assert (await client.get(f"{CAMPAIGNS}/{campaign_id}", headers=admin)).json()["status"] == "archived"

    refused = await client.delete(f"/admin/v1/advertisers/{advertiser_id}", headers=admin)
    assert refused.status_code == 409, refused.text
    assert "delivery" in refused.json()["detail"]
    assert (await client.get(f"{CAMPAIGNS}/{campaign_id}", headers=admin)).status_code == 200


async def test_a_campaign_without_delivery_is_still_deleted(client, tenants) -> None:
    manager = bearer(tenants.b.manager_key)
    body = {"name": "never served", "pricing": "cpc", "bid": 0.5}
    created = await client.post(CAMPAIGNS, json=body, headers=manager)
    path = f"{CAMPAIGNS}/{created.json()['id']}"
    assert (await client.delete(path, headers=manager)).status_code == 204
    assert (await client.get(path, headers=manager)).status_code == 404


async def test_the_rollup_keeps_an_archived_campaigns_day(own_pool, own_database_url, settings) -> None:
    from adserve.admin.services import CampaignService

    ids = await make_served_campaign(own_pool)
    now = datetime.now(UTC)
    await serve(own_pool, ids, now - timedelta(minutes=5))
    engine = create_engine(own_database_url, settings)
    try:
        async with sessionmaker_for(engine)() as session:
            await CampaignService(session, None).delete(ids["campaign_id"])
    finally:
        await engine.dispose()

    await rollup_daily_stats(own_pool, days=2, now=now)
    rows = await own_pool.fetch(
        "SELECT decisions, impressions FROM daily_stats WHERE campaign_id = $1", ids["campaign_id"]
    )
    assert [tuple(row) for row in rows] == [(1, 1)]

"""Admin endpoints for jobs (admin only) and reports (scoped to the caller's advertiser)."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime

from tests.integration.conftest import bearer

DAY = date(2024, 2, 1)


async def _seed_stats(
    sessionmaker, tenant, placement_id: int, impressions: int, clicks: int, spend: float
) -> None:
    from sqlalchemy.dialects.postgresql import insert

    from adserve.db.tables import DailyStat

    async with sessionmaker() as session:
        for offset in (0, 1):
            await session.execute(
                insert(DailyStat)
                .values(
                    day=date(DAY.year, DAY.month, DAY.day + offset),
                    campaign_id=tenant.campaign_id,
                    creative_id=tenant.creative_id,
                    placement_id=placement_id,
                    advertiser_id=tenant.advertiser_id,
                    decisions=impressions,
                    impressions=impressions,
                    clicks=clicks,
                    invalid_clicks=1,
                    conversions=1,
                    conversion_value=10.0,
                    spend=spend,
                )
                .on_conflict_do_nothing()
            )
        await session.commit()


async def test_reports_are_scoped_to_the_callers_advertiser(client, tenants, sessionmaker) -> None:
    await _seed_stats(sessionmaker, tenants.a, tenants.placement_id, 100, 5, 2.5)
    await _seed_stats(sessionmaker, tenants.b, tenants.placement_id, 40, 1, 0.5)
    window = {"from": "2024-02-01", "to": "2024-02-02"}

    response = await client.get(
        "/admin/v1/reports", params={**window, "group_by": "campaign"}, headers=bearer(tenants.a.manager_key)
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert [row["campaign_id"] for row in body["items"]] == [tenants.a.campaign_id]
    row = body["items"][0]
    assert (row["impressions"], row["clicks"], row["spend"], row["conversions"]) == (200, 10, 5.0, 2)
    assert row["ctr"] == 0.05

    by_day = await client.get("/admin/v1/reports", params=window, headers=bearer(tenants.b.viewer_key))
    assert [(r["day"], r["impressions"]) for r in by_day.json()["items"]] == [
        ("2024-02-01", 40),
        ("2024-02-02", 40),
    ]

    other = await client.get(
        "/admin/v1/reports",
        params={**window, "advertiser_id": tenants.b.advertiser_id},
        headers=bearer(tenants.a.manager_key),
    )
    assert other.status_code == 404

    everyone = await client.get(
        "/admin/v1/reports", params={**window, "group_by": "placement"}, headers=bearer(tenants.admin_key)
    )
    assert everyone.json()["items"][0]["impressions"] >= 280
    only_b = await client.get(
        "/admin/v1/reports",
        params={**window, "group_by": "creative", "advertiser_id": tenants.b.advertiser_id},
        headers=bearer(tenants.admin_key),
    )
    assert [r["creative_id"] for r in only_b.json()["items"]] == [tenants.b.creative_id]
    site = await client.get("/admin/v1/reports", headers=bearer(tenants.site_key))
    assert site.status_code == 403


async def test_job_endpoints_are_admin_only_and_list_runs(client, tenants, sessionmaker) -> None:
    from adserve.db.tables import JobRun

    job = f"test-job-{uuid.uuid4().hex[:6]}"
    async with sessionmaker() as session:
        now = datetime.now(UTC)
        session.add_all(
            [
                JobRun(job=job, started_at=now, finished_at=now, status="failed", error="RuntimeError: x"),
                JobRun(job=job, started_at=now, finished_at=now, status="ok", figures={"rows": 2}),
            ]
        )
        await session.commit()
    assert (await client.get("/admin/v1/jobs/runs", headers=bearer(tenants.a.manager_key))).status_code == 403

    runs = await client.get(
        "/admin/v1/jobs/runs", params={"job": job, "limit": 1}, headers=bearer(tenants.admin_key)
    )
    assert runs.status_code == 200, runs.text
    body = runs.json()
    assert body["total"] == 2 and [r["status"] for r in body["items"]] == ["ok"]
    assert body["items"][0]["figures"] == {"rows": 2}

    overview = await client.get("/admin/v1/jobs", headers=bearer(tenants.admin_key))
    assert overview.status_code == 200, overview.text
    names = {j["name"] for j in overview.json()["jobs"]}
    assert {"budget_reset", "rollup_recent", "rollup_full", "retention_purge", "interest_retrain"} <= names

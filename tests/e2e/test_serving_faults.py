"""Postgres stops during a stream of decisions, events, impressions and clicks: every request still
answers 2xx, and once Postgres is back every row is present exactly once."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime

import asyncpg
import httpx
import pytest

from adserve.admin import schemas
from adserve.admin.services import AdvertiserService, CampaignService, CreativeService, PlacementService
from adserve.db.engine import asyncpg_dsn, create_engine, sessionmaker_for
from tests.e2e.conftest import run_server
from tests.private_postgres import private_postgres_server

pytestmark = pytest.mark.slow

BROWSER = {"user-agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0 Safari/537.36"}


@pytest.fixture(scope="module")
def private_postgres():
    yield from private_postgres_server("adserve-serving-faults-pg-")


async def seed(url: str, settings) -> str:
    engine = create_engine(url, settings)
    try:
        async with sessionmaker_for(engine)() as session:
            advertiser = await AdvertiserService(session, None).create(
                schemas.AdvertiserCreate(name="faults")
            )
            campaign = await CampaignService(session, None).create(
                schemas.CampaignCreate(name="f", pricing="cpc", bid=0.5), advertiser.id
            )
            await CreativeService(session, None).create(
                schemas.CreativeCreate(
                    campaign_id=campaign.id,
                    title="f",
                    width=300,
                    height=250,
                    image_url="https://cdn.example/f.png",
                    landing_url="https://example.com/f",
                )
            )
            await PlacementService(session, None).create(
                schemas.PlacementCreate(key="fault-slot", width=300, height=250)
            )
    finally:
        await engine.dispose()
    return "fault-slot"


async def one_page_view(client: httpx.AsyncClient, user: str, record: dict) -> None:
    """Events, a decision, its impression and a click: what a page view sends."""
    event_id = str(uuid.uuid4())
    events = await client.post(
        "/v1/events",
        json={
            "consent": True,
            "events": [
                {
                    "event_id": event_id,
                    "user_id": user,
                    "type": "product_view",
                    "item_id": "sku",
                    "category": "c",
                    "ts": datetime.now(UTC).isoformat(),
                }
            ],
        },
    )
    record["statuses"].append(events.status_code)
    record["events"].append(uuid.UUID(event_id))
    decision = await client.post(
        "/v1/decisions", json={"user_id": user, "consent": True, "placements": ["fault-slot"]}
    )
    record["statuses"].append(decision.status_code)
    if decision.status_code != 200:
        return
    body = decision.json()["decisions"][0]
    record["decisions"].append(uuid.UUID(body["decision_id"]))
    impression = await client.get(body["impression_url"])
    record["statuses"].append(impression.status_code)
    click = await client.get(body["click_url"], headers=BROWSER, follow_redirects=False)
    record["statuses"].append(click.status_code)


async def test_stream_survives_postgres_outage(private_postgres, settings, tmp_path) -> None:
    await seed(private_postgres.url, settings)
    record = {"statuses": [], "events": [], "decisions": []}
    with run_server(private_postgres.url, tmp_path) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            for index in range(10):
                await one_page_view(client, f"user-{index % 3}", record)
            await asyncio.to_thread(private_postgres.stop)
            for index in range(20):
                await one_page_view(client, f"user-{index % 3}", record)
            await asyncio.to_thread(private_postgres.start)
            for index in range(10):
                await one_page_view(client, f"user-{index % 3}", record)

            # wait (a condition, with a deadline) until the spool has been replayed
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                connection = await asyncpg.connect(**asyncpg_dsn(private_postgres.url))
                try:
                    stored = await connection.fetchval(
                        "SELECT count(*) FROM decisions WHERE id = ANY($1::uuid[])", record["decisions"]
                    )
                finally:
                    await connection.close()
                if stored == len(record["decisions"]):
                    break
                await asyncio.sleep(0.2)

    assert all(200 <= status < 400 for status in record["statuses"]), sorted(set(record["statuses"]))
    assert len(record["decisions"]) == 40
    connection = await asyncpg.connect(**asyncpg_dsn(private_postgres.url))
    try:
        decisions = await connection.fetchval(
            "SELECT count(*) FROM decisions WHERE id = ANY($1::uuid[])", record["decisions"]
        )
        events = await connection.fetchval(
            "SELECT count(*) FROM user_events WHERE id = ANY($1::uuid[])", record["events"]
        )
        impressions = await connection.fetchval(
            "SELECT count(*) FROM impressions WHERE decision_id = ANY($1::uuid[])", record["decisions"]
        )
        clicks = await connection.fetch(
            "SELECT decision_id, count(*) AS n FROM clicks WHERE decision_id = ANY($1::uuid[]) AND valid "
            "GROUP BY decision_id",
            record["decisions"],
        )
        spend = await connection.fetchval("SELECT spend_total FROM campaigns WHERE name = 'f'")
    finally:
        await connection.close()
    assert decisions == 40  # every decision row exactly once (the id is the key)
    assert events == 40
    assert impressions == 40
    assert len(clicks) == 40 and all(row["n"] == 1 for row in clicks)
    assert float(spend) == pytest.approx(40 * 0.5)  # each valid click charged once

"""Integration fixtures: the app on the session's real Postgres, and a two-advertiser catalogue."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

import pytest
from litestar.testing import AsyncTestClient

from adserve.admin import schemas
from adserve.admin.services import (
    AdvertiserService,
    ApiKeyService,
    CampaignService,
    CreativeService,
    PlacementService,
)
from adserve.app import create_app
from adserve.db.engine import create_engine, sessionmaker_for
from adserve.settings import Settings, load_settings


@pytest.fixture(scope="session")
def settings(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    var = tmp_path_factory.mktemp("var")
    return load_settings(
        environ={
            **os.environ,
            "ADSERVE_DATABASE_URL": database_url,
            "ADSERVE_VAR_DIR": str(var),
            "ADSERVE_WRITER_SPOOL_DIR": str(var / "spool"),
            "ADSERVE_MODELS_DIR": str(tmp_path_factory.mktemp("models")),
            # greedy serving makes choices in tests deterministic; exploration is tested on its own
            "ADSERVE_SERVING_EPSILON": "0",
        }
    )


@pytest.fixture(scope="session")
async def app(settings: Settings):
    return create_app(settings)


@pytest.fixture(scope="session")
async def client(app):
    async with AsyncTestClient(app) as test_client:
        yield test_client


@pytest.fixture(scope="session")
async def sessionmaker(settings: Settings, database_url: str):
    """Sessions on the test's own event loop (the test client runs the app on another loop)."""
    engine = create_engine(database_url, settings)
    yield sessionmaker_for(engine)
    await engine.dispose()


@dataclass(frozen=True)
class Tenant:
    advertiser_id: int
    campaign_id: int
    creative_id: int
    manager_key: str
    viewer_key: str


@dataclass(frozen=True)
class Tenants:
    admin_key: str
    site_key: str
    a: Tenant
    b: Tenant
    placement_id: int


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _make_key(session, role: str, advertiser_id: int | None = None) -> str:
    key, _ = await ApiKeyService(session, None).create(
        schemas.ApiKeyCreate(role=role, advertiser_id=advertiser_id, name=f"test {role}")
    )
    return key


async def make_tenant(session, name: str) -> Tenant:
    advertiser = await AdvertiserService(session, None).create(schemas.AdvertiserCreate(name=name))
    campaign = await CampaignService(session, None).create(
        schemas.CampaignCreate(name=f"{name} campaign", pricing="cpc", bid=0.5, daily_budget=100.0),
        advertiser.id,
    )
    creative = await CreativeService(session, None).create(
        schemas.CreativeCreate(
            campaign_id=campaign.id,
            title=f"{name} ad",
            width=300,
            height=250,
            image_url="https://cdn.example.com/a.png",
            landing_url="https://example.com/landing",
        )
    )
    return Tenant(
        advertiser_id=advertiser.id,
        campaign_id=campaign.id,
        creative_id=creative.id,
        manager_key=await _make_key(session, "manager", advertiser.id),
        viewer_key=await _make_key(session, "viewer", advertiser.id),
    )


@pytest.fixture(scope="session")
async def tenants(sessionmaker) -> Tenants:
    import secrets

    suffix = secrets.token_hex(3)
    async with sessionmaker() as session:
        placement = await PlacementService(session, None).create(
            schemas.PlacementCreate(key=f"tenant-slot-{suffix}", width=300, height=250)
        )
        return Tenants(
            admin_key=await _make_key(session, "admin"),
            site_key=await _make_key(session, "site"),
            a=await make_tenant(session, f"Advertiser A {suffix}"),
            b=await make_tenant(session, f"Advertiser B {suffix}"),
            placement_id=placement.id,
        )


async def decisions_logged(*clients) -> None:
    """Waits until every row the apps' log writers queued is stored (decision rows are queued
    without waiting; see DecisionPipeline._log). The writer lives on the app's event loop, in the
    test client's portal thread."""
    for client in clients:
        await asyncio.to_thread(client.blocking_portal.call, client.app.state.writer.flush)

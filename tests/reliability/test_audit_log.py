"""Issue 13, "Audit and history": every admin write leaves an audit row (who: the key's id and
role, never its secret; what: resource, id, action; when; the row before and after), and
`GET /admin/v1/audit` reads the trail scoped to the caller's advertiser (admins see all).

Before this change admin writes left no trail and `/admin/v1/audit` was a 404."""

from __future__ import annotations

import os
import secrets
from datetime import datetime

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from adserve.admin import schemas
from adserve.admin.services import ApiKeyService
from adserve.app import create_app
from adserve.db.engine import asyncpg_dsn, create_engine, sessionmaker_for
from adserve.learning.registry import Registry
from adserve.settings import load_settings
from tests.integration.conftest import bearer

AUDIT = "/admin/v1/audit"


async def key_id(database_url: str, key: str) -> int:
    connection = await asyncpg.connect(**asyncpg_dsn(database_url))
    try:
        return await connection.fetchval("SELECT id FROM api_keys WHERE prefix = $1", key.split("_")[1])
    finally:
        await connection.close()


async def trail(client, key: str, **params) -> list[dict]:
    response = await client.get(AUDIT, params=params, headers=bearer(key))
    assert response.status_code == 200, response.text
    return response.json()["items"]


async def new_key(sessionmaker, role: str, advertiser_id: int | None = None) -> str:
    async with sessionmaker() as session:
        key, _ = await ApiKeyService(session, None).create(
            schemas.ApiKeyCreate(role=role, advertiser_id=advertiser_id, name=f"audit {role}")
        )
    return key


async def test_a_managers_campaign_writes_are_audited_with_before_and_after(
    client, tenants, database_url
) -> None:
    manager = bearer(tenants.a.manager_key)
    body = {"name": f"audited {secrets.token_hex(3)}", "pricing": "cpc", "bid": 0.5}
    created = await client.post("/admin/v1/campaigns", json=body, headers=manager)
    assert created.status_code == 201, created.text
    campaign = f"/admin/v1/campaigns/{created.json()['id']}"
    assert (await client.patch(campaign, json={"bid": 0.75}, headers=manager)).status_code == 200
    refused = await client.patch(campaign, json={"timezone": "Nowhere/Atlantis"}, headers=manager)
    assert refused.status_code == 400  # a refused write leaves no row
    assert (await client.delete(campaign, headers=manager)).status_code == 204

    entries = await trail(
        client, tenants.a.manager_key, resource="campaign", resource_id=str(created.json()["id"])
    )
    assert [entry["action"] for entry in entries] == ["delete", "update", "create"]
    manager_key_id = await key_id(database_url, tenants.a.manager_key)
    for entry in entries:
        assert (entry["key_id"], entry["role"]) == (manager_key_id, "manager")
        assert entry["advertiser_id"] == tenants.a.advertiser_id
        datetime.fromisoformat(entry["at"])
    deleted, updated, create = entries
    assert create["before"] is None
    assert (create["after"]["name"], create["after"]["bid"]) == (body["name"], 0.5)
    assert (updated["before"]["bid"], updated["after"]["bid"]) == (0.5, 0.75)
    assert deleted["before"]["bid"] == 0.75
    assert deleted["after"] is None


async def test_every_catalogue_and_key_write_is_audited_and_no_secret_reaches_the_trail(
    client, sessionmaker, database_url
) -> None:
    admin_key = await new_key(sessionmaker, "admin")
    admin, admin_id = bearer(admin_key), await key_id(database_url, admin_key)
    name = f"audit advertiser {secrets.token_hex(3)}"

    advertiser = (await client.post("/admin/v1/advertisers", json={"name": name}, headers=admin)).json()
    clash = await client.post("/admin/v1/advertisers", json={"name": name}, headers=admin)
    assert clash.status_code == 409  # rolled back: no row
    advertiser_path = f"/admin/v1/advertisers/{advertiser['id']}"
    assert (await client.patch(advertiser_path, json={"status": "paused"}, headers=admin)).status_code == 200

    slot = {"key": f"audit-{secrets.token_hex(3)}", "width": 300, "height": 250}
    placement = (await client.post("/admin/v1/placements", json=slot, headers=admin)).json()
    placement_path = f"/admin/v1/placements/{placement['id']}"
    assert (await client.patch(placement_path, json={"position": 2}, headers=admin)).status_code == 200
    assert (await client.delete(placement_path, headers=admin)).status_code == 204

    campaign = await client.post(
        "/admin/v1/campaigns",
        params={"advertiser_id": advertiser["id"]},
        json={"name": "audited", "pricing": "cpm", "bid": 2.0},
        headers=admin,
    )
    assert campaign.status_code == 201, campaign.text
    ad = {
        "campaign_id": campaign.json()["id"],
        "title": "ad",
        "width": 300,
        "height": 250,
        "image_url": "https://cdn.example.com/a.png",
        "landing_url": "https://example.com/",
    }
    creative = (await client.post("/admin/v1/creatives", json=ad, headers=admin)).json()
    creative_path = f"/admin/v1/creatives/{creative['id']}"
    assert (await client.patch(creative_path, json={"title": "ad 2"}, headers=admin)).status_code == 200
    assert (await client.delete(creative_path, headers=admin)).status_code == 204

    issued = await client.post(
        "/admin/v1/keys", json={"role": "manager", "advertiser_id": advertiser["id"]}, headers=admin
    )
    secret_key = issued.json()["key"]
    revoked = await client.delete(f"/admin/v1/keys/{issued.json()['api_key']['id']}", headers=admin)
    assert revoked.status_code == 200
    assert (await client.delete(advertiser_path, headers=admin)).status_code == 204

    response = await client.get(AUDIT, params={"key_id": admin_id, "limit": 100}, headers=admin)
    entries = response.json()["items"]
    assert sorted((entry["resource"], entry["action"]) for entry in entries) == sorted(
        [
            ("advertiser", "create"),
            ("advertiser", "update"),
            ("advertiser", "delete"),
            ("placement", "create"),
            ("placement", "update"),
            ("placement", "delete"),
            ("campaign", "create"),
            ("creative", "create"),
            ("creative", "update"),
            ("creative", "delete"),
            ("api_key", "create"),
            ("api_key", "revoke"),
        ]
    )
    assert {entry["role"] for entry in entries} == {"admin"}
    revocation = next(entry for entry in entries if entry["action"] == "revoke")
    assert revocation["before"]["revoked_at"] is None
    assert revocation["after"]["revoked_at"] is not None
    text = response.text
    assert secret_key not in text
    assert secret_key.split("_", 2)[2] not in text  # the secret itself may hold "_"
    assert "digest" not in text

    # The admin key itself was created without a key (the CLI's way): role "system".
    system = await trail(client, admin_key, resource="api_key", resource_id=str(admin_id))
    assert [(entry["action"], entry["role"], entry["key_id"]) for entry in system] == [
        ("create", "system", None)
    ]


async def test_the_trail_is_scoped_to_the_callers_advertiser(client, tenants) -> None:
    for tenant in (tenants.a, tenants.b):
        campaign = f"/admin/v1/campaigns/{tenant.campaign_id}"
        renamed = {"name": f"renamed {secrets.token_hex(3)}"}
        response = await client.patch(campaign, json=renamed, headers=bearer(tenant.manager_key))
        assert response.status_code == 200

    for tenant, other in ((tenants.a, tenants.b), (tenants.b, tenants.a)):
        for key in (tenant.manager_key, tenant.viewer_key):
            entries = await trail(client, key, limit=500)
            assert entries
            assert {entry["advertiser_id"] for entry in entries} == {tenant.advertiser_id}
            foreign = await client.get(
                AUDIT, params={"advertiser_id": other.advertiser_id}, headers=bearer(key)
            )
            assert foreign.status_code == 404

    seen_by_admin = {
        entry["advertiser_id"]
        for advertiser_id in (tenants.a.advertiser_id, tenants.b.advertiser_id)
        for entry in await trail(client, tenants.admin_key, advertiser_id=advertiser_id)
    }
    assert seen_by_admin == {tenants.a.advertiser_id, tenants.b.advertiser_id}
    assert (await client.get(AUDIT)).status_code == 401
    assert (await client.get(AUDIT, headers=bearer(tenants.site_key))).status_code == 403


@pytest.fixture(scope="module")
async def model_admin(own_database_url, tmp_path_factory):
    """An app on a database of its own: promoting stand-in models must not reach the session's
    serving app, which would try to load them."""
    var = tmp_path_factory.mktemp("audit-models")
    settings = load_settings(
        environ={
            **os.environ,
            "ADSERVE_DATABASE_URL": own_database_url,
            "ADSERVE_VAR_DIR": str(var),
            "ADSERVE_WRITER_SPOOL_DIR": str(var / "spool"),
            "ADSERVE_MODELS_DIR": str(var / "models"),
        }
    )
    engine = create_engine(own_database_url, settings)
    try:
        sessionmaker = sessionmaker_for(engine)
        key = await new_key(sessionmaker, "admin")
        async with sessionmaker() as session:
            registry = Registry(session)
            for version in ("v1", "v2"):
                await registry.register("bandit", version, str(var / version), {})
        async with AsyncTestClient(create_app(settings)) as client:
            yield client, key
    finally:
        await engine.dispose()


async def test_model_promotion_and_rollback_are_audited(model_admin, own_database_url) -> None:
    client, key = model_admin
    admin = bearer(key)
    for version in ("v1", "v2"):
        promoted = await client.post(
            f"/admin/v1/models/bandit/{version}/promote", json={"reason": f"audit {version}"}, headers=admin
        )
        assert promoted.status_code == 200, promoted.text
    rolled_back = await client.post(
        "/admin/v1/models/bandit/rollback", json={"reason": "worse"}, headers=admin
    )
    assert rolled_back.status_code == 200, rolled_back.text
    refused = await client.post("/admin/v1/models/bandit/v1/promote", json={}, headers=admin)
    assert refused.status_code == 409  # already champion: no row

    entries = await trail(client, key, resource="model", resource_id="bandit")
    assert [entry["action"] for entry in entries] == ["rollback", "promote", "promote"]
    assert {entry["key_id"] for entry in entries} == {await key_id(own_database_url, key)}
    rollback, second, first = entries
    assert first["before"] == {"champion": None}
    assert first["after"]["champion"]["version"] == "v1"
    assert second["before"]["champion"]["version"] == "v1"
    assert second["after"]["champion"]["version"] == "v2"
    assert second["after"]["champion"]["reason"] == "audit v2"
    assert rollback["before"]["champion"]["version"] == "v2"
    assert rollback["after"]["champion"]["version"] == "v1"

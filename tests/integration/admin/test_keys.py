from __future__ import annotations

import hashlib

from sqlalchemy import select

from adserve.db.tables import ApiKey
from tests.integration.conftest import Tenants, bearer


async def test_keys_are_stored_hashed_and_shown_once(client, tenants: Tenants, sessionmaker) -> None:
    response = await client.post(
        "/admin/v1/keys",
        json={"role": "viewer", "advertiser_id": tenants.a.advertiser_id, "name": "reporting"},
        headers=bearer(tenants.admin_key),
    )
    assert response.status_code == 201
    created = response.json()
    key = created["key"]
    async with sessionmaker() as session:
        row = (
            await session.execute(select(ApiKey).where(ApiKey.id == created["api_key"]["id"]))
        ).scalar_one()
    assert row.digest == hashlib.sha256(key.encode()).hexdigest()
    assert key not in (row.digest, row.prefix, row.name)
    listed = await client.get("/admin/v1/keys?limit=500", headers=bearer(tenants.admin_key))
    assert key not in listed.text
    assert (await client.get("/admin/v1/campaigns", headers=bearer(key))).status_code == 200


async def test_revoked_key_is_401(client, tenants: Tenants) -> None:
    created = (
        await client.post(
            "/admin/v1/keys",
            json={"role": "manager", "advertiser_id": tenants.b.advertiser_id},
            headers=bearer(tenants.admin_key),
        )
    ).json()
    assert (await client.get("/admin/v1/campaigns", headers=bearer(created["key"]))).status_code == 200
    revoked = await client.delete(
        f"/admin/v1/keys/{created['api_key']['id']}", headers=bearer(tenants.admin_key)
    )
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    assert (await client.get("/admin/v1/campaigns", headers=bearer(created["key"]))).status_code == 401


async def test_tampered_secret_with_a_real_prefix_is_401(client, tenants: Tenants) -> None:
    tampered = tenants.a.manager_key[:-1] + ("A" if tenants.a.manager_key[-1] != "A" else "B")
    assert (await client.get("/admin/v1/campaigns", headers=bearer(tampered))).status_code == 401


async def test_manager_and_viewer_keys_need_an_advertiser(client, tenants: Tenants) -> None:
    for role in ("manager", "viewer"):
        response = await client.post("/admin/v1/keys", json={"role": role}, headers=bearer(tenants.admin_key))
        assert response.status_code == 400
    unknown = await client.post(
        "/admin/v1/keys", json={"role": "manager", "advertiser_id": 10**12}, headers=bearer(tenants.admin_key)
    )
    assert unknown.status_code == 404

"""The model registry through the admin API: list, promote, roll back; admin only."""

from __future__ import annotations

import secrets

from adserve.learning.registry import Registry
from tests.integration.conftest import Tenants, bearer


async def test_promote_and_roll_back(client, tenants: Tenants, sessionmaker) -> None:
    tag = secrets.token_hex(3)
    async with sessionmaker() as session:
        registry = Registry(session)
        for name in ("v1", "v2"):
            await registry.register("bandit", f"{tag}-{name}", f"/models/bandit/{tag}-{name}", {"ips": 0.1})
    admin = bearer(tenants.admin_key)
    first = await client.post(
        f"/admin/v1/models/bandit/{tag}-v1/promote", json={"reason": "first"}, headers=admin
    )
    assert first.status_code == 200 and first.json()["status"] == "champion"
    second = await client.post(
        f"/admin/v1/models/bandit/{tag}-v2/promote", json={"reason": "better"}, headers=admin
    )
    assert second.json()["status"] == "champion"
    listed = {
        m["version"]: m["status"]
        for m in (await client.get("/admin/v1/models?kind=bandit&limit=500", headers=admin)).json()["items"]
    }
    assert listed[f"{tag}-v1"] == "retired" and listed[f"{tag}-v2"] == "champion"
    back = await client.post(
        "/admin/v1/models/bandit/rollback", json={"reason": "v2 misbehaves"}, headers=admin
    )
    assert back.status_code == 200
    assert back.json()["version"] == f"{tag}-v1" and back.json()["reason"] == "v2 misbehaves"
    async with sessionmaker() as session:
        assert (await Registry(session).champion("bandit")).version == f"{tag}-v1"
        assert (await Registry(session).get("bandit", f"{tag}-v2")).status == "retired"
    again = await client.post(f"/admin/v1/models/bandit/{tag}-v1/promote", json={}, headers=admin)
    assert again.status_code == 409
    missing = await client.post("/admin/v1/models/bandit/nope/promote", json={}, headers=admin)
    assert missing.status_code == 404


async def test_registry_is_admin_only(client, tenants: Tenants) -> None:
    for key in (tenants.a.manager_key, tenants.a.viewer_key):
        assert (await client.get("/admin/v1/models", headers=bearer(key))).status_code == 403
        response = await client.post("/admin/v1/models/bandit/rollback", json={}, headers=bearer(key))
        assert response.status_code == 403

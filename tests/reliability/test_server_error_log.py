"""Second paragraph: the 500 handler logged the request path, which can carry a raw user id
(`DELETE /v1/users/{id}`). It logs the route template instead."""

from __future__ import annotations

import uuid

from tests.integration.conftest import bearer


async def test_a_500_logs_the_route_not_the_raw_user_id(client, tenants, caplog, monkeypatch) -> None:
    async def broken(*args, **kwargs):
        raise RuntimeError("erasure failed")

    monkeypatch.setattr("adserve.admin.privacy.erase_user", broken)
    raw_id = f"raw-user-{uuid.uuid4().hex}"
    caplog.set_level("DEBUG")
    response = await client.delete(f"/v1/users/{raw_id}", headers=bearer(tenants.site_key))
    assert response.status_code == 500
    assert raw_id not in response.text
    logged = [record for record in caplog.records if "unhandled error" in record.getMessage()]
    assert logged, "the 500 was not logged"
    assert "DELETE /v1/users/{user_id}" in logged[0].getMessage()
    # the server's loggers (httpx's lines are this test client's own requests)
    for record in caplog.records:
        if not record.name.startswith(("adserve", "litestar", "uvicorn")):
            continue
        assert raw_id not in record.getMessage()
        assert raw_id not in (record.exc_text or "")

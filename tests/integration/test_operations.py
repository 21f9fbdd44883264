from __future__ import annotations

import asyncio
import gc

import asyncpg
import msgspec
from litestar import get
from litestar.testing import AsyncTestClient

from adserve.app import create_app
from adserve.db.engine import asyncpg_dsn
from adserve.db.migrate import upgrade
from adserve.serving.heap import YOUNG_THRESHOLD


async def test_health_and_ready(settings, fresh_database) -> None:
    # a database of its own: the session's shared one holds champions other tests registered
    # (and whose artifacts they removed), which /ready rightly reports as not loaded
    url = await fresh_database()
    await asyncio.to_thread(upgrade, url)
    async with AsyncTestClient(create_app(with_database(settings, url))) as client:
        assert (await client.get("/health")).json() == {"status": "ok"}
        ready = await client.get("/ready")
        # the started process's heap is out of the collector's walks (adserve/serving/heap.py)
        assert gc.get_freeze_count() > 0 and gc.get_threshold()[0] == YOUNG_THRESHOLD
    assert gc.get_freeze_count() == 0
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["migrations"] == "ok"
    # the defaults' cold start: the empirical scorer under an untrained VW policy
    serving = ready.json()["serving"]
    assert (serving["scorer"]["kind"], serving["policy"]["kind"]) == ("empirical", "vw")
    assert serving["policy"]["version"] == "untrained"


async def test_ready_reports_the_objective_the_policy_serves(settings, fresh_database) -> None:
    url = await fresh_database()
    await asyncio.to_thread(upgrade, url)
    revenue = with_database(settings, url)
    clicks = msgspec.structs.replace(
        revenue, bandit=msgspec.structs.replace(settings.bandit, objective="clicks")
    )
    for configured, objective in ((revenue, "revenue"), (clicks, "clicks")):
        async with AsyncTestClient(create_app(configured)) as client:
            serving = (await client.get("/ready")).json()["serving"]
        assert (serving["policy"]["kind"], serving["policy"]["objective"]) == ("vw", objective)


def with_database(settings, url: str):
    return msgspec.structs.replace(settings, database=msgspec.structs.replace(settings.database, url=url))


async def test_ready_is_503_when_schema_is_behind(settings, fresh_database) -> None:
    url = await fresh_database()
    await asyncio.to_thread(upgrade, url)
    connection = await asyncpg.connect(**asyncpg_dsn(url))
    try:  # as if a newer release's migration had not been applied here yet
        await connection.execute("UPDATE alembic_version SET version_num = 'older'")
    finally:
        await connection.close()
    async with AsyncTestClient(create_app(with_database(settings, url))) as client:
        response = await client.get("/ready")
    assert response.status_code == 503
    assert response.json()["checks"]["migrations"].startswith("at older")


async def test_ready_is_503_when_database_is_unreachable(settings) -> None:
    app = create_app(with_database(settings, "postgresql://postgres@127.0.0.1:1/none"))
    async with AsyncTestClient(app) as client:
        response = await client.get("/ready")
    assert response.status_code == 503
    assert response.json()["checks"]["database"].startswith("unreachable")


async def test_openapi_schema_lists_admin_paths(client) -> None:
    schema = (await client.get("/schema/openapi.json")).json()
    assert "/admin/v1/campaigns" in schema["paths"]
    assert "/admin/v1/campaigns/{item_id}" in schema["paths"]
    assert schema["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"


async def test_a_500_never_leaks_a_stack_trace(settings) -> None:
    @get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals: password=hunter2")

    app = create_app(settings)
    app.register(boom)
    async with AsyncTestClient(app) as client:
        response = await client.get("/boom")
    assert response.status_code == 500
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "hunter2" not in response.text and "Traceback" not in response.text
    assert response.json()["title"] == "Internal Server Error"

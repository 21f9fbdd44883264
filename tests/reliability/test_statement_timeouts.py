"""Second paragraph: no statement timeouts. Every connection the app opens (the hot path's pool,
the ORM engine, the log writer's pool) and the shared helpers carry
`database.statement_timeout_ms` as the session's statement_timeout."""

from __future__ import annotations

import asyncio
import os

import asyncpg
import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import text

from adserve.app import create_app
from adserve.db.engine import asyncpg_dsn, create_engine
from adserve.settings import load_settings

TIMEOUT_MS = 1234


@pytest.fixture(scope="module")
def timeout_settings(database_url: str, tmp_path_factory: pytest.TempPathFactory):
    var = tmp_path_factory.mktemp("timeouts")
    return load_settings(
        environ={
            **os.environ,
            "ADSERVE_DATABASE_URL": database_url,
            "ADSERVE_VAR_DIR": str(var),
            "ADSERVE_WRITER_SPOOL_DIR": str(var / "spool"),
            "ADSERVE_MODELS_DIR": str(var / "models"),
            "ADSERVE_DATABASE_STATEMENT_TIMEOUT_MS": str(TIMEOUT_MS),
        }
    )


async def test_the_setting_reaches_asyncpg_and_the_orm(database_url, timeout_settings) -> None:
    connection = await asyncpg.connect(**asyncpg_dsn(database_url, statement_timeout_ms=TIMEOUT_MS))
    try:
        assert await connection.fetchval("SHOW statement_timeout") == f"{TIMEOUT_MS}ms"
        with pytest.raises(asyncpg.QueryCanceledError):
            await connection.execute("SELECT pg_sleep(5)")
    finally:
        await connection.close()
    engine = create_engine(database_url, timeout_settings)
    try:
        async with engine.connect() as orm:
            assert (await orm.execute(text("SHOW statement_timeout"))).scalar() == f"{TIMEOUT_MS}ms"
    finally:
        await engine.dispose()


async def test_every_connection_of_the_app_has_it(timeout_settings) -> None:
    async def timeouts(state) -> dict[str, str]:
        async with state.pool.acquire() as connection:
            pool = await connection.fetchval("SHOW statement_timeout")
        async with state.sessionmaker() as session:
            orm = (await session.execute(text("SHOW statement_timeout"))).scalar()
        async with state.writer._pool.acquire() as connection:  # the writer's own pool
            writer = await connection.fetchval("SHOW statement_timeout")
        return {"pool": pool, "orm": orm, "writer": writer}

    async with AsyncTestClient(create_app(timeout_settings)) as client:
        # the app's pools live on the test client's own loop
        seen = await asyncio.to_thread(client.blocking_portal.call, timeouts, client.app.state)
    assert seen == {"pool": f"{TIMEOUT_MS}ms", "orm": f"{TIMEOUT_MS}ms", "writer": f"{TIMEOUT_MS}ms"}


def test_the_default_is_a_timeout() -> None:
    settings = load_settings(environ={**os.environ})
    assert 0 < settings.database.statement_timeout_ms <= 60_000

"""Test environment: set before anything imports settings; one fresh database per test session.

With ADSERVE_TEST_DATABASE_URL set (CI points it at a real server), a new database is created on
that server for this session and dropped at the end. Otherwise an embedded Postgres (pgserver) is
started in a temporary folder. Nothing is shared between runs, and the session fails if any
process it started is still running at its end (tests/process_leaks.py).
"""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path

os.environ["ADSERVE_ENV"] = "test"
os.environ.setdefault("ADSERVE_SECRET_KEY", "test-secret-" + "x" * 40)
os.environ.pop("ADSERVE_DATABASE_URL", None)  # tests never touch a configured production database

import asyncpg
import pytest

from adserve.db.engine import EmbeddedPostgres, asyncpg_dsn
from adserve.db.migrate import upgrade

pytest_plugins = ["tests.process_leaks"]


def _with_database(url: str, name: str) -> str:
    base, _, query = url.partition("?")
    root = base.rsplit("/", 1)[0]
    return f"{root}/{name}" + (f"?{query}" if query else "")


async def _admin_execute(server_url: str, statement: str) -> None:
    connection = await asyncpg.connect(**asyncpg_dsn(server_url))
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    """A URL of a Postgres server the tests may create databases on."""
    configured = os.environ.get("ADSERVE_TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    embedded = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="adserve-test-pg-")))
    url = embedded.start()
    yield url
    embedded.stop()


@pytest.fixture(scope="session")
async def fresh_database(postgres_server_url: str):
    """Factory: creates an empty database with a unique name, dropped at session end."""
    created: list[str] = []

    async def create() -> str:
        name = f"adserve_test_{os.getpid()}_{secrets.token_hex(4)}"
        await _admin_execute(postgres_server_url, f'CREATE DATABASE "{name}"')
        created.append(name)
        return _with_database(postgres_server_url, name)

    yield create
    for name in created:
        await _admin_execute(postgres_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
async def database_url(fresh_database) -> str:
    """The session's migrated database."""
    import asyncio

    url = await fresh_database()
    await asyncio.to_thread(upgrade, url)
    return url

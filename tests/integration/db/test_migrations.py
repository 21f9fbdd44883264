"""Migrations are the only way the schema changes: they round-trip and match the models."""

from __future__ import annotations

import asyncio

import asyncpg

from adserve.db.engine import asyncpg_dsn
from adserve.db.migrate import current_revision, downgrade, drift, head_revision, upgrade
from adserve.db.tables import Base


async def _tables(url: str) -> set[str]:
    """The tables, less the partitions of partitioned ones."""
    connection = await asyncpg.connect(**asyncpg_dsn(url))
    try:
        rows = await connection.fetch(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
        )
    finally:
        await connection.close()
    return {row["relname"] for row in rows}


async def test_upgrade_downgrade_upgrade_round_trip(fresh_database) -> None:
    url = await fresh_database()
    assert await _tables(url) == set()

    await asyncio.to_thread(upgrade, url)
    assert await _tables(url) == set(Base.metadata.tables) | {"alembic_version"}
    assert await current_revision(url) == head_revision()

    await asyncio.to_thread(downgrade, url, "base")
    assert await _tables(url) == {"alembic_version"}
    assert await current_revision(url) is None

    await asyncio.to_thread(upgrade, url)
    assert await current_revision(url) == head_revision()


async def test_models_and_migrations_do_not_drift(database_url: str) -> None:
    differences = await asyncio.to_thread(drift, database_url)
    assert differences == []


async def test_drift_check_detects_a_schema_difference(fresh_database) -> None:
    """The drift check itself must be able to fail: an extra column is reported."""
    url = await fresh_database()
    await asyncio.to_thread(upgrade, url)
    connection = await asyncpg.connect(**asyncpg_dsn(url))
    try:
        await connection.execute("ALTER TABLE campaigns ADD COLUMN stray integer")
    finally:
        await connection.close()
    differences = await asyncio.to_thread(drift, url)
    assert any("stray" in repr(diff) for diff in differences)

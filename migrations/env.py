"""Alembic environment: async engine over asyncpg, target metadata from adserve.db.tables."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import pool

from adserve.db.engine import async_engine, sqlalchemy_url
from adserve.db.migrate import skip_partitions
from adserve.db.tables import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = config.attributes.get("url") or context.get_x_argument(as_dictionary=True).get("url")
    if url:
        return url
    from adserve.db.engine import resolve_database_url
    from adserve.settings import load_settings

    resolved, _ = resolve_database_url(load_settings())
    return resolved


def _configure(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        include_name=skip_partitions(connection),
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_online() -> None:
    # No statement timeout: a migration may rewrite a large table.
    engine = async_engine(_url(), poolclass=pool.NullPool)
    async with engine.connect() as connection:
        await connection.run_sync(_configure)
    await engine.dispose()


if context.is_offline_mode():
    context.configure(url=sqlalchemy_url(_url()), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_online())

"""Alembic as a library: upgrade, downgrade, head checks and model/migration drift.

Alembic's env.py runs its own event loop, so these functions are synchronous; call them from async
code through `asyncio.to_thread`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from adserve.db.engine import async_engine
from adserve.db.tables import Base

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "alembic_config",
    "current_revision",
    "downgrade",
    "drift",
    "head_revision",
    "skip_partitions",
    "upgrade",
]

ROOT = Path(__file__).resolve().parents[2]


def alembic_config(url: str) -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.attributes["url"] = url
    return config


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("postgresql://unused")).get_current_head()


async def _inspect(url: str, inspect_fn: Any) -> Any:
    engine = async_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(inspect_fn)
    finally:
        await engine.dispose()


async def current_revision(url: str) -> str | None:
    return await _inspect(url, lambda conn: MigrationContext.configure(conn).get_current_revision())


def skip_partitions(conn: Any) -> Callable[[str | None, str, dict[str, Any]], bool]:
    """An autogenerate `include_name` hook leaving out the partitions of partitioned tables: the
    models describe the partitioned parents; the partitions come and go with the jobs."""
    partitions: set[str] = set()

    def include_name(name: str | None, type_: str, parent_names: dict[str, Any]) -> bool:
        if type_ != "table":
            return True
        if not partitions:  # read when autogenerate runs, not before (no query outside its transaction)
            sql = "SELECT relname FROM pg_class WHERE relispartition UNION ALL SELECT ''"
            partitions.update(conn.exec_driver_sql(sql).scalars())
        return name not in partitions

    return include_name


def drift(url: str) -> list[Any]:
    """Differences autogenerate finds between the ORM models and a migrated database."""

    def compare(conn: Any) -> list[Any]:
        options = {"compare_type": True, "include_name": skip_partitions(conn)}
        context = MigrationContext.configure(conn, opts=options)
        return compare_metadata(context, Base.metadata)

    return asyncio.run(_inspect(url, compare))

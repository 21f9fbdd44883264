"""The Postgres channel that says "the catalogue changed": admin writes NOTIFY it in the
transaction of the change (delivered on commit), serving processes LISTEN and refresh their
snapshot (adserve/serving/catalog.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import text

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

__all__ = ["CATALOG_CHANNEL", "notify_catalog_changed"]

CATALOG_CHANNEL = "adserve_catalog"


async def notify_catalog_changed(session: AsyncSession) -> None:
    """Queues the notification on `session`'s transaction: listeners hear it once it commits."""
    await session.execute(text(f"NOTIFY {CATALOG_CHANNEL}"))

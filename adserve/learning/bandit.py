"""Temporary: `adserve/admin/ope.py` (another engineer's file in issue 14) still imports
`ope_from_logs` from here and passes the app's asyncpg pool. The bandit's Postgres side lives in
`rewards.py`, `decisions.py`, `learner.py` and `ope.py`; delete this module once admin/ope.py
calls `adserve.learning.ope.ope_from_logs` with the app's `Database`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import async_sessionmaker

from adserve.db.engine import Database
from adserve.learning import ope

if TYPE_CHECKING:
    import asyncpg

    from adserve.bandit.ope import OpeReport

__all__ = ["ope_from_logs"]


async def ope_from_logs(pool: asyncpg.Pool, *args: Any, **kwargs: Any) -> OpeReport:
    # OPE reads through the pool only: the unbound sessionmaker is never used
    return await ope.ope_from_logs(Database(pool, async_sessionmaker()), *args, **kwargs)

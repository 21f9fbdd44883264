"""Tracking hits whose token is not ours are counted, never stored one row per request.

Anyone can request ``/c/<anything>`` or ``/i/<anything>``; a row per request would let a script
fill the disk. Such a token carries nothing to join, bill or learn from, so each process counts
the hits in memory by minute, kind and reason, and adds the counts to ``invalid_tracking_hits``
every few seconds: storage grows with time (one row per minute and reason), not with traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncpg

__all__ = ["InvalidHitCounter"]

log = logging.getLogger(__name__)

FLUSH_S = 10.0
# While Postgres is away the counts wait in memory; past this many minutes × reasons the oldest
# are dropped (and the loss logged) so an outage cannot grow memory without bound either.
MAX_PENDING_KEYS = 10_000

ADD_SQL = """
INSERT INTO invalid_tracking_hits (minute, kind, reason, hits)
SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::bigint[])
ON CONFLICT (minute, kind, reason) DO UPDATE SET hits = invalid_tracking_hits.hits + EXCLUDED.hits
"""

HitKey = tuple[datetime, str, str]


class InvalidHitCounter:
    def __init__(self, pool: asyncpg.Pool, flush_s: float = FLUSH_S) -> None:
        self.pool = pool
        self.flush_s = flush_s
        self.pending: Counter[HitKey] = Counter()
        self._task: asyncio.Task[None] | None = None
        self._flushing = asyncio.Lock()  # one flush at a time: when one returns, all before it landed

    def count(self, kind: str, reason: str, now: datetime) -> None:
        """One hit of `kind` ('click' or 'impression') refused for `reason` ('tampered', …)."""
        self.pending[(now.replace(second=0, microsecond=0), kind, reason)] += 1

    async def flush(self) -> int:
        """Adds the pending counts to Postgres; returns the hits written. Kept for the next flush
        when Postgres is unreachable."""
        async with self._flushing:
            return await self._flush()

    async def _flush(self) -> int:
        counts, self.pending = self.pending, Counter()
        if not counts:
            return 0
        keys = sorted(counts)
        try:
            async with self.pool.acquire(timeout=5.0) as connection:
                await connection.execute(
                    ADD_SQL,
                    [minute for minute, _, _ in keys],
                    [kind for _, kind, _ in keys],
                    [reason for _, _, reason in keys],
                    [counts[key] for key in keys],
                )
        except Exception as exc:
            log.warning(
                "invalid tracking hits not stored yet (%s); kept for the next flush", type(exc).__name__
            )
            self._keep(counts)
            return 0
        return sum(counts.values())

    def _keep(self, counts: Counter[HitKey]) -> None:
        self.pending.update(counts)
        excess = len(self.pending) - MAX_PENDING_KEYS
        if excess > 0:
            dropped = sorted(self.pending)[:excess]
            lost = sum(self.pending.pop(key) for key in dropped)
            log.warning("dropped %d invalid tracking hits counted during a long outage", lost)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            await self.flush()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        """Stops the periodic flush and writes what is left."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()

"""Impressions and clicks from signed tracking URLs, with invalid traffic stored but never counted.

One impression per decision (the decision id is the impression's key). Every click with a
genuine token is stored; it counts (as a reward and as CPC spend) only when the token is
unexpired, the user agent is not a bot, the decision's impression was recorded, and no valid click
of the same decision exists yet. Otherwise it is stored with `valid = false` and the reason. A
token that is not ours (tampered, garbage) is only counted (`invalid_hits`), never stored per hit.
"""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from adserve.db.rows import make_row
from adserve.events.writer import REPLAY_LOCK_KEY
from adserve.signing.tokens import TokenError, TokenKind

if TYPE_CHECKING:
    from collections.abc import Mapping

    import asyncpg

    from adserve.events.invalid_hits import InvalidHitCounter
    from adserve.signing.tokens import TrackingClaims, TrackingSigner

__all__ = ["BOT_USER_AGENT", "ClickOutcome", "LiveCatalog", "Tracker"]

log = logging.getLogger(__name__)

# Declared crawlers, headless browsers and HTTP libraries: their clicks are invalid traffic.
BOT_USER_AGENT = re.compile(
    r"bot|crawl|spider|slurp|headless|phantomjs|selenium|puppeteer|playwright|curl|wget|"
    r"python-requests|python-httpx|aiohttp|go-http-client|java/|okhttp|libwww|scrapy|preview",
    re.IGNORECASE,
)

# `replaying`: some process's log writer is replaying a spool (it holds REPLAY_LOCK_KEY shared).
CLICK_STATE_SQL = f"""
SELECT EXISTS (SELECT 1 FROM impressions WHERE decision_id = $1) AS impressed,
       EXISTS (SELECT 1 FROM clicks WHERE decision_id = $1 AND valid) AS clicked,
       EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = 0
               AND objid = {REPLAY_LOCK_KEY} AND objsubid = 1) AS replaying
"""

LANDING_SQL = "SELECT landing_url FROM creatives WHERE id = $1"


class _Creative(Protocol):
    @property
    def landing_url(self) -> str: ...


class _Snapshot(Protocol):
    @property
    def creatives(self) -> Mapping[int, _Creative]: ...


class LiveCatalog(Protocol):
    """What the tracker reads of serving's catalogue cache (adserve/serving/catalog.py): the
    current snapshot's creatives, for a click's landing URL without a query."""

    @property
    def catalog(self) -> _Snapshot: ...


@dataclass(frozen=True, slots=True)
class ClickOutcome:
    valid: bool
    reason: str | None
    landing_url: str | None


class Tracker:
    def __init__(
        self,
        *,
        signer: TrackingSigner,
        writer: Any,
        pool: asyncpg.Pool,
        catalog: LiveCatalog,
        invalid_hits: InvalidHitCounter,
    ) -> None:
        self.signer = signer
        self.writer = writer
        self.pool = pool
        self.catalog = catalog
        self.invalid_hits = invalid_hits

    async def impression(self, token: str, now: datetime | None = None) -> TrackingClaims:
        """Records the impression; raises TokenError for tampered or expired tokens."""
        now = now or datetime.now(UTC)
        try:
            claims = self.signer.verify(token, TokenKind.IMPRESSION, now.timestamp())
        except TokenError as error:
            self.invalid_hits.count("impression", error.reason, now)
            raise
        await self.writer.write(
            "impressions",
            [
                make_row(
                    "impressions",
                    decision_id=claims.decision_id,
                    ts=now,
                    creative_id=claims.creative_id,
                    campaign_id=claims.campaign_id,
                    placement_id=claims.placement_id,
                    user_id=claims.user_key,
                    cost=claims.impression_cost,
                )
            ],
        )
        return claims

    async def _click_state(self, decision_id: uuid.UUID) -> tuple[bool, bool]:
        """(impression recorded, valid click exists). While Postgres is away, or this process's
        writer or any other process's is still replaying a spool, or another slot of this host's
        spool folder holds rows (`LogWriter.caught_up`), stored rows are incomplete: the
        impression is taken on the token's word then, and the writer still stores at most one
        valid click per decision."""
        if not self.writer.caught_up:
            return True, False
        try:
            async with self.pool.acquire(timeout=1.0) as connection:
                row = await connection.fetchrow(CLICK_STATE_SQL, decision_id)
            return bool(row["impressed"] or row["replaying"]), bool(row["clicked"])
        except Exception:
            log.warning("click state unavailable; validating the click by its token alone")
            return True, False

    async def _landing_url(self, creative_id: int) -> str | None:
        entry = self.catalog.catalog.creatives.get(creative_id)
        if entry is not None:
            return entry.landing_url
        try:
            async with self.pool.acquire(timeout=1.0) as connection:
                return await connection.fetchval(LANDING_SQL, creative_id)
        except Exception:
            return None

    async def click(self, token: str, user_agent: str | None, now: datetime | None = None) -> ClickOutcome:
        now = now or datetime.now(UTC)
        claims: TrackingClaims | None
        reason: str | None = None
        try:
            claims = self.signer.verify(token, TokenKind.CLICK, now.timestamp())
        except TokenError as error:
            claims, reason = error.claims, error.reason
        if claims is None:
            # Not our token: nothing to join, bill or redirect to, so a counter, not a row.
            self.invalid_hits.count("click", reason or "tampered", now)
            return ClickOutcome(valid=False, reason=reason, landing_url=None)
        if reason is None and (not user_agent or BOT_USER_AGENT.search(user_agent)):
            reason = "bot"
        if reason is None:
            impressed, clicked = await self._click_state(claims.decision_id)
            if clicked:
                reason = "duplicate"
            elif not impressed:
                reason = "no_impression"
        valid = reason is None
        await self.writer.write(
            "clicks",
            [
                make_row(
                    "clicks",
                    id=uuid.uuid4(),
                    decision_id=claims.decision_id,
                    ts=now,
                    creative_id=claims.creative_id,
                    campaign_id=claims.campaign_id,
                    placement_id=claims.placement_id,
                    user_id=claims.user_key,
                    valid=valid,
                    invalid_reason=reason,
                    cost=claims.click_cost if valid else 0.0,
                )
            ],
        )
        landing = await self._landing_url(claims.creative_id)
        return ClickOutcome(valid=valid, reason=reason, landing_url=landing)

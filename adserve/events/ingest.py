"""Behaviour events: stored under the user's pseudonymous key, durable before the call returns.

The POST answers only after the batch is committed (or spooled), so the user's very next decision,
served by any process, sees it; when it can be kept in neither, the writer's SpoolFullError makes
it a 503 with Retry-After, never an acceptance. Events without consent are not stored at all. A
purchase by a user who made a valid click within the attribution window becomes a conversion of
that click's decision; its id derives from the purchase event's id, so a retried batch never
converts twice.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from adserve.db.rows import make_row
from adserve.errors import InvalidInput
from adserve.events.schemas import MAX_EVENTS_PER_BATCH, EventBatch, EventsAccepted
from adserve.settings import SettingsError

if TYPE_CHECKING:
    import asyncpg

    from adserve.signing.identity import UserKeys

__all__ = ["CONVERSION_NAMESPACE", "EventIngest"]

log = logging.getLogger(__name__)

CONVERSION_NAMESPACE = uuid.UUID("6f1d3c52-8a0e-4f6b-9a51-3c2f0f7e9b10")
MAX_FUTURE_SKEW = timedelta(minutes=5)

LAST_CLICK_SQL = """
SELECT id, decision_id, campaign_id FROM clicks
WHERE user_id = $1 AND valid AND ts <= $2 AND ts > $3
ORDER BY ts DESC LIMIT 1
"""

TOUCH_USERS_SQL = """
INSERT INTO users (id, consent, last_seen_at) SELECT unnest($1::text[]), true, now()
ON CONFLICT (id) DO UPDATE SET consent = true, last_seen_at = now()
"""


class EventIngest:
    def __init__(
        self,
        *,
        writer: Any,
        pool: asyncpg.Pool,
        user_keys: UserKeys,
        attribution_window_s: int,
        max_events: int = MAX_EVENTS_PER_BATCH,
    ) -> None:
        if not 1 <= max_events <= MAX_EVENTS_PER_BATCH:
            # the API schema and the body limit of POST /v1/events are sized for this maximum
            raise SettingsError(
                f"serving.max_events_per_batch must be within [1, {MAX_EVENTS_PER_BATCH}], got {max_events}"
            )
        self.max_events = max_events
        self.writer = writer
        self.pool = pool
        self.user_keys = user_keys
        self.attribution_window = timedelta(seconds=attribution_window_s)

    async def ingest(self, batch: EventBatch, now: datetime | None = None) -> EventsAccepted:
        now = now or datetime.now(UTC)
        if len(batch.events) > self.max_events:
            raise InvalidInput(f"at most {self.max_events} events per batch, got {len(batch.events)}")
        for index, event in enumerate(batch.events):
            if event.ts.tzinfo is None:
                raise InvalidInput(f"events[{index}].ts must include a UTC offset")
            if event.ts > now + MAX_FUTURE_SKEW:
                raise InvalidInput(f"events[{index}].ts is in the future")
        if not batch.consent:
            return EventsAccepted(
                received=len(batch.events),
                stored=0,
                ignored_without_consent=len(batch.events),
                durability="none",
            )
        rows = []
        users: set[str] = set()
        purchases: list[tuple[uuid.UUID, str, datetime, float]] = []
        for event in batch.events:
            user_key = self.user_keys.consented(event.user_id)
            users.add(user_key)
            rows.append(
                make_row(
                    "user_events",
                    id=event.event_id,
                    user_id=user_key,
                    event_type=event.type,
                    ts=event.ts,
                    item_id=event.item_id,
                    category=event.category,
                    price=event.price,
                    query=event.query,
                    received_at=now,
                )
            )
            if event.type == "purchase":
                purchases.append((event.event_id, user_key, event.ts, event.price or 0.0))
        durability = await self.writer.write("user_events", rows)
        await self._touch_users(sorted(users))
        if purchases:
            await self._attribute(purchases)
        return EventsAccepted(
            received=len(batch.events), stored=len(rows), ignored_without_consent=0, durability=durability
        )

    async def _touch_users(self, user_keys: list[str]) -> None:
        try:
            async with self.pool.acquire(timeout=1.0) as connection:
                await connection.execute(TOUCH_USERS_SQL, user_keys)
        except Exception:
            log.warning("could not update users' last-seen time")

    async def _attribute(self, purchases: list[tuple[uuid.UUID, str, datetime, float]]) -> None:
        conversions = []
        try:
            async with self.pool.acquire(timeout=1.0) as connection:
                for event_id, user_key, ts, value in purchases:
                    click = await connection.fetchrow(
                        LAST_CLICK_SQL, user_key, ts, ts - self.attribution_window
                    )
                    if click is None:
                        continue
                    conversions.append(
                        make_row(
                            "conversions",
                            id=uuid.uuid5(CONVERSION_NAMESPACE, str(event_id)),
                            decision_id=click["decision_id"],
                            click_id=click["id"],
                            ts=ts,
                            user_id=user_key,
                            campaign_id=click["campaign_id"],
                            value=value,
                        )
                    )
        except Exception:
            log.warning("conversion attribution unavailable for %d purchase(s)", len(purchases))
            return
        if conversions:
            await self.writer.write("conversions", conversions)

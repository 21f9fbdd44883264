"""Behaviour and delivery analytics of the admin API, read live from the raw tables.

- ``/analytics/users/{user_key}/interests`` (admin only): a user's interest profile. With an
  interest model loaded, the next-item head's probabilities over the catalogue are summed by each
  item's category (categories come from the items' own events); otherwise recency-weighted shares
  of the user's events. The response says which (``source``). The key is the pseudonymous user key
  stored in ``user_events.user_id``, never a site's raw id.
- ``/analytics/trending``: categories or items by UTC day from ``user_events``, with day-over-day
  change.
- ``/analytics/ctr``: impressions, valid clicks and CTR by segment, placement, device or page
  category (the decision's logged context), scoped to the caller's advertiser for manager and
  viewer keys (impressions → campaigns.advertiser_id).
- ``/analytics/daily``: impressions, valid clicks, CTR, billed spend and unbilled deliveries per UTC
  day, scoped the same way; the dashboard uses it for days the hourly rollup behind ``/reports``
  has not reached yet.

One module (a little over 450 lines) because the four endpoints share their scoping, window and
SQL helpers; each endpoint is a short handler over one statement.
"""

from __future__ import annotations

import asyncio
import math
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal

from litestar import Controller, Request, get
from litestar.params import FromQuery, PathParameter, QueryParameter
from msgspec import Struct
from sqlalchemy import text

from adserve.admin.auth import Caller, requires_admin
from adserve.admin.params import MAX_ID, CallerDep, DbSession, Limit, Offset
from adserve.domain import BehaviourEvent, EventType
from adserve.errors import Conflict, NotFound

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

__all__ = ["AnalyticsController"]

Days = Annotated[int, QueryParameter(ge=1, le=90, description="Days back from now (UTC), today included")]
AdvertiserFilter = Annotated[int | None, QueryParameter(ge=1, le=MAX_ID, description="admins only")]
UserKey = Annotated[
    str,
    PathParameter(min_length=8, max_length=64, pattern=r"^[0-9a-z]+$", description="pseudonymous user key"),
]

HISTORY_LIMIT = 200  # most recent events read for a profile (the model reads at most max_len of them)
MODEL_ITEMS = 2000  # next-item probabilities summed by category: the top items carry nearly all mass
HALF_LIFE_S = 7 * 86400.0  # recency weighting of the events fallback
EVENT_WEIGHTS = {
    EventType.PURCHASE: 5.0,
    EventType.ADD_TO_CART: 3.0,
    EventType.AD_CLICK: 2.0,
    EventType.PRODUCT_VIEW: 1.0,
    EventType.SEARCH: 1.0,
    EventType.PAGE_VIEW: 0.5,
}
NONE_KEY = "(none)"


class CategoryWeight(Struct, kw_only=True):
    category: str
    weight: float  # shares sum to 1 over the categories returned by the source


class InterestProfile(Struct, kw_only=True):
    user_key: str
    source: Literal["model", "events"]
    model_version: str | None
    events: int  # events of the user read for the profile (most recent first, at most 200)
    last_event_at: datetime | None
    categories: list[CategoryWeight]


class DayCount(Struct, kw_only=True):
    day: date
    count: int
    change: int  # versus the previous day (the day before the window counts as well)
    change_pct: float | None  # None when the previous day had none


class TrendingRow(Struct, kw_only=True):
    key: str
    total: int
    last_day_change: int
    days: list[DayCount]


class TrendingPage(Struct, kw_only=True):
    kind: str
    date_from: date
    date_to: date
    items: list[TrendingRow]
    total: int
    limit: int
    offset: int


class CtrRow(Struct, kw_only=True):
    key: str
    impressions: int
    clicks: int  # valid clicks
    ctr: float | None


class CtrPage(Struct, kw_only=True):
    by: str
    days: int
    advertiser_id: int | None
    items: list[CtrRow]
    total: int
    limit: int
    offset: int


class DailyRow(Struct, kw_only=True):
    day: date
    impressions: int
    clicks: int
    ctr: float | None
    spend: float  # impression (CPM) and valid-click (CPC) charges billed
    unbilled: float  # what deliveries beyond the total or daily budget were worth, never billed


class DailySeries(Struct, kw_only=True):
    days: int
    advertiser_id: int | None
    items: list[DailyRow]


# Grouping keys of /ctr: fixed SQL fragments chosen from a whitelist, never built from input.
CTR_KEYS = {
    "placement": "coalesce(p.key, i.placement_id::text)",
    "device": f"coalesce(nullif(d.context->>'device', ''), '{NONE_KEY}')",
    "page_category": f"coalesce(nullif(d.context->>'page_category', ''), '{NONE_KEY}')",
    "segment": f"coalesce(seg.value, '{NONE_KEY}')",
}
SEGMENTS_JOIN = """
    LEFT JOIN LATERAL jsonb_array_elements_text(
        CASE WHEN jsonb_typeof(d.context->'segments') = 'array' THEN d.context->'segments'
             ELSE '[]'::jsonb END) AS seg(value) ON true
"""
CTR_SQL = """
    SELECT {key} AS key,
           count(*) AS impressions,
           count(c.id) AS clicks,
           count(*) OVER () AS total
    FROM impressions i
    JOIN campaigns k ON k.id = i.campaign_id
    LEFT JOIN decisions d ON d.id = i.decision_id
    LEFT JOIN placements p ON p.id = i.placement_id
    LEFT JOIN clicks c ON c.decision_id = i.decision_id AND c.valid
    {segments}
    WHERE i.ts >= :since AND (CAST(:advertiser_id AS bigint) IS NULL OR k.advertiser_id = :advertiser_id)
    GROUP BY 1
    ORDER BY impressions DESC, key
    LIMIT :limit OFFSET :offset
"""
DAILY_SQL = text(
    """
    WITH imp AS (
        SELECT (i.ts AT TIME ZONE 'UTC')::date AS day, count(*) AS impressions, sum(i.cost) AS cost,
               sum(i.unbilled) AS unbilled
        FROM impressions i JOIN campaigns k ON k.id = i.campaign_id
        WHERE i.ts >= :since AND (CAST(:advertiser_id AS bigint) IS NULL OR k.advertiser_id = :advertiser_id)
        GROUP BY 1
    ), clk AS (
        SELECT (c.ts AT TIME ZONE 'UTC')::date AS day, count(*) AS clicks, sum(c.cost) AS cost,
               sum(c.unbilled) AS unbilled
        FROM clicks c JOIN campaigns k ON k.id = c.campaign_id
        WHERE c.valid AND c.ts >= :since
          AND (CAST(:advertiser_id AS bigint) IS NULL OR k.advertiser_id = :advertiser_id)
        GROUP BY 1
    )
    SELECT coalesce(imp.day, clk.day) AS day,
           coalesce(imp.impressions, 0) AS impressions,
           coalesce(clk.clicks, 0) AS clicks,
           coalesce(imp.cost, 0) + coalesce(clk.cost, 0) AS spend,
           coalesce(imp.unbilled, 0) + coalesce(clk.unbilled, 0) AS unbilled
    FROM imp FULL JOIN clk ON clk.day = imp.day
    ORDER BY 1
    """
)
TRENDING_TOP_SQL = """
    SELECT {column} AS key, count(*) AS total, count(*) OVER () AS n_keys
    FROM user_events
    WHERE ts >= :since AND ts < :until AND {column} IS NOT NULL
    GROUP BY 1
    ORDER BY total DESC, key
    LIMIT :limit OFFSET :offset
"""
TRENDING_DAYS_SQL = """
    SELECT {column} AS key, (ts AT TIME ZONE 'UTC')::date AS day, count(*) AS n
    FROM user_events
    WHERE ts >= :before AND ts < :until AND {column} = ANY(:keys)
    GROUP BY 1, 2
"""
TRENDING_COLUMNS = {"category": "category", "item": "item_id"}
HISTORY_SQL = text(
    """
    SELECT event_type, ts, item_id, category, price, query FROM user_events
    WHERE user_id = :user_key ORDER BY ts DESC LIMIT :limit
    """
)
ITEM_CATEGORIES_SQL = text(
    """
    SELECT DISTINCT ON (item_id) item_id, category FROM user_events
    WHERE item_id = ANY(:items) AND category IS NOT NULL
    ORDER BY item_id, ts DESC
    """
)


def _scope(caller: Caller, advertiser_id: int | None) -> int | None:
    """Managers and viewers see their own advertiser only; asking for another one is a 404."""
    if caller.is_admin:
        return advertiser_id
    if advertiser_id is not None and advertiser_id != caller.advertiser_id:
        raise NotFound(f"advertiser {advertiser_id} not found")
    return caller.advertiser_id


def _window_start(days: int, now: datetime) -> datetime:
    """Midnight UTC `days - 1` days ago: `days=1` is today so far."""
    today = datetime(now.year, now.month, now.day, tzinfo=UTC)
    return today - timedelta(days=days - 1)


def _ctr(impressions: int, clicks: int) -> float | None:
    return clicks / impressions if impressions else None


def events_profile(history: list[BehaviourEvent], now: float, top: int) -> list[CategoryWeight]:
    """Recency-weighted category shares: each event counts by its type, halving every 7 days."""
    weights: dict[str, float] = defaultdict(float)
    for event in history:
        if not event.category:
            continue
        age = max(now - event.ts, 0.0)
        weights[event.category] += EVENT_WEIGHTS.get(EventType(event.event_type), 1.0) * math.pow(
            0.5, age / HALF_LIFE_S
        )
    return _normalised(weights, top)


def _normalised(weights: dict[str, float], top: int) -> list[CategoryWeight]:
    total = sum(weights.values())
    if total <= 0:
        return []
    ranked = sorted(weights.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return [CategoryWeight(category=name, weight=round(value / total, 6)) for name, value in ranked]


def _interest_model(request: Request) -> Any:
    models = getattr(request.app.state, "models", None)
    holder = getattr(models, "interest", None)
    if holder is None:
        return None
    try:
        holder.current  # noqa: B018 - raises RuntimeError when no version has loaded
    except RuntimeError:
        return None
    return holder


class AnalyticsController(Controller):
    path = "/analytics"
    tags = ["analytics"]  # noqa: RUF012

    @get("/users/{user_key:str}/interests", guards=[requires_admin], summary="A user's interests")
    async def user_interests(
        self,
        request: Request,
        db_session: DbSession,
        user_key: UserKey,
        top: Annotated[int, QueryParameter(ge=1, le=50, description="categories returned")] = 10,
        source: FromQuery[Literal["auto", "model", "events"]] = "auto",
    ) -> InterestProfile:
        """Top categories with weights. `source=auto` uses the interest model when one is loaded
        and any of its likely next items has a known category, else the user's events."""
        rows = (await db_session.execute(HISTORY_SQL, {"user_key": user_key, "limit": HISTORY_LIMIT})).all()
        if not rows:
            raise NotFound("no behaviour events for this user key (unknown, erased or without consent)")
        history = [
            BehaviourEvent(
                event_type=EventType(row.event_type),
                ts=row.ts.timestamp(),
                item_id=row.item_id,
                category=row.category,
                price=row.price,
                query=row.query,
            )
            for row in reversed(rows)  # oldest first
        ]
        holder = _interest_model(request) if source != "events" else None
        if source == "model" and holder is None:
            raise Conflict("no interest model is loaded in this process")
        if holder is not None:
            categories, version = await self._model_profile(db_session, holder, history, user_key, top)
            if categories or source == "model":
                return InterestProfile(
                    user_key=user_key,
                    source="model",
                    model_version=version,
                    events=len(history),
                    last_event_at=rows[0].ts,
                    categories=categories,
                )
        return InterestProfile(
            user_key=user_key,
            source="events",
            model_version=None,
            events=len(history),
            last_event_at=rows[0].ts,
            categories=events_profile(history, datetime.now(UTC).timestamp(), top),
        )

    @staticmethod
    async def _model_profile(
        db_session: AsyncSession, holder: Any, history: list[BehaviourEvent], user_key: str, top: int
    ) -> tuple[list[CategoryWeight], str]:
        """Next-item probabilities summed by each item's category, renormalised over the items
        whose category is known."""
        scorer = holder.current
        k = max(1, min(MODEL_ITEMS, len(scorer.vocab) - 1))
        ranked = await asyncio.to_thread(scorer.recommend, history, k, False, user_key)
        if not ranked:
            return [], scorer.version
        result = await db_session.execute(ITEM_CATEGORIES_SQL, {"items": [item for item, _ in ranked]})
        mapping = {row.item_id: row.category for row in result}
        weights: dict[str, float] = defaultdict(float)
        for item, probability in ranked:
            if item in mapping:
                weights[mapping[item]] += probability
        return _normalised(weights, top), scorer.version

    @get("/trending", summary="Trending categories or items")
    async def trending(
        self,
        db_session: DbSession,
        kind: FromQuery[Literal["category", "item"]] = "category",
        days: Days = 7,
        limit: Limit = 20,
        offset: Offset = 0,
    ) -> TrendingPage:
        """The categories (or items) with most behaviour events over the window, each with its
        count per UTC day and the change from the day before."""
        column = TRENDING_COLUMNS[kind]
        now = datetime.now(UTC)
        since = _window_start(days, now)
        until = since + timedelta(days=days)
        params = {"since": since, "until": until, "limit": limit, "offset": offset}
        top = (await db_session.execute(text(TRENDING_TOP_SQL.format(column=column)), params)).all()
        keys = [row.key for row in top]
        counts: dict[tuple[str, date], int] = {}
        if keys:
            day_rows = await db_session.execute(
                text(TRENDING_DAYS_SQL.format(column=column)),
                {"before": since - timedelta(days=1), "until": until, "keys": keys},
            )
            counts = {(row.key, row.day): int(row.n) for row in day_rows}
        window = [since.date() + timedelta(days=n) for n in range(days)]
        items = []
        for row in top:
            series = []
            previous = counts.get((row.key, since.date() - timedelta(days=1)), 0)
            for day in window:
                count = counts.get((row.key, day), 0)
                series.append(
                    DayCount(
                        day=day,
                        count=count,
                        change=count - previous,
                        change_pct=round((count - previous) / previous, 6) if previous else None,
                    )
                )
                previous = count
            items.append(
                TrendingRow(key=row.key, total=int(row.total), last_day_change=series[-1].change, days=series)
            )
        return TrendingPage(
            kind=kind,
            date_from=window[0],
            date_to=window[-1],
            items=items,
            total=int(top[0].n_keys) if top else 0,
            limit=limit,
            offset=offset,
        )

    @get("/ctr", summary="Click-through rate by key")
    async def ctr(
        self,
        db_session: DbSession,
        caller: CallerDep,
        by: FromQuery[Literal["segment", "placement", "device", "page_category"]] = "placement",
        days: Days = 7,
        advertiser_id: AdvertiserFilter = None,
        limit: Limit = 100,
        offset: Offset = 0,
    ) -> CtrPage:
        """Impressions, valid clicks and CTR per key over the window. By segment, an impression
        counts once for each segment of its request (`(none)` when it had none)."""
        scoped = _scope(caller, advertiser_id)
        sql = CTR_SQL.format(key=CTR_KEYS[by], segments=SEGMENTS_JOIN if by == "segment" else "")
        params = {
            "since": _window_start(days, datetime.now(UTC)),
            "advertiser_id": scoped,
            "limit": limit,
            "offset": offset,
        }
        rows = (await db_session.execute(text(sql), params)).all()
        items = [
            CtrRow(
                key=row.key,
                impressions=int(row.impressions),
                clicks=int(row.clicks),
                ctr=_ctr(int(row.impressions), int(row.clicks)),
            )
            for row in rows
        ]
        total = int(rows[0].total) if rows else 0
        return CtrPage(
            by=by, days=days, advertiser_id=scoped, items=items, total=total, limit=limit, offset=offset
        )

    @get("/daily", summary="Daily delivery and spend")
    async def daily(
        self,
        db_session: DbSession,
        caller: CallerDep,
        days: Days = 14,
        advertiser_id: AdvertiserFilter = None,
    ) -> DailySeries:
        """Impressions, valid clicks, CTR, billed spend and unbilled deliveries (beyond a budget)
        per UTC day, live from the raw tables (days without traffic are left out; at most 90 rows,
        so no pagination)."""
        scoped = _scope(caller, advertiser_id)
        params = {"since": _window_start(days, datetime.now(UTC)), "advertiser_id": scoped}
        rows = (await db_session.execute(DAILY_SQL, params)).all()
        items = [
            DailyRow(
                day=row.day,
                impressions=int(row.impressions),
                clicks=int(row.clicks),
                ctr=_ctr(int(row.impressions), int(row.clicks)),
                spend=round(float(row.spend), 6),
                unbilled=round(float(row.unbilled), 6),
            )
            for row in rows
        ]
        return DailySeries(days=days, advertiser_id=scoped, items=items)

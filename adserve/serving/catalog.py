"""The in-memory catalogue snapshot the hot path reads, and the task that keeps it fresh.

A snapshot is immutable; a refresh builds a new one and swaps one reference, so a request sees
one consistent catalogue. Refreshes happen when the admin API changes the catalogue (Postgres
NOTIFY on `adserve_catalog`, delivered to every process) and at least every
`serving.catalog_refresh_s` seconds, which also picks up spend and budget reservations from other
processes (a reservation counts until its tokens expire, `serving.token_ttl_s`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from adserve.db.catalog_channel import CATALOG_CHANNEL
from adserve.db.rows import candidate_from_row
from adserve.domain import Candidate, Pricing

if TYPE_CHECKING:
    from collections.abc import Iterable

    import asyncpg

__all__ = [
    "CampaignState",
    "Catalog",
    "CatalogCache",
    "CreativeEntry",
    "PlacementEntry",
    "campaign_counts",
    "load_catalog",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Targeting:
    geo: frozenset[str] = frozenset()
    device: frozenset[str] = frozenset()
    page_categories: frozenset[str] = frozenset()
    keywords: frozenset[str] = frozenset()
    segments: frozenset[str] = frozenset()

    @classmethod
    def from_json(cls, raw: dict | None) -> Targeting:
        raw = raw or {}

        def values(name: str, lower: bool = False) -> frozenset[str]:
            return frozenset(v.lower() if lower else v for v in raw.get(name) or ())

        return cls(
            geo=values("geo", lower=True),
            device=values("device", lower=True),
            page_categories=values("page_categories", lower=True),
            keywords=values("keywords", lower=True),
            segments=values("segments"),
        )


@dataclass(frozen=True, slots=True)
class CampaignState:
    id: int
    advertiser_id: int
    pricing: Pricing
    bid: float
    total_budget: float | None
    daily_budget: float | None
    start_at: datetime | None
    end_at: datetime | None
    timezone: ZoneInfo
    targeting: Targeting
    frequency_cap: int | None
    frequency_window_s: int | None
    spend_total: float
    spend_today: float
    spend_day: date | None
    reserved: float = 0.0  # unexpired reservations of served decisions (adserve/serving/budget.py)

    @property
    def cost_per_event(self) -> float:
        """What one counted event costs: a click's bid (CPC) or a thousandth of the CPM price."""
        return self.bid if self.pricing is Pricing.CPC else self.bid / 1000.0


@dataclass(frozen=True, slots=True)
class CreativeEntry:
    id: int
    campaign: CampaignState
    width: int
    height: int
    title: str
    image_url: str
    landing_url: str
    candidate: Candidate


@dataclass(frozen=True, slots=True)
class PlacementEntry:
    id: int
    key: str
    width: int
    height: int
    page_type: str
    position: int


@dataclass(frozen=True, slots=True)
class Catalog:
    placements: dict[str, PlacementEntry]
    creatives: dict[int, CreativeEntry]
    by_size: dict[tuple[int, int], tuple[CreativeEntry, ...]]
    loaded_at: float = field(default_factory=time.time)  # when its read began (unix seconds)
    # size -> what decisions for it need besides its creatives, filled on first ask
    _by_size_figures: dict[tuple[int, int], _SizeFigures] = field(
        default_factory=dict, compare=False, repr=False
    )
    # size -> its creatives' candidates (`candidates_for`), the previous snapshot's tuple if equal
    _candidates_by_size: dict[tuple[int, int], tuple[Candidate, ...]] = field(
        default_factory=dict, compare=False, repr=False
    )

    @classmethod
    def empty(cls) -> Catalog:
        return cls(placements={}, creatives={}, by_size={}, loaded_at=0.0)

    def creatives_for(self, placement: PlacementEntry) -> tuple[CreativeEntry, ...]:
        return self.by_size.get((placement.width, placement.height), ())

    def campaigns_for(self, placement: PlacementEntry) -> tuple[tuple[CampaignState, int], ...]:
        """The campaigns with a creative of the placement's size, each with its creative count
        (`eligibility.campaign_counts`)."""
        return self._size_figures(placement).campaigns

    def capped_campaigns_for(self, placement: PlacementEntry) -> frozenset[int]:
        """The frequency-capped campaigns with a creative of the placement's size."""
        return self._size_figures(placement).capped

    def candidates_for(self, placement: PlacementEntry) -> tuple[Candidate, ...]:
        """`creatives_for`'s candidates, in order: one tuple per size for the snapshot's life (and
        the next snapshots' while they stay equal: `load_catalog`), so what scorers and policies
        keep per candidate list is found by its identity."""
        size = (placement.width, placement.height)
        held = self._candidates_by_size.get(size)
        if held is None:
            held = self._candidates_by_size[size] = tuple(c.candidate for c in self.creatives_for(placement))
        return held

    def _size_figures(self, placement: PlacementEntry) -> _SizeFigures:
        """Worked out once per size: the snapshot never changes."""
        size = (placement.width, placement.height)
        held = self._by_size_figures.get(size)
        if held is None:
            creatives = self.creatives_for(placement)
            counts = campaign_counts(creatives)
            held = self._by_size_figures[size] = _SizeFigures(
                campaigns=counts,
                capped=frozenset(campaign.id for campaign, _ in counts if campaign.frequency_cap),
            )
        return held


@dataclass(frozen=True, slots=True)
class _SizeFigures:
    campaigns: tuple[tuple[CampaignState, int], ...]
    capped: frozenset[int]


def campaign_counts(creatives: Iterable[CreativeEntry]) -> tuple[tuple[CampaignState, int], ...]:
    """Each campaign among the creatives (in order of first appearance) with its creative count."""
    counts: dict[int, list] = {}
    for creative in creatives:
        held = counts.get(creative.campaign.id)
        if held is None:
            counts[creative.campaign.id] = [creative.campaign, 1]
        else:
            held[1] += 1
    return tuple((campaign, count) for campaign, count in counts.values())


PLACEMENTS_SQL = """
SELECT id, key, width, height, page_type, position FROM placements WHERE status = 'active'
"""

CREATIVES_SQL = """
SELECT cr.id, cr.width, cr.height, cr.title, cr.image_url, cr.landing_url, cr.category, cr.brand,
       cr.product_ids, cr.price,
       c.id AS campaign_id, c.advertiser_id, c.pricing, c.bid, c.total_budget, c.daily_budget,
       c.start_at, c.end_at, c.timezone, c.targeting, c.frequency_cap, c.frequency_window_s,
       c.spend_total, c.spend_today, c.spend_day, coalesce(r.reserved, 0) AS reserved
FROM creatives cr
JOIN campaigns c ON c.id = cr.campaign_id
JOIN advertisers a ON a.id = c.advertiser_id
LEFT JOIN (
    -- a bucket's tokens were issued within its minute: it lapses a minute after the oldest expiry
    SELECT campaign_id, sum(amount) AS reserved FROM budget_reservations
    WHERE served_minute > now() - make_interval(secs => $1 + 60)
    GROUP BY campaign_id
) r ON r.campaign_id = c.id
WHERE cr.status = 'active' AND c.status = 'active' AND a.status = 'active'
"""


async def load_catalog(
    connection: asyncpg.Connection, reservation_ttl_s: float = 3600.0, previous: Catalog | None = None
) -> Catalog:
    """The active catalogue; budget reservations count for `reservation_ttl_s` (the token TTL).

    Candidates equal to the `previous` snapshot's are its very objects, and so is a size's tuple
    of them where every member is: what scorers and policies keep per candidate tuple (creative
    vectors, prices, a user's affinities) is found by identity across refreshes, which come every
    `serving.catalog_refresh_s` while spend moves and rarely change what a candidate is."""
    import json

    started = time.time()

    placements = {
        row["key"]: PlacementEntry(
            id=row["id"],
            key=row["key"],
            width=row["width"],
            height=row["height"],
            page_type=row["page_type"],
            position=row["position"],
        )
        for row in await connection.fetch(PLACEMENTS_SQL)
    }
    campaigns: dict[int, CampaignState] = {}
    creatives: dict[int, CreativeEntry] = {}
    by_size: dict[tuple[int, int], list[CreativeEntry]] = defaultdict(list)
    for row in await connection.fetch(CREATIVES_SQL, float(reservation_ttl_s)):
        campaign = campaigns.get(row["campaign_id"])
        if campaign is None:
            targeting = row["targeting"]
            campaign = CampaignState(
                id=row["campaign_id"],
                advertiser_id=row["advertiser_id"],
                pricing=Pricing(row["pricing"]),
                bid=float(row["bid"]),
                total_budget=_float(row["total_budget"]),
                daily_budget=_float(row["daily_budget"]),
                start_at=row["start_at"],
                end_at=row["end_at"],
                timezone=ZoneInfo(row["timezone"]),
                targeting=Targeting.from_json(
                    json.loads(targeting) if isinstance(targeting, str) else targeting
                ),
                frequency_cap=row["frequency_cap"],
                frequency_window_s=row["frequency_window_s"],
                spend_total=float(row["spend_total"]),
                spend_today=float(row["spend_today"]),
                spend_day=row["spend_day"],
                reserved=float(row["reserved"]),
            )
            campaigns[campaign.id] = campaign
        candidate = candidate_from_row(row)
        known = previous.creatives.get(row["id"]) if previous is not None else None
        if known is not None and known.candidate == candidate:
            candidate = known.candidate
        entry = CreativeEntry(
            id=row["id"],
            campaign=campaign,
            width=row["width"],
            height=row["height"],
            title=row["title"],
            image_url=row["image_url"],
            landing_url=row["landing_url"],
            candidate=candidate,
        )
        creatives[entry.id] = entry
        by_size[(entry.width, entry.height)].append(entry)
    catalog = Catalog(
        placements=placements,
        creatives=creatives,
        by_size={size: tuple(entries) for size, entries in by_size.items()},
        loaded_at=started,
    )
    if previous is not None:
        for size, entries in catalog.by_size.items():
            kept = previous._candidates_by_size.get(size)
            if (
                kept is not None
                and len(kept) == len(entries)
                and all(held is entry.candidate for held, entry in zip(kept, entries, strict=True))
            ):
                catalog._candidates_by_size[size] = kept
    return catalog


def _float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


class CatalogCache:
    """Holds the current snapshot; `run()` refreshes it on NOTIFY and on a timer."""

    def __init__(self, pool: asyncpg.Pool, refresh_s: float, reservation_ttl_s: float = 3600.0) -> None:
        self.pool = pool
        self.refresh_s = refresh_s
        self.reservation_ttl_s = reservation_ttl_s
        self.catalog = Catalog.empty()
        self._changed = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._listener: asyncpg.Connection | None = None
        self.refreshes = 0

    async def refresh(self) -> Catalog:
        async with self.pool.acquire() as connection:
            self.catalog = await load_catalog(connection, self.reservation_ttl_s, self.catalog)
        self.refreshes += 1
        return self.catalog

    async def start(self) -> None:
        try:
            await self.refresh()
        except Exception:
            log.exception("catalogue load failed at start; retrying in the background")
        self._task = asyncio.create_task(self._run(), name="catalog-refresh")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._unlisten()

    def notify(self) -> None:
        """Local shortcut: this process changed the catalogue, refresh without waiting."""
        self._changed.set()

    def _on_notify(self, *_: object) -> None:
        self._changed.set()

    async def _listen(self) -> None:
        if self._listener is not None and not self._listener.is_closed():
            return
        self._listener = await self.pool.acquire()
        await self._listener.add_listener(CATALOG_CHANNEL, self._on_notify)

    async def _unlisten(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.remove_listener(CATALOG_CHANNEL, self._on_notify)
            with contextlib.suppress(Exception):
                await self.pool.release(self._listener)
            self._listener = None

    async def _run(self) -> None:
        while True:
            try:
                await self._listen()
            except Exception:
                log.warning("catalogue LISTEN unavailable; refreshing on the timer only")
                self._listener = None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=self.refresh_s)
            self._changed.clear()
            try:
                await self.refresh()
            except Exception:
                log.warning("catalogue refresh failed; serving the previous snapshot")
                await self._unlisten()

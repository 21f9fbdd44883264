"""The demo catalogue: advertisers, campaigns, creatives and placements seeded through the services."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import select

from adserve.admin import schemas
from adserve.admin.services import (
    AdvertiserService,
    ApiKeyService,
    CampaignService,
    CreativeService,
    PlacementService,
)
from adserve.db.tables import Advertiser

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

__all__ = ["DEMO_ADVERTISERS", "DEMO_PLACEMENTS", "seed_demo_catalog"]

DEMO_PLACEMENTS = [
    schemas.PlacementCreate(key="home-top", width=728, height=90, page_type="home", position=0),
    schemas.PlacementCreate(key="product-side", width=300, height=250, page_type="product", position=1),
]

# advertiser → [(campaign name, pricing, bid, daily budget, category, brand, titles)]
DEMO_ADVERTISERS: dict[str, list[tuple[str, str, float, float, str, str, list[str]]]] = {
    "Northwind Outdoor": [
        (
            "Trail shoes autumn",
            "cpc",
            0.60,
            50.0,
            "shoes",
            "northwind",
            ["Trail runners -20%", "Grip for wet rock"],
        ),
        (
            "Tents",
            "cpm",
            4.0,
            40.0,
            "camping",
            "northwind",
            ["Two-person tent, 1.9 kg", "Storm-proof shelter"],
        ),
    ],
    "Lumen Home": [
        ("Lamps", "cpc", 0.45, 30.0, "home", "lumen", ["Warm desk lamp", "Reading light for two"]),
        ("Kitchen", "cpc", 0.50, 30.0, "kitchen", "lumen", ["Cast-iron pan", "Chef's knife set"]),
    ],
    "Kite Electronics": [
        (
            "Headphones",
            "cpc",
            0.80,
            60.0,
            "audio",
            "kite",
            ["Noise-cancelling headphones", "Wireless earbuds"],
        ),
        ("Phones", "cpm", 5.0, 60.0, "phones", "kite", ["The Kite 12", "Trade in your old phone"]),
    ],
}


async def seed_demo_catalog(session: AsyncSession) -> int:
    """Creates the demo catalogue unless it exists; returns the number of creatives created."""
    if (await session.execute(select(Advertiser.id).limit(1))).first() is not None:
        return 0
    for placement in DEMO_PLACEMENTS:
        await PlacementService(session, None).create(placement)
    created = 0
    for advertiser_name, campaigns in DEMO_ADVERTISERS.items():
        advertiser = await AdvertiserService(session, None).create(
            schemas.AdvertiserCreate(name=advertiser_name)
        )
        for name, pricing, bid, daily, category, brand, titles in campaigns:
            campaign = await CampaignService(session, None).create(
                schemas.CampaignCreate(
                    name=name,
                    pricing=pricing,  # type: ignore[arg-type]
                    bid=bid,
                    daily_budget=daily,
                    total_budget=daily * 30,
                    frequency_cap=schemas.FrequencyCap(impressions=5, window_s=3600),
                ),
                advertiser.id,
            )
            for index, title in enumerate(titles):
                for width, height in ((728, 90), (300, 250)):
                    await CreativeService(session, None).create(
                        schemas.CreativeCreate(
                            campaign_id=campaign.id,
                            title=title,
                            width=width,
                            height=height,
                            image_url=f"/static/creatives/{category}-{width}x{height}.svg",
                            landing_url=f"https://example.com/{brand}/{category}/{index}",
                            category=category,
                            brand=brand,
                            product_ids=[f"{category}-{index}"],
                        )
                    )
                    created += 1
    return created


async def create_admin_key(session: AsyncSession, name: str) -> str:
    key, _ = await ApiKeyService(session, None).create(schemas.ApiKeyCreate(role="admin", name=name))
    return key

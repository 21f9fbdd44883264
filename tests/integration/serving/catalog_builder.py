"""Builds small, isolated catalogues for serving tests: each test gets placements of a size no
other test uses, so only its own creatives are candidates."""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from dataclasses import dataclass, field

import msgspec

from adserve.admin import schemas
from adserve.admin.services import AdvertiserService, CampaignService, CreativeService, PlacementService

_sizes = itertools.count(1001)


@dataclass
class Built:
    width: int
    height: int
    placements: dict[str, int] = field(default_factory=dict)
    campaigns: dict[str, int] = field(default_factory=dict)
    creatives: dict[str, int] = field(default_factory=dict)
    advertiser_id: int = 0


class CatalogBuilder:
    def __init__(self, session) -> None:
        self.session = session
        self.built = Built(width=next(_sizes), height=250)
        self.suffix = secrets.token_hex(3)

    async def advertiser(self) -> int:
        if not self.built.advertiser_id:
            row = await AdvertiserService(self.session, None).create(
                schemas.AdvertiserCreate(name=f"serving {self.suffix}")
            )
            self.built.advertiser_id = row.id
        return self.built.advertiser_id

    async def placement(self, name: str, position: int = 0) -> str:
        key = f"{name}-{self.suffix}"
        row = await PlacementService(self.session, None).create(
            schemas.PlacementCreate(
                key=key, width=self.built.width, height=self.built.height, position=position
            )
        )
        self.built.placements[name] = row.id
        return key

    async def campaign(self, name: str, creatives: int = 1, category: str | None = None, **fields) -> int:
        body = {"name": f"{name} {self.suffix}", "pricing": "cpc", "bid": 1.0, **fields}
        row = await CampaignService(self.session, None).create(
            msgspec.convert(body, schemas.CampaignCreate), await self.advertiser()
        )
        self.built.campaigns[name] = row.id
        for index in range(creatives):
            creative = await CreativeService(self.session, None).create(
                schemas.CreativeCreate(
                    campaign_id=row.id,
                    title=f"{name} #{index}",
                    width=self.built.width,
                    height=self.built.height,
                    image_url="https://cdn.example/ad.png",
                    landing_url=f"https://example.com/{name}/{index}",
                    category=category,
                )
            )
            self.built.creatives[f"{name}#{index}"] = creative.id
        return row.id


async def wait_for_placement(client, key: str, deadline_s: float = 10.0) -> None:
    """The serving snapshot refreshes on NOTIFY; wait until it knows the placement (a condition).

    Create the placement last: a snapshot that has it also has everything committed before it.
    """
    stop = time.monotonic() + deadline_s
    while time.monotonic() < stop:
        response = await client.post("/v1/decisions", json={"user_id": "probe", "placements": [key]})
        if response.status_code == 200:
            return
        await asyncio.sleep(0.02)  # polling interval of a condition wait
    raise TimeoutError(f"placement {key} never appeared in the serving snapshot")

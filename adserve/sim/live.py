"""The simulated market against a running server: the demo's catalogue and its background traffic.

`seed_sim_catalog(session, world)` loads the world's advertisers, campaigns (budgets, caps,
targeting), creatives (banners served by the app) and placements through the admin services.

`python -m adserve.sim.live --url URL --key ADMIN_KEY` (started by `adserve demo` in its own
process, so it never slows the server's event loop) waits for `/ready`, then replays the world's
traffic through the real HTTP API at a modest rate: behaviour events, decisions, the impression
URL of every served ad and, when the oracle's draw says so, its click URL. Every few seconds it
prints one line: decisions served, CTR so far and over the last window, what the oracle and a
uniform-random policy would expect on the same requests, and the serving model versions.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
import uuid
from collections import deque
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TextIO

import numpy as np

from adserve.sim.oracle import Oracle
from adserve.sim.traffic import Traffic
from adserve.sim.world import World, WorldConfig

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from adserve.sim.traffic import PageView

__all__ = ["SVG_CATEGORY", "LiveDriver", "main", "seed_sim_catalog"]

# The app draws banners for a few categories (serving/pages.py); each sim category borrows one.
SVG_CATEGORY = {
    "electronics": "audio",
    "fashion": "shoes",
    "home": "home",
    "beauty": "kitchen",
    "sports": "camping",
    "books": "home",
    "toys": "phones",
    "garden": "camping",
    "grocery": "kitchen",
    "automotive": "phones",
}


def banner_url(category: str, width: int, height: int) -> str:
    return f"/static/creatives/{SVG_CATEGORY.get(category, 'home')}-{width}x{height}.svg"


async def seed_sim_catalog(session: AsyncSession, world: World) -> int:
    """Creates the world's catalogue unless advertisers exist; returns the creatives created."""
    from sqlalchemy import select

    from adserve.admin import schemas
    from adserve.admin.services import AdvertiserService, CampaignService, CreativeService, PlacementService
    from adserve.db.tables import Advertiser
    from adserve.demo import DEMO_PLACEMENTS

    if (await session.execute(select(Advertiser.id).limit(1))).first() is not None:
        return 0
    for p in world.placements:
        await PlacementService(session, None).create(
            schemas.PlacementCreate(
                key=p.key, width=p.width, height=p.height, page_type=p.page_type, position=p.position
            )
        )
    # the /demo shop page's own slots, so it shows the same ads
    for placement in DEMO_PLACEMENTS:
        if placement.key not in world.placement_by_key:
            await PlacementService(session, None).create(placement)
    advertiser_ids: dict[int, int] = {}
    for a in world.advertisers:
        row = await AdvertiserService(session, None).create(schemas.AdvertiserCreate(name=a.name))
        advertiser_ids[a.id] = row.id
    campaign_ids: dict[int, int] = {}
    for c in world.campaigns:
        cap = (
            schemas.FrequencyCap(impressions=c.frequency_cap, window_s=c.frequency_window_s)
            if c.frequency_cap and c.frequency_window_s
            else None
        )
        row = await CampaignService(session, None).create(
            schemas.CampaignCreate(
                name=c.name,
                pricing=c.pricing.value,  # type: ignore[arg-type]
                bid=c.bid,
                daily_budget=c.daily_budget,
                total_budget=c.total_budget,
                targeting=schemas.Targeting(
                    geo=list(c.targeting.get("geo", [])),
                    device=list(c.targeting.get("device", [])),  # type: ignore[arg-type]
                ),
                frequency_cap=cap,
            ),
            advertiser_ids[c.advertiser_id],
        )
        campaign_ids[c.id] = row.id
    for k in world.creatives:
        await CreativeService(session, None).create(
            schemas.CreativeCreate(
                campaign_id=campaign_ids[k.campaign_id],
                title=k.title,
                width=k.width,
                height=k.height,
                image_url=banner_url(k.category, k.width, k.height),
                landing_url=k.landing_url,
                category=k.category,
                brand=k.brand,
                product_ids=list(k.product_ids),
                price=k.price,
            )
        )
    return len(world.creatives)


class LiveDriver:
    """Replays a world's traffic through the HTTP API and keeps the running score."""

    def __init__(
        self,
        url: str,
        admin_key: str,
        world: World,
        rate: float = 20.0,
        window: int = 500,
        out: TextIO | None = None,
    ) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.world = world
        self.oracle = Oracle(world)
        self.traffic = Traffic(world, self.oracle)
        self.rate = rate
        self.out = out or sys.stdout
        self.client = httpx.Client(base_url=self.url, timeout=10.0)
        self.admin = {"Authorization": f"Bearer {admin_key}"}
        self.creatives: dict[int, int] = {}  # database creative id -> sim creative id
        self.decisions = 0
        self.clicks = 0
        self.errors = 0
        self.oracle_sum = 0.0
        self.uniform_sum = 0.0
        self.recent: deque[bool] = deque(maxlen=window)

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if self.client.get("/ready").status_code == 200:
                    return
            except Exception:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{self.url} not ready after {timeout_s:.0f}s")

    def load_creatives(self) -> None:
        offset = 0
        while True:
            page = self.client.get(
                "/admin/v1/creatives", params={"limit": 500, "offset": offset}, headers=self.admin
            ).json()
            for item in page["items"]:
                creative = self.world.creative_by_landing_url.get(item["landing_url"])
                if creative is not None:
                    self.creatives[item["id"]] = creative.id
            offset += len(page["items"])
            if not page["items"] or offset >= page.get("total", offset):
                return

    def model_versions(self) -> str:
        try:
            items = self.client.get("/admin/v1/models", params={"limit": 100}, headers=self.admin).json()[
                "items"
            ]
        except Exception:
            return "models ?"
        serving = {i["kind"]: i["version"] for i in items if i.get("status") == "champion"}
        interest = serving.get("interest", "none yet")
        bandit = serving.get("bandit", "none yet")
        return f"interest {interest} · bandit {bandit}"

    def step(self, page: PageView) -> None:
        user = page.user
        if page.events:
            now = datetime.now(UTC).isoformat()
            events = [
                {
                    "event_id": str(uuid.uuid4()),
                    "user_id": user.key,
                    "type": e.event_type.value,
                    "ts": now,
                    **{k: v for k, v in (("item_id", e.item_id), ("category", e.category),
                                          ("price", e.price), ("query", e.query)) if v is not None},
                }
                for e in page.events
            ]  # fmt: skip
            self.client.post("/v1/events", json={"events": events, "consent": user.consent})
        if not page.ad_requests:
            return
        body = {
            "user_id": user.key,
            "placements": [r.placement.key for r in page.ad_requests],
            "consent": user.consent,
            "context": {
                "page_category": page.page_category,
                "keywords": list(page.keywords),
                "device": user.device,
                "geo": user.geo,
            },
        }
        response = self.client.post("/v1/decisions", json=body)
        if response.status_code != 200:
            self.errors += 1
            return
        requests = {r.placement.key: r for r in page.ad_requests}
        for decision in response.json()["decisions"]:
            request = requests.get(decision["placement"])
            creative = decision.get("creative")
            if request is None or creative is None or creative["id"] not in self.creatives:
                continue
            eligible = self.world.eligible_candidates(request.placement, user.device, user.geo)
            truth = self.oracle.click_probabilities(
                user, [c.creative_id for c in eligible], request.placement, page.ts
            )
            p = self.oracle.click_probability(
                user, self.creatives[creative["id"]], request.placement, page.ts
            )
            clicked = request.click_draw < p
            self.client.get(decision["impression_url"])
            if clicked:
                self.client.get(decision["click_url"], follow_redirects=False)
            self.decisions += 1
            self.clicks += clicked
            self.recent.append(clicked)
            self.oracle_sum += float(np.max(truth)) if len(truth) else p
            self.uniform_sum += float(np.mean(truth)) if len(truth) else p

    def line(self) -> str:
        n = max(self.decisions, 1)
        recent = sum(self.recent) / max(len(self.recent), 1)
        return (
            f"[sim] decisions {self.decisions:,} · CTR {self.clicks / n:.2%} · last {len(self.recent)} "
            f"{recent:.2%} · oracle {self.oracle_sum / n:.2%} · uniform {self.uniform_sum / n:.2%} · "
            f"{self.model_versions()}" + (f" · errors {self.errors}" if self.errors else "")
        )

    def run(
        self, every_s: float = 5.0, max_decisions: int | None = None, max_seconds: float | None = None
    ) -> None:
        self.wait_ready()
        self.load_creatives()
        started = last_print = time.monotonic()
        for pages, page in enumerate(self.traffic, start=1):
            try:
                self.step(page)
            except Exception as error:  # a restart or a timeout must not end the demo
                self.errors += 1
                print(f"[sim] request failed: {type(error).__name__}: {error}", file=self.out, flush=True)
                time.sleep(1.0)
            now = time.monotonic()
            if now - last_print >= every_s:
                print(self.line(), file=self.out, flush=True)
                last_print = now
            if max_decisions is not None and self.decisions >= max_decisions:
                break
            if max_seconds is not None and now - started >= max_seconds:
                break
            ahead = pages / self.rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
        print(self.line(), file=self.out, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="drive a running adserve with simulated traffic")
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", required=True, help="an admin key (creative ids, model versions)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rate", type=float, default=20.0, help="pages per second")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between progress lines")
    parser.add_argument("--max-decisions", type=int)
    parser.add_argument("--max-seconds", type=float)
    args = parser.parse_args(argv)
    driver = LiveDriver(args.url, args.key, World(WorldConfig(seed=args.seed)), rate=args.rate)
    with contextlib.suppress(KeyboardInterrupt):
        driver.run(args.every, args.max_decisions, args.max_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())

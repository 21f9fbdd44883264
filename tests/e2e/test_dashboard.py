"""The /admin dashboard in real headless Chromium against a real `adserve serve`.

A fresh database is seeded with two campaigns; traffic is served, impressed and clicked over
HTTP; the browser signs in with an admin key, sees the campaign table, charts whose bars match
the traffic and the model versions, and the key is nowhere in storage or cookies. A manager key
sees only its advertiser's campaigns and no model versions.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright

from adserve.admin import schemas
from adserve.admin.dashboard import CSP
from adserve.admin.services import (
    AdvertiserService,
    ApiKeyService,
    CampaignService,
    CreativeService,
    PlacementService,
)
from adserve.db.engine import create_engine, sessionmaker_for
from adserve.db.migrate import upgrade
from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS, run_server

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from adserve.settings import Settings

pytestmark = pytest.mark.slow

BROWSER_UA = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
)
CAMPAIGNS = {"Summer Shoes Push": 0.5, "Winter Coats Launch": 0.7}  # name -> CPC bid
OTHER_CAMPAIGN = "Rival Gadgets"
SERVED, CLICKED = 5, 2


async def seed(url: str, settings: Settings) -> dict[str, str]:
    engine = create_engine(url, settings)
    sessions = sessionmaker_for(engine)
    try:
        async with sessions() as session:
            await PlacementService(session, None).create(
                schemas.PlacementCreate(key="dash-slot", width=300, height=250)
            )
            keys = {}
            for advertiser_name, campaigns in (
                ("Dashboard Shop", CAMPAIGNS),
                ("Rival", {OTHER_CAMPAIGN: 0.4}),
            ):
                advertiser = await AdvertiserService(session, None).create(
                    schemas.AdvertiserCreate(name=advertiser_name)
                )
                for name, bid in campaigns.items():
                    campaign = await CampaignService(session, None).create(
                        schemas.CampaignCreate(name=name, pricing="cpc", bid=bid, daily_budget=50.0),
                        advertiser.id,
                    )
                    await CreativeService(session, None).create(
                        schemas.CreativeCreate(
                            campaign_id=campaign.id,
                            title=name,
                            width=300,
                            height=250,
                            image_url="https://cdn.example/ad.png",
                            landing_url="https://example.com/landing",
                        )
                    )
                keys.setdefault(
                    "manager",
                    (
                        await ApiKeyService(session, None).create(
                            schemas.ApiKeyCreate(role="manager", advertiser_id=advertiser.id, name="dash")
                        )
                    )[0],
                )
            keys["admin"] = (
                await ApiKeyService(session, None).create(schemas.ApiKeyCreate(role="admin", name="dash"))
            )[0]
            return keys
    finally:
        await engine.dispose()


def drive_traffic(base: str) -> None:
    """SERVED decisions, each impressed; the first CLICKED also clicked (as a browser would)."""
    with httpx.Client(base_url=base, timeout=10.0) as http:
        for n in range(SERVED):
            response = http.post(
                "/v1/decisions",
                json={"user_id": f"dash-user-{n}", "placements": ["dash-slot"], "consent": True},
            )
            assert response.status_code == 200, response.text
            decision = response.json()["decisions"][0]
            assert decision["creative"], decision
            assert http.get(decision["impression_url"]).status_code == 200
            if n < CLICKED:
                click = http.get(
                    decision["click_url"], headers={"user-agent": BROWSER_UA}, follow_redirects=False
                )
                assert click.status_code == 302


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (apt-get install -y chromium)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


async def sign_in(page: Page, url: str, key: str) -> None:
    response = await page.goto(f"{url}/admin")
    assert response is not None and response.status == 200
    assert response.headers["content-security-policy"] == CSP
    await page.fill("#api-key", key)
    await page.click("#login-button")
    await page.wait_for_selector("body[data-state=ready]", timeout=15_000)


async def bars(page: Page, chart: str) -> list[dict[str, float]]:
    return await page.eval_on_selector_all(
        f"#{chart} svg rect.bar",
        "rects => rects.map(r => ({value: Number(r.dataset.value), height: Number(r.getAttribute('height'))}))",
    )


async def test_dashboard_shows_campaigns_charts_and_models(
    browser: Browser, fresh_database, settings: Settings, tmp_path: Path
) -> None:
    url = await fresh_database()
    await asyncio.to_thread(upgrade, url)
    keys = await seed(url, settings)
    with run_server(url, tmp_path) as server:
        await asyncio.to_thread(drive_traffic, server.url)
        context = await browser.new_context(user_agent=BROWSER_UA)
        page = await context.new_page()
        problems: list[str] = []
        page.on("console", lambda message: message.type == "error" and problems.append(message.text))
        page.on("pageerror", lambda error: problems.append(str(error)))

        await sign_in(page, server.url, keys["admin"])

        names = await page.eval_on_selector_all(
            "#campaigns tbody td.name", "cells => cells.map(c => c.textContent)"
        )
        assert sorted(names) == sorted([*CAMPAIGNS, OTHER_CAMPAIGN])
        pacing = await page.eval_on_selector_all(
            "#campaigns .pacing", "nodes => nodes.map(n => n.dataset.pacing)"
        )
        assert len(pacing) == len(names)  # every campaign has a daily budget, so a pacing figure

        # One bar per day of the 14-day window; today's bars carry the traffic.
        impressions = await bars(page, "chart-impressions")
        assert len(impressions) == 14
        assert await page.get_attribute("#chart-impressions svg", "data-points") == "14"
        assert sum(bar["value"] for bar in impressions) == SERVED
        assert impressions[-1]["value"] == SERVED and impressions[-1]["height"] > 0
        clicks = await bars(page, "chart-clicks")
        assert sum(bar["value"] for bar in clicks) == CLICKED and clicks[-1]["height"] > 0
        ctr = await bars(page, "chart-ctr")
        assert ctr[-1]["value"] == pytest.approx(CLICKED / SERVED)
        spend = await bars(page, "chart-spend")
        assert spend[-1]["value"] > 0  # the clicks were charged

        if shot := os.environ.get("ADSERVE_DASHBOARD_SCREENSHOT"):  # a look at it while developing
            await page.screenshot(path=shot, full_page=True)
        assert await page.is_visible("#models-section")
        assert await page.text_content("#models tbody") == "no model versions registered yet"

        # The key lives in a JS variable only.
        storage = await page.evaluate(
            "() => ({local: localStorage.length, session: sessionStorage.length, cookie: document.cookie})"
        )
        assert storage == {"local": 0, "session": 0, "cookie": ""}
        assert await context.cookies() == []
        assert keys["admin"] not in await page.content()
        assert await page.input_value("#api-key") == ""
        assert problems == []

        # A manager sees its own campaigns only, and no model versions.
        manager_page = await context.new_page()
        await sign_in(manager_page, server.url, keys["manager"])
        names = await manager_page.eval_on_selector_all(
            "#campaigns tbody td.name", "cells => cells.map(c => c.textContent)"
        )
        assert sorted(names) == sorted(CAMPAIGNS)
        assert not await manager_page.is_visible("#models-section")
        await context.close()


async def test_dashboard_rejects_a_wrong_key_and_serves_no_other_files(
    browser: Browser, fresh_database, settings: Settings, tmp_path: Path
) -> None:
    url = await fresh_database()
    await asyncio.to_thread(upgrade, url)
    with run_server(url, tmp_path) as server:
        page = await browser.new_page()
        await page.goto(f"{server.url}/admin")
        await page.fill("#api-key", "adsk_nothere_wrong")
        await page.click("#login-button")
        await page.wait_for_selector("#error:not([hidden])")
        assert await page.text_content("#error") == "That key was not accepted."
        assert await page.is_hidden("#app")
        await page.close()
        for path in ("/admin/static/index.html", "/admin/static/..%2Fdashboard.py", "/admin/static/x.js"):
            assert httpx.get(server.url + path).status_code == 404

"""The JS tag in real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright).

Two kinds of test:
- against a real `adserve serve` on a freshly seeded demo catalogue: /demo renders ads, an
  impression is recorded only after the ad has been half visible for a second, and a click is
  recorded as valid and lands on the creative's landing page;
- against canned decisions (the browser's network is routed, no server): the tag's own rules —
  no HTML injection, no unsafe URLs, the continuous-second rule to the millisecond under a fake
  clock, consent and the user-id cookie, behaviour events.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from playwright.async_api import Browser, BrowserContext, Page, Request, Route, async_playwright
from sqlalchemy import text

from adserve.db.engine import create_engine, sessionmaker_for
from adserve.db.migrate import upgrade
from adserve.demo import seed_demo_catalog
from adserve.serving import pages
from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS, run_server

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from adserve.settings import Settings

pytestmark = pytest.mark.slow

# HeadlessChrome's own user agent is (rightly) a bot to the click validator.
DESKTOP_UA = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36"
)
VIEWPORT = {"width": 1280, "height": 720}
LANDING_HTML = "<!doctype html><title>Landing</title><h1>Landing page</h1>"
TOP = '[data-adserve-placement="home-top"]'
SIDE = '[data-adserve-placement="product-side"]'


async def wait_for(
    condition: Callable[[], Awaitable[Any]], what: str, timeout_s: float = 15.0, interval_s: float = 0.05
) -> Any:
    """Polls until `condition` returns something truthy: a condition wait with a deadline."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = await condition()
        if value:
            return value
        await asyncio.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (apt-get install -y chromium)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


@pytest.fixture
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    created = await browser.new_context(user_agent=DESKTOP_UA, viewport=VIEWPORT)
    # example.com is not reachable from test machines: answer landing pages locally.
    await created.route(
        "https://example.com/**",
        lambda route: route.fulfill(status=200, content_type="text/html", body=LANDING_HTML),
    )
    yield created
    await created.close()


async def scroll_out_of_view(page: Page) -> None:
    await page.evaluate("window.scrollTo(0, 0)")


async def state_of(page: Page, selector: str) -> str | None:
    """The tag's data-adserve-state on a slot: loading, rendered, viewed, empty or error."""
    return await page.locator(selector).get_attribute("data-adserve-state")


async def settled(page: Page, selector: str) -> None:
    async def done() -> bool:
        return await state_of(page, selector) in ("rendered", "viewed", "empty", "error")

    await wait_for(done, f"{selector} to settle")


async def is_below_fold(page: Page, selector: str) -> bool:
    box = await page.locator(selector).bounding_box()
    return box is not None and box["y"] >= VIEWPORT["height"]


# ---- against a real server ----


@pytest.fixture(scope="module")
async def demo_database(fresh_database) -> AsyncIterator[str]:
    """A database of its own: the demo seed does nothing if any advertiser exists already."""
    url = await fresh_database()
    await asyncio.to_thread(upgrade, url)
    yield url


@pytest.fixture(scope="module")
async def demo_sessions(
    demo_database: str, settings: Settings
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(demo_database, settings)
    sessions = sessionmaker_for(engine)
    async with sessions() as session:
        assert await seed_demo_catalog(session) > 0
    yield sessions
    await engine.dispose()


async def fetch_one(sessions: async_sessionmaker[AsyncSession], sql: str, **params: Any) -> Any:
    async with sessions() as session:
        return (await session.execute(text(sql), params)).mappings().first()


async def test_demo_ad_is_viewed_then_clicked_through_to_its_landing_page(
    context: BrowserContext,
    demo_database: str,
    demo_sessions: async_sessionmaker[AsyncSession],
    tmp_path: Path,
) -> None:
    with run_server(demo_database, tmp_path) as server:
        page = await context.new_page()
        requested_at: dict[str, float] = {}
        page.on("request", lambda request: requested_at.setdefault(request.url, time.monotonic()))

        async with page.expect_response(re.compile(r"/v1/decisions$")) as answered:
            await page.goto(f"{server.url}/demo")
        response = await answered.value
        assert response.status == 200, await response.text()
        decisions = {decision["placement"]: decision for decision in (await response.json())["decisions"]}
        assert set(decisions) == {"home-top", "product-side"}
        top, side = decisions["home-top"], decisions["product-side"]
        assert top["creative"] and side["creative"], f"the demo catalogue served nothing: {decisions}"

        # Both creatives render as a link around an image, at their declared sizes.
        for selector, decision in ((TOP, top), (SIDE, side)):
            await settled(page, selector)
            image = page.locator(f"{selector} > a > img")
            assert await image.get_attribute("alt") == decision["creative"]["title"]
            assert await image.get_attribute("width") == str(decision["creative"]["width"])
            assert await image.evaluate("img => img.complete && img.naturalWidth > 0")
            assert await page.locator(f"{selector} > a").get_attribute("href") == decision["click_url"]

        # The top banner is in view from the start: its impression lands in Postgres.
        async def impression_of(decision: dict[str, Any]) -> Any:
            return await fetch_one(
                demo_sessions,
                "SELECT creative_id FROM impressions WHERE decision_id = :id",
                id=uuid.UUID(decision["decision_id"]),
            )

        recorded = await wait_for(lambda: impression_of(top), "the home-top impression row")
        assert recorded["creative_id"] == top["creative"]["id"]

        # By now the page has been open for well over a second with the side ad loaded but below
        # the fold: the tag must not have fired it (the request log is the evidence; the table
        # would also lag behind the batched writer).
        assert await is_below_fold(page, SIDE)
        assert await state_of(page, SIDE) == "rendered"
        assert side["impression_url"] not in requested_at
        assert await impression_of(side) is None

        scrolled_at = time.monotonic()
        await page.locator(SIDE).scroll_into_view_if_needed()

        async def side_impression_requested() -> bool:
            return side["impression_url"] in requested_at

        await wait_for(side_impression_requested, "the product-side impression request")
        assert requested_at[side["impression_url"]] - scrolled_at >= 1.0
        await wait_for(lambda: impression_of(side), "the product-side impression row")

        landing = await fetch_one(
            demo_sessions, "SELECT landing_url FROM creatives WHERE id = :id", id=side["creative"]["id"]
        )
        await page.locator(f"{SIDE} img").click()
        await page.wait_for_url(landing["landing_url"])
        assert page.url == landing["landing_url"]
        assert await page.locator("h1").text_content() == "Landing page"

        click = await wait_for(
            lambda: fetch_one(
                demo_sessions,
                "SELECT valid, invalid_reason, creative_id FROM clicks WHERE decision_id = :id",
                id=uuid.UUID(side["decision_id"]),
            ),
            "the click row",
        )
        assert (click["valid"], click["invalid_reason"]) == (True, None), server.log()[-3000:]
        assert click["creative_id"] == side["creative"]["id"]


# ---- against canned decisions ----

CLOCK_START = 1_700_000_000_000  # ms since the epoch; any fixed instant will do
ORIGIN = "http://adserve.test"  # not a secure context: exercises the tag's uuid fallback too


class CannedAdServer:
    """Answers the tag's requests inside the browser, recording what it was sent."""

    def __init__(self, html: str = pages.DEMO_HTML) -> None:
        self.html = html
        self.decision_bodies: list[dict[str, Any]] = []
        self.event_bodies: list[dict[str, Any]] = []
        self.pixels: list[str] = []
        self.page_errors: list[str] = []
        self.decisions: dict[str, dict[str, Any]] = {}

    def serve(self, placement: str, title: str = "An ad", click_url: str | None = None) -> None:
        width, height = (728, 90) if placement == "home-top" else (300, 250)
        self.decisions[placement] = {
            "placement": placement,
            "decision_id": str(uuid.uuid4()),
            "creative": {
                "id": len(self.decisions) + 1,
                "campaign_id": 1,
                "title": title,
                "image_url": f"/static/creatives/shoes-{width}x{height}.svg",
                "width": width,
                "height": height,
            },
            "impression_url": f"{ORIGIN}/i/{placement}",
            "click_url": click_url or f"{ORIGIN}/c/{placement}",
        }

    def answer(self, placement: str) -> dict[str, Any]:
        nothing = {"placement": placement, "decision_id": None, "creative": None}
        return self.decisions.get(placement) or nothing | {"impression_url": None, "click_url": None}

    async def handle(self, route: Route, request: Request) -> None:
        path = request.url.removeprefix(ORIGIN)
        if path == "/demo":
            headers = {"Content-Security-Policy": pages.DEMO_CSP}
            await route.fulfill(body=self.html, content_type="text/html", headers=headers)
        elif path in ("/tag.js", "/demo.js"):
            script = pages.TAG_JS if path == "/tag.js" else pages.DEMO_JS
            await route.fulfill(body=script.body, content_type="application/javascript")
        elif match := re.fullmatch(r"/static/creatives/(.+)", path):
            name = pages.CREATIVE_NAME.fullmatch(match[1])
            assert name is not None
            svg = pages.creative_svg(name["category"], int(name["width"]), int(name["height"]))
            await route.fulfill(body=svg, content_type="image/svg+xml")
        elif path == "/v1/decisions":
            body = json.loads(request.post_data or "{}")
            self.decision_bodies.append(body)
            answer = {
                "request_id": str(uuid.uuid4()),
                "decisions": [self.answer(p) for p in body["placements"]],
            }
            await route.fulfill(
                body=json.dumps(answer),
                content_type="application/json",
            )
        elif path == "/v1/events":
            self.event_bodies.append(json.loads(request.post_data or "{}"))
            await route.fulfill(status=202, body="{}", content_type="application/json")
        elif path.startswith("/i/"):
            self.pixels.append(path)
            await route.fulfill(body=b"GIF89a", content_type="image/gif")
        else:
            await route.fulfill(status=404)


async def open_canned(context: BrowserContext, server: CannedAdServer) -> Page:
    page = await context.new_page()
    page.on("pageerror", lambda error: server.page_errors.append(str(error)))
    await page.route(f"{ORIGIN}/**", server.handle)
    return page


async def test_creative_text_is_never_markup_and_unsafe_urls_are_refused(context: BrowserContext) -> None:
    server = CannedAdServer()
    hostile = '<img src=x onerror="window.pwned=1">'
    server.serve("home-top", title=hostile)
    server.serve("product-side", click_url="javascript:window.pwned=1")
    page = await open_canned(context, server)
    await page.goto(f"{ORIGIN}/demo")

    await settled(page, TOP)
    assert await state_of(page, TOP) == "rendered"
    assert await page.locator(f"{TOP} > a > img").get_attribute("alt") == hostile
    assert await page.locator(f"{TOP} *").count() == 2  # the link and its image, nothing parsed
    assert await page.locator(f"{TOP} > a").get_attribute("rel") == "sponsored noopener"
    await settled(page, SIDE)
    assert await state_of(page, SIDE) == "empty"
    assert await page.locator(f"{SIDE} *").count() == 0
    assert await page.evaluate("window.pwned") is None
    assert server.page_errors == []


async def wait_for_visibility(page: Page, selector: str, visible: bool) -> None:
    """Resolves once the browser has computed the element's intersection on the requested side
    of 50%; the tag's observer, created earlier, has been told by then."""
    await page.evaluate(
        """([selector, visible]) => new Promise(resolve => {
            const observer = new IntersectionObserver(entries => {
                const entry = entries[entries.length - 1];
                if ((entry.isIntersecting && entry.intersectionRatio >= 0.5) === visible) {
                    observer.disconnect();
                    resolve();
                }
            }, {threshold: [0, 0.5]});
            observer.observe(document.querySelector(selector + " > a"));
        })""",
        [selector, visible],
    )


async def show_fraction(page: Page, selector: str, fraction: float) -> None:
    """Scrolls so that `fraction` of the ad's height shows at the bottom of the viewport."""
    await page.evaluate(
        """([selector, fraction]) => {
            const box = document.querySelector(selector + " > a").getBoundingClientRect();
            window.scrollTo(0, window.scrollY + box.top - window.innerHeight + fraction * box.height);
        }""",
        [selector, fraction],
    )


async def set_tab_hidden(page: Page, hidden: bool) -> None:
    """Headless Chromium has no tabs to switch: report the state the way a browser would."""
    await page.evaluate(
        """hidden => {
            Object.defineProperty(document, "visibilityState", {value: hidden ? "hidden" : "visible",
                                                                 configurable: true});
            document.dispatchEvent(new Event("visibilitychange"));
        }""",
        hidden,
    )


PIXEL_COUNTER = """
window.pixelsSent = 0;
const realFetch = window.fetch;
window.fetch = (url, options) => {
    if (String(url).includes("/i/")) window.pixelsSent += 1;
    return realFetch(url, options);
};
"""


async def pixels_sent(page: Page) -> int:
    return await page.evaluate("window.pixelsSent")


async def open_side_ad_on_paused_clock(context: BrowserContext) -> tuple[CannedAdServer, Page]:
    server = CannedAdServer()
    server.serve("product-side")
    page = await open_canned(context, server)
    # Counts impression pixels as the tag sends them, so "no second pixel" needs no waiting.
    await page.add_init_script(PIXEL_COUNTER)
    # The page's timers run only when the test advances them; rendering and observers stay real.
    await page.clock.install(time=CLOCK_START)
    await page.clock.pause_at(CLOCK_START + 1_000)
    await page.goto(f"{ORIGIN}/demo")
    await settled(page, SIDE)  # "rendered": the image has loaded and the tag observes it
    assert await state_of(page, SIDE) == "rendered"
    assert await is_below_fold(page, SIDE)
    return server, page


async def test_impression_fires_once_after_one_continuous_second_at_half_visibility(
    context: BrowserContext,
) -> None:
    server, page = await open_side_ad_on_paused_clock(context)
    await page.clock.run_for(5_000)  # loaded but below the fold: no view
    assert await state_of(page, SIDE) == "rendered"

    await page.locator(SIDE).scroll_into_view_if_needed()
    await wait_for_visibility(page, SIDE, visible=True)
    await page.clock.run_for(900)
    await scroll_out_of_view(page)  # interrupted before the second was up
    await wait_for_visibility(page, SIDE, visible=False)
    await page.clock.run_for(5_000)
    assert await state_of(page, SIDE) == "rendered"

    await page.locator(SIDE).scroll_into_view_if_needed()
    await wait_for_visibility(page, SIDE, visible=True)
    await page.clock.run_for(500)
    await scroll_out_of_view(page)  # a blink out of view restarts the second from zero
    await wait_for_visibility(page, SIDE, visible=False)
    await page.locator(SIDE).scroll_into_view_if_needed()
    await wait_for_visibility(page, SIDE, visible=True)
    await page.clock.run_for(999)
    assert await state_of(page, SIDE) == "rendered"
    async with page.expect_request(f"{ORIGIN}/i/product-side"):
        await page.clock.run_for(2)
    assert await state_of(page, SIDE) == "viewed"

    await scroll_out_of_view(page)  # a second view of the same decision is not another impression
    await wait_for_visibility(page, SIDE, visible=False)
    await page.locator(SIDE).scroll_into_view_if_needed()
    await page.clock.run_for(5_000)
    assert await pixels_sent(page) == 1
    assert server.pixels == ["/i/product-side"]
    assert server.page_errors == []


async def test_less_than_half_visible_is_not_a_view(context: BrowserContext) -> None:
    server, page = await open_side_ad_on_paused_clock(context)
    await show_fraction(page, SIDE, 0.4)
    await wait_for_visibility(page, SIDE, visible=False)
    await page.clock.run_for(5_000)
    assert await state_of(page, SIDE) == "rendered"

    await show_fraction(page, SIDE, 0.6)  # crossing 50% while already partly in view counts
    await wait_for_visibility(page, SIDE, visible=True)
    await page.clock.run_for(999)
    assert await state_of(page, SIDE) == "rendered"
    await page.clock.run_for(2)
    assert await state_of(page, SIDE) == "viewed"
    assert server.page_errors == []


async def test_a_hidden_tab_pauses_the_view_second(context: BrowserContext) -> None:
    server, page = await open_side_ad_on_paused_clock(context)
    await page.locator(SIDE).scroll_into_view_if_needed()
    await wait_for_visibility(page, SIDE, visible=True)
    await page.clock.run_for(500)
    await set_tab_hidden(page, True)
    await page.clock.run_for(5_000)
    assert await state_of(page, SIDE) == "rendered"

    await set_tab_hidden(page, False)  # back in front, still in view: a fresh second starts
    await page.clock.run_for(300)
    await set_tab_hidden(page, True)  # even a brief switch away restarts it
    await page.clock.run_for(100)
    await set_tab_hidden(page, False)
    await page.clock.run_for(999)
    assert await state_of(page, SIDE) == "rendered"
    await page.clock.run_for(2)
    assert await state_of(page, SIDE) == "viewed"

    await set_tab_hidden(page, True)  # switching away and back after the view fires nothing new
    await set_tab_hidden(page, False)
    await page.clock.run_for(5_000)
    assert await pixels_sent(page) == 1
    assert server.page_errors == []


async def test_one_decision_request_per_page_view_with_consent_and_a_first_party_id(
    context: BrowserContext,
) -> None:
    server = CannedAdServer()
    page = await open_canned(context, server)
    for _ in range(2):
        await page.goto(f"{ORIGIN}/demo")
        await settled(page, SIDE)
    assert len(server.decision_bodies) == 2
    first, second = server.decision_bodies
    assert first["placements"] == ["home-top", "product-side"]
    assert first["consent"] is True
    assert first["context"]["page_url"] == f"{ORIGIN}/demo"
    assert first["context"]["device"] == "desktop"
    assert first["context"]["page_category"] == "shoes"
    cookie = next(c for c in await context.cookies(ORIGIN) if c["name"] == "adserve_uid")
    assert cookie["sameSite"] == "Lax"
    assert str(uuid.UUID(cookie["value"])) == cookie["value"]
    assert first["user_id"] == second["user_id"] == cookie["value"]


async def test_without_consent_no_cookie_is_read_or_written(context: BrowserContext) -> None:
    server = CannedAdServer(html=pages.DEMO_HTML.replace(' data-consent="1"', ""))
    page = await open_canned(context, server)
    await page.goto(f"{ORIGIN}/demo")
    await settled(page, SIDE)
    assert server.decision_bodies[0]["consent"] is False
    assert not [c for c in await context.cookies(ORIGIN) if c["name"] == "adserve_uid"]

    # A consent manager granting consent later takes effect on the next refresh.
    await page.evaluate("window.adserveConsent = true")
    assert await page.evaluate("window.adserve.refresh()") is True
    assert server.decision_bodies[1]["consent"] is True
    assert [c for c in await context.cookies(ORIGIN) if c["name"] == "adserve_uid"]


async def test_shop_buttons_send_behaviour_events(context: BrowserContext) -> None:
    server = CannedAdServer()
    page = await open_canned(context, server)
    await page.goto(f"{ORIGIN}/demo")
    await page.wait_for_function("window.adserve !== undefined")
    await page.locator('[data-item-id="audio-0"] button[data-event="add_to_cart"]').click()
    await page.locator("#status").filter(has_text="Sent add_to_cart").wait_for()

    events = [event for body in server.event_bodies for event in body["events"]]
    cart = next(event for event in events if event["type"] == "add_to_cart")
    assert uuid.UUID(cart["event_id"]).version == 4
    assert (cart["item_id"], cart["category"], cart["price"]) == ("audio-0", "audio", 199)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", cart["ts"])
    assert all(body["consent"] is True for body in server.event_bodies)
    assert await page.evaluate("window.adserve.trackEvent('not_a_type', {})") is False

"""The browser-facing routes: tag, demo shop and generated banners, through the real app."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pytest
from litestar.testing import AsyncTestClient

from adserve.app import create_app
from adserve.serving.pages import pages_router

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from adserve.settings import Settings


@pytest.fixture(scope="module")
async def client(settings: Settings) -> AsyncIterator[AsyncTestClient]:
    app = create_app(settings)
    # Works whether or not app.py mounts the pages yet: register them only when missing.
    if not any(route.path == "/tag.js" for route in app.routes):
        app.register(pages_router)
    async with AsyncTestClient(app) as test_client:
        yield test_client


async def test_tag_is_cacheable_javascript(client: AsyncTestClient) -> None:
    response = await client.get("/tag.js")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/javascript")
    assert "max-age=" in response.headers["cache-control"]
    assert "/v1/decisions" in response.text
    revalidated = await client.get("/tag.js", headers={"If-None-Match": response.headers["etag"]})
    assert revalidated.status_code == 304
    assert revalidated.content == b""


async def test_tag_has_no_html_or_code_sinks(client: AsyncTestClient) -> None:
    source = (await client.get("/tag.js")).text
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in source


async def test_demo_has_both_placements_the_tag_and_a_strict_csp(client: AsyncTestClient) -> None:
    response = await client.get("/demo")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert 'data-adserve-placement="home-top"' in html
    assert 'data-adserve-placement="product-side"' in html
    assert re.search(r'<script async src="/tag.js" data-consent="1"', html)
    assert "onclick" not in html  # inline handlers would be blocked by the CSP below

    csp = dict(
        directive.strip().split(" ", 1)
        for directive in response.headers["content-security-policy"].split(";")
        if directive.strip()
    )
    assert csp["script-src"] == "'self'"
    assert csp["connect-src"] == "'self'"
    assert set(csp["img-src"].split()) == {"'self'", "https:", "data:"}
    assert "unsafe-inline" not in csp.get("style-src", "")


async def test_demo_scripts_are_served(client: AsyncTestClient) -> None:
    response = await client.get("/demo.js")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/javascript")
    assert "trackEvent" in response.text


@pytest.mark.parametrize(
    ("name", "width", "height"),
    [("shoes-728x90.svg", 728, 90), ("phones-300x250.svg", 300, 250), ("kitchen-1x1.svg", 1, 1)],
)
async def test_banner_is_a_sized_svg_without_script(
    client: AsyncTestClient, name: str, width: int, height: int
) -> None:
    response = await client.get(f"/static/creatives/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("image/svg+xml")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "default-src 'none'" in response.headers["content-security-policy"]
    svg = response.text
    assert svg.startswith("<svg ")
    assert f'width="{width}" height="{height}"' in svg
    assert not re.search(r"<script|\son\w+=|javascript:|<foreignObject", svg, re.IGNORECASE)


async def test_banner_colour_follows_the_category(client: AsyncTestClient) -> None:
    shoes = (await client.get("/static/creatives/shoes-300x250.svg")).text
    audio = (await client.get("/static/creatives/audio-300x250.svg")).text
    fill = re.compile(r'<rect width="300" height="250" fill="(#[0-9a-f]{6})"')
    assert fill.search(shoes)[1] != fill.search(audio)[1]


@pytest.mark.parametrize(
    "name",
    [
        "unknown-728x90.svg",  # category outside the demo catalogue
        "shoes-728x90.png",
        "shoes-728x90.svg.js",
        "shoes-728x90.SVG",
        "Shoes-728x90.svg",
        "shoes-0x90.svg",
        "shoes-728x090.svg",
        "shoes-5000x90.svg",  # larger than any creative may be
        "shoes-728x90",
        "shoes-728x90.svg%0A",
        "shoes-<script>x90.svg",
        "..%2F..%2Fpages.py",
        "shoes%2D728x90.svg%00",
    ],
)
async def test_banner_rejects_anything_but_a_strict_name(client: AsyncTestClient, name: str) -> None:
    response = await client.get(f"/static/creatives/{name}")
    assert response.status_code == 404
    assert "svg" not in response.headers.get("content-type", "")


async def test_pages_stay_out_of_the_api_schema(client: AsyncTestClient) -> None:
    paths = (await client.get("/schema/openapi.json")).json()["paths"]
    assert not {"/tag.js", "/demo", "/demo.js", "/static/creatives/{name}"} & set(paths)

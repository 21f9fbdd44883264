"""Browser-facing pages: the JS tag, the demo shop, and generated SVG banners for the demo catalogue.

None of these belong in the API schema: they are assets for browsers, not JSON endpoints.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

from litestar import MediaType, Response, Router, get
from litestar.exceptions import NotFoundException
from litestar.params import FromPath
from litestar.status_codes import HTTP_304_NOT_MODIFIED

if TYPE_CHECKING:
    from litestar import Request

__all__ = ["CREATIVE_COLOURS", "DEMO_CSP", "creative_svg", "pages_router"]

STATIC_DIR = Path(__file__).parent / "static"
JAVASCRIPT = "application/javascript; charset=utf-8"
SVG = "image/svg+xml"

# The tag changes with deploys, so browsers revalidate it every few minutes (cheap with the ETag);
# banners are generated from their name alone and never change.
TAG_CACHE = "public, max-age=300"
BANNER_CACHE = "public, max-age=86400, immutable"

# (background, accent) per demo category; the name regex only admits these categories.
CREATIVE_COLOURS: dict[str, tuple[str, str]] = {
    "shoes": ("#1f6f5c", "#f4d35e"),
    "camping": ("#3d5a2a", "#f08a4b"),
    "home": ("#8a5a44", "#fbe8c8"),
    "kitchen": ("#a23b2a", "#fff4e0"),
    "audio": ("#27304d", "#7fd1ff"),
    "phones": ("#4b2c6f", "#ffd6f5"),
}
CREATIVE_NAME = re.compile(
    r"(?P<category>"
    + "|".join(CREATIVE_COLOURS)
    + r")-(?P<width>[1-9][0-9]{0,3})x(?P<height>[1-9][0-9]{0,3})\.svg"
)
FONT = 'font-family="Helvetica, Arial, sans-serif"'
MAX_PIXELS = 4000  # the admin API's limit on a creative's width and height


@dataclass(frozen=True, slots=True)
class StaticScript:
    body: bytes
    etag: str


def _load_script(name: str) -> StaticScript:
    # Read at import so a missing file fails the app at start-up, not the first page view.
    body = (STATIC_DIR / name).read_bytes()
    return StaticScript(body=body, etag='"' + hashlib.sha256(body).hexdigest()[:32] + '"')


TAG_JS = _load_script("tag.js")
DEMO_JS = _load_script("demo.js")


def _serve_script(request: Request, script: StaticScript) -> Response[bytes]:
    headers = {"Cache-Control": TAG_CACHE, "ETag": script.etag, "X-Content-Type-Options": "nosniff"}
    if script.etag in request.headers.get("if-none-match", ""):
        return Response(b"", status_code=HTTP_304_NOT_MODIFIED, headers=headers, media_type=JAVASCRIPT)
    return Response(script.body, headers=headers, media_type=JAVASCRIPT)


@get("/tag.js", sync_to_thread=False)
def tag_js(request: Request) -> Response[bytes]:
    """The async ad tag."""
    return _serve_script(request, TAG_JS)


@get("/demo.js", sync_to_thread=False)
def demo_js(request: Request) -> Response[bytes]:
    """The demo shop's button handlers (inline handlers would break the page's CSP)."""
    return _serve_script(request, DEMO_JS)


@lru_cache(maxsize=256)
def creative_svg(category: str, width: int, height: int) -> str:
    """A flat banner: category colour, the category name and its size. Text is escaped although the
    name regex already admits only known words, so a looser regex later cannot open an XSS."""
    background, accent = CREATIVE_COLOURS[category]
    headline = escape(category.capitalize(), quote=True)
    size_label = escape(f"Sponsored · {width}×{height}", quote=True)
    font = max(8, min(height // 3, width // 7))
    small = max(7, font // 2)
    show_label = height >= 3 * small + font
    headline_y = height // 2 - (small // 2 if show_label else 0)
    label = (
        f'<text x="{width // 2}" y="{headline_y + font // 2 + small + 4}" {FONT} font-size="{small}" '
        f'fill="{accent}" text-anchor="middle">{size_label}</text>'
        if show_label
        else ""
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{headline} advertisement">'
        f'<rect width="{width}" height="{height}" fill="{background}"/>'
        f'<rect x="2" y="2" width="{max(width - 4, 0)}" height="{max(height - 4, 0)}" fill="none" '
        f'stroke="{accent}" stroke-width="2"/>'
        f'<text x="{width // 2}" y="{headline_y}" {FONT} '
        f'font-weight="700" font-size="{font}" fill="{accent}" text-anchor="middle" '
        f'dominant-baseline="middle">{headline}</text>'
        f"{label}</svg>"
    )


@get("/static/creatives/{name:str}", sync_to_thread=False)
def creative_banner(name: FromPath[str]) -> Response[str]:
    """A generated SVG banner for `<category>-<width>x<height>.svg`; anything else is 404."""
    match = CREATIVE_NAME.fullmatch(name)
    if match is None:
        raise NotFoundException(detail="no such creative image")
    width, height = int(match["width"]), int(match["height"])
    if width > MAX_PIXELS or height > MAX_PIXELS:
        raise NotFoundException(detail="no such creative image")
    return Response(
        creative_svg(match["category"], width, height),
        media_type=SVG,
        headers={
            "Cache-Control": BANNER_CACHE,
            "X-Content-Type-Options": "nosniff",
            # Opened directly as a document, an SVG may run script: forbid everything.
            "Content-Security-Policy": "default-src 'none'; sandbox",
        },
    )


@dataclass(frozen=True, slots=True)
class DemoProduct:
    item_id: str
    name: str
    category: str
    price: float


# Item ids match the demo creatives' product_ids, so behaviour here lines up with the catalogue.
DEMO_PRODUCTS = [
    DemoProduct("shoes-0", "Trail runner GTX", "shoes", 129.0),
    DemoProduct("shoes-1", "Approach shoe", "shoes", 99.0),
    DemoProduct("camping-0", "Two-person tent", "camping", 249.0),
    DemoProduct("home-0", "Warm desk lamp", "home", 59.0),
    DemoProduct("kitchen-0", "Cast-iron pan", "kitchen", 45.0),
    DemoProduct("kitchen-1", "Chef's knife set", "kitchen", 89.0),
    DemoProduct("audio-0", "Noise-cancelling headphones", "audio", 199.0),
    DemoProduct("phones-0", "Kite 12 phone", "phones", 599.0),
]

DEMO_STYLE = """
body{margin:0;font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;background:#f6f5f2;color:#222}
header{display:flex;align-items:center;gap:1.5rem;padding:.8rem 2rem;background:#222;color:#fff}
header h1{font-size:1.3rem;margin:0}
header form{margin-left:auto;display:flex;gap:.4rem}
main{max-width:1240px;margin:0 auto;padding:1rem 2rem 3rem}
.ad{margin:1rem auto;text-align:center;min-height:20px}
.ad-label{font-size:.7rem;color:#777;text-transform:uppercase;letter-spacing:.08em}
.top{width:728px;max-width:100%;min-height:90px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(240px,1fr));gap:1rem}
.card{background:#fff;border-radius:8px;padding:1rem;box-shadow:0 1px 3px rgba(0,0,0,.1)}
.swatch{height:140px;border-radius:6px;margin-bottom:.6rem}
.card h3{margin:.2rem 0;font-size:1rem}
.card p{margin:.2rem 0 .6rem;color:#555}
button{cursor:pointer;border:1px solid #888;background:#fff;border-radius:4px;padding:.3rem .6rem}
button.buy{background:#1f6f5c;color:#fff;border-color:#1f6f5c}
.featured{display:flex;gap:2rem;align-items:flex-start;margin-top:2.5rem}
.featured article{flex:1;min-height:320px;background:#fff;border-radius:8px;padding:1.5rem}
.side{width:300px;min-height:250px;flex:none}
#status{min-height:1.2em;color:#1f6f5c}
""" + "".join(
    f".c-{category} .swatch{{background:{colours[0]}}}\n" for category, colours in CREATIVE_COLOURS.items()
)

_style_hash = base64.b64encode(hashlib.sha256(DEMO_STYLE.encode()).digest()).decode()

# script-src/connect-src 'self' are all the tag needs on its own server; the style block is allowed
# by its hash rather than 'unsafe-inline', so the page shows that the tag works under a strict CSP.
DEMO_CSP = (
    "default-src 'none'; script-src 'self'; connect-src 'self'; img-src 'self' https: data:; "
    f"style-src 'sha256-{_style_hash}'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def _product_card(product: DemoProduct) -> str:
    item, name, category = (
        escape(value, quote=True) for value in (product.item_id, product.name, product.category)
    )
    return (
        f'<div class="card c-{category}" data-item-id="{item}" data-category="{category}" '
        f'data-price="{product.price:.2f}" data-name="{name}">'
        f'<div class="swatch"></div><h3>{name}</h3><p>{category} · €{product.price:.2f}</p>'
        '<button type="button" data-event="product_view">View</button> '
        '<button type="button" data-event="add_to_cart">Add to cart</button> '
        '<button type="button" class="buy" data-event="purchase">Buy</button></div>'
    )


def _demo_html() -> str:
    featured = DEMO_PRODUCTS[0]
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="adserve:category" content="{escape(featured.category, quote=True)}">
<title>Trailhead Store — adserve demo</title>
<style>{DEMO_STYLE}</style>
<script async src="/tag.js" data-consent="1" data-keywords="outdoor,trail"></script>
<script defer src="/demo.js"></script>
</head>
<body>
<header>
<h1>Trailhead Store</h1>
<span>adserve demo shop</span>
<form id="search" action="/demo" method="get" role="search">
<input name="q" type="search" placeholder="Search products" aria-label="Search products">
<button type="submit">Search</button>
</form>
</header>
<main>
<div class="ad top"><div class="ad-label">Advertisement</div>
<div data-adserve-placement="home-top"></div></div>
<p id="status" role="status"></p>
<h2>Products</h2>
<div class="grid">
{"".join(_product_card(product) for product in DEMO_PRODUCTS)}
</div>
<section class="featured">
<article class="c-{escape(featured.category, quote=True)}"><h2>Featured: {escape(featured.name)}</h2>
<p>Grippy, light and waterproof. Send a few product views, carts or purchases above, then
<button type="button" id="refresh-ads">show new ads</button> to see the next decision follow them.</p>
</article>
<aside class="side"><div class="ad-label">Advertisement</div>
<div data-adserve-placement="product-side"></div></aside>
</section>
</main>
</body>
</html>
"""


DEMO_HTML = _demo_html()


@get("/demo", media_type=MediaType.HTML, sync_to_thread=False)
def demo_page() -> Response[str]:
    """A small shop page with two placements and buttons that send behaviour events."""
    return Response(
        DEMO_HTML,
        media_type=MediaType.HTML,
        headers={
            "Content-Security-Policy": DEMO_CSP,
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "strict-origin-when-cross-origin",
        },
    )


pages_router = Router(
    path="/",
    route_handlers=[tag_js, demo_js, demo_page, creative_banner],
    include_in_schema=False,
    tags=["pages"],
)

"""The admin dashboard: static HTML, JS and CSS under admin/static/, served at /admin.

No build step and nothing from a CDN. The page asks for an API key, keeps it in a JS variable only
(never storage or cookies) and calls the admin API with it. A strict Content-Security-Policy
allows scripts, styles and requests from this origin only, so no inline script can run; the
script renders API data with textContent only.
"""

from __future__ import annotations

from pathlib import Path

from litestar import Response, Router, get
from litestar.exceptions import NotFoundException
from litestar.params import FromPath

__all__ = ["CSP", "dashboard_router"]

STATIC = Path(__file__).parent / "static"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}
ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}


def _file(name: str, media_type: str) -> Response[bytes]:
    return Response((STATIC / name).read_bytes(), media_type=media_type, headers=HEADERS)


@get(["/", "/index.html"], include_in_schema=False)
async def dashboard_page() -> Response[bytes]:
    return _file("index.html", "text/html; charset=utf-8")


@get("/static/{name:str}", include_in_schema=False)
async def dashboard_asset(name: FromPath[str]) -> Response[bytes]:
    media_type = ASSETS.get(name)  # a fixed list: no path from the request reaches the filesystem
    if media_type is None:
        raise NotFoundException(f"no dashboard asset {name!r}")
    return _file(name, media_type)


dashboard_router = Router(path="/admin", route_handlers=[dashboard_page, dashboard_asset])

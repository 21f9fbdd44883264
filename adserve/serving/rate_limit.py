"""Per-client rate limits of the public endpoints, by Litestar's own RateLimitMiddleware.

One budget of `server.rate_limit_per_minute` requests a minute per client address covers every
public endpoint together (decisions, the tag's GET, impressions, clicks, events,
recommendations); past it a request is a 429 problem with `Retry-After`. Counts live in each
process's memory: with N worker processes behind a balancer a client gets up to N times the
limit, which bounds the cost of one client without a round trip to Postgres per request.
Behind a proxy, the client address is the one uvicorn takes from `X-Forwarded-For` of the
proxies in `FORWARDED_ALLOW_IPS`.
"""

from __future__ import annotations

import asyncio
import ipaddress
from typing import TYPE_CHECKING, Any

from litestar.middleware.rate_limit import RateLimitConfig

if TYPE_CHECKING:
    from collections.abc import Mapping

    from litestar import Request
    from litestar.stores.memory import MemoryStore

__all__ = ["EXEMPT", "STORE", "client_address", "public_rate_limit", "purge_expired", "retry_after"]

EXEMPT = "rate_limit_exempt"  # handler opt key: authenticated calls among the public routes
STORE = "rate_limit"
PURGE_EVERY_S = 60.0


def client_address(request: Request[Any, Any, Any]) -> str:
    """The key a limit counts under: an IPv4 address, or an IPv6 /64, which one host can rotate
    through freely (its usual allocation)."""
    host = request.client.host if request.client else "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def public_rate_limit(per_minute: int) -> RateLimitConfig:
    return RateLimitConfig(
        rate_limit=("minute", per_minute),
        identifier_for_request=client_address,
        exclude_opt_key=EXEMPT,
        store=STORE,
    )


def retry_after(headers: Mapping[str, str] | None) -> int:
    """Seconds until the client's window resets, from the middleware's RateLimit-Reset header."""
    reset = (headers or {}).get("RateLimit-Reset", "60")
    return max(1, int(reset)) if reset.isdigit() else 60


async def purge_expired(store: MemoryStore, every_s: float = PURGE_EVERY_S) -> None:
    """Litestar's memory store drops an expired entry only when its key is read again: without
    this, every address that ever called would stay in memory."""
    while True:
        await asyncio.sleep(every_s)
        await store.delete_expired()

"""Issue 13, "Public endpoints bound their cost": per-client rate limits on the public endpoints
(Litestar's RateLimitMiddleware), `server.rate_limit_per_minute` a minute per client address over
all of them together; past it a problem+json 429 with Retry-After. The admin API, the keyed
erasure call and health checks are not limited, and the test configuration turns the limit off so
that no other test (schemathesis included) is throttled.

Before this change no public endpoint had a limit: every request below was answered normally."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
from litestar.testing import AsyncTestClient

from adserve.app import create_app
from adserve.settings import SettingsError, load_settings
from tests.integration.conftest import bearer

LIMIT = 6
CLIENT = "x-test-client"

# One request to each public endpoint: none needs a catalogue, and each counts whatever it answers.
PUBLIC_CALLS = [
    ("POST", "/v1/decisions", {"user_id": "u", "placements": ["no-such-slot"]}),
    ("GET", "/v1/ad?placement=no-such-slot&uid=u", None),
    ("POST", "/v1/events", {"events": []}),
    ("GET", "/i/not.ours", None),
    ("GET", "/c/not.ours", None),
    ("GET", "/v1/recommendations?user_id=u", None),
]


def _as_client(app):
    """The test client always calls from 'testclient'; an `x-test-client` header names the
    address instead, so one app can see several clients."""
    inner = app.asgi_handler

    async def handler(scope, receive, send):
        address = dict(scope.get("headers") or []).get(CLIENT.encode())
        if address:
            scope["client"] = (address.decode(), 50000)
        await inner(scope, receive, send)

    app.asgi_handler = handler
    return app


@pytest.fixture(scope="module")
async def limited(database_url, tmp_path_factory):
    var = tmp_path_factory.mktemp("rate-limited")
    settings = load_settings(
        environ={
            **os.environ,
            "ADSERVE_DATABASE_URL": database_url,
            "ADSERVE_VAR_DIR": str(var),
            "ADSERVE_WRITER_SPOOL_DIR": str(var / "spool"),
            "ADSERVE_MODELS_DIR": str(var / "models"),
            "ADSERVE_SERVER_RATE_LIMIT_PER_MINUTE": str(LIMIT),
        }
    )
    async with AsyncTestClient(_as_client(create_app(settings))) as client:
        yield client


async def _call(client, method: str, path: str, body, address: str, headers=None):
    headers = {CLIENT: address, **(headers or {})}
    return await client.request(method, path, json=body, headers=headers, follow_redirects=False)


async def test_public_endpoints_share_a_per_client_limit_then_answer_429_with_retry_after(
    limited, tenants
) -> None:
    address = "198.51.100.7"
    answers = [
        (await _call(limited, method, path, body, address)).status_code for method, path, body in PUBLIC_CALLS
    ]
    assert 429 not in answers, answers

    for method, path, body in PUBLIC_CALLS:
        throttled = await _call(limited, method, path, body, address)
        assert throttled.status_code == 429, (path, throttled.status_code)
        assert throttled.headers["content-type"].startswith("application/problem+json")
        assert 1 <= int(throttled.headers["retry-after"]) <= 60
        assert f"more than {LIMIT} requests a minute" in throttled.json()["detail"]

    # Another client is not throttled; nor are the admin API, keyed erasure or health checks.
    assert (await _call(limited, *PUBLIC_CALLS[0], "198.51.100.8")).status_code != 429
    admin = await _call(limited, "GET", "/admin/v1/campaigns", None, address, bearer(tenants.admin_key))
    assert admin.status_code == 200
    erasure = await _call(
        limited, "DELETE", "/v1/users/rate-limited-user", None, address, bearer(tenants.site_key)
    )
    assert erasure.status_code == 200, erasure.text
    assert (await _call(limited, "GET", "/health", None, address)).status_code == 200


async def test_an_ipv6_client_counts_as_its_64() -> None:
    from adserve.serving.rate_limit import client_address

    def key(host: str) -> str:
        return client_address(SimpleNamespace(client=SimpleNamespace(host=host)))

    assert key("2001:db8:1:2:aaaa::1") == key("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert key("2001:db8:1:3::1") != key("2001:db8:1:2::1")
    assert key("::ffff:198.51.100.7") == key("198.51.100.7") == "198.51.100.7"


async def test_the_session_app_is_not_throttled(client) -> None:
    for _ in range(3 * LIMIT):
        assert (await client.get("/i/not.ours")).status_code == 400


def test_the_limit_is_a_setting_with_a_production_default(tmp_path) -> None:
    environ = {"ADSERVE_SECRET_KEY": "s" * 40, "ADSERVE_VAR_DIR": str(tmp_path)}
    assert load_settings("prod", environ).server.rate_limit_per_minute == 600
    assert load_settings("test", environ).server.rate_limit_per_minute == 0
    with pytest.raises(SettingsError, match="rate_limit_per_minute"):
        load_settings("prod", {**environ, "ADSERVE_SERVER_RATE_LIMIT_PER_MINUTE": "-1"})

"""Impressions and clicks: one of each counts per decision; invalid traffic is stored, not counted."""

from __future__ import annotations

import time
import uuid

import asyncpg
import pytest

from adserve.db.engine import asyncpg_dsn
from adserve.domain import Pricing
from adserve.signing.tokens import TokenKind, TrackingClaims, TrackingSigner
from tests.integration.serving.catalog_builder import CatalogBuilder, wait_for_placement
from tests.integration.serving.test_decisions import decide

BROWSER = {"user-agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36"}


async def query(database_url: str, sql: str, *args):
    connection = await asyncpg.connect(**asyncpg_dsn(database_url))
    try:
        return await connection.fetch(sql, *args)
    finally:
        await connection.close()


def path_of(url: str) -> str:
    return "/" + url.split("/", 3)[3]


@pytest.fixture
async def served(client, sessionmaker):
    """A fresh CPC campaign (bid 0.8) and a CPM one (price 4.0), each with a served decision."""
    async with sessionmaker() as session:
        builder = CatalogBuilder(session)
        await builder.campaign("cpc", bid=0.8, total_budget=100.0)
        cpc_key = await builder.placement("cpc")
        builder_cpm = CatalogBuilder(session)
        await builder_cpm.campaign("cpm", pricing="cpm", bid=4.0, total_budget=100.0)
        cpm_key = await builder_cpm.placement("cpm")
    await wait_for_placement(client, cpc_key)
    await wait_for_placement(client, cpm_key)
    return {
        "cpc": (builder.built, await decide(client, cpc_key, user="clicker", consent=True)),
        "cpm": (builder_cpm.built, await decide(client, cpm_key, user="clicker", consent=True)),
    }


async def spend(database_url: str, campaign_id: int) -> float:
    rows = await query(database_url, "SELECT spend_total FROM campaigns WHERE id = $1", campaign_id)
    return float(rows[0]["spend_total"])


async def test_impression_is_recorded_once_and_cpm_charged_once(client, served, database_url) -> None:
    built, decision = served["cpm"]
    for _ in range(3):
        response = await client.get(path_of(decision["impression_url"]))
        assert response.status_code == 200 and response.headers["content-type"] == "image/gif"
    rows = await query(
        database_url, "SELECT * FROM impressions WHERE decision_id = $1", uuid.UUID(decision["decision_id"])
    )
    assert len(rows) == 1
    assert await spend(database_url, built.campaigns["cpm"]) == pytest.approx(0.004)


async def test_valid_click_redirects_to_landing_and_charges_cpc_once(client, served, database_url) -> None:
    built, decision = served["cpc"]
    assert (await client.get(path_of(decision["impression_url"]))).status_code == 200
    assert await spend(database_url, built.campaigns["cpc"]) == 0.0  # CPC: impressions are free
    first = await client.get(path_of(decision["click_url"]), headers=BROWSER, follow_redirects=False)
    assert first.status_code == 302
    assert first.headers["location"] == "https://example.com/cpc/0"
    again = await client.get(path_of(decision["click_url"]), headers=BROWSER, follow_redirects=False)
    assert again.status_code == 302
    rows = await query(
        database_url,
        "SELECT valid, invalid_reason FROM clicks WHERE decision_id = $1 ORDER BY ts",
        uuid.UUID(decision["decision_id"]),
    )
    assert [(r["valid"], r["invalid_reason"]) for r in rows] == [(True, None), (False, "duplicate")]
    assert await spend(database_url, built.campaigns["cpc"]) == pytest.approx(0.8)


async def test_click_never_redirects_to_a_url_from_the_request(client, served) -> None:
    _, decision = served["cpc"]
    await client.get(path_of(decision["impression_url"]))
    response = await client.get(
        path_of(decision["click_url"]) + "?url=https://evil.example", headers=BROWSER, follow_redirects=False
    )
    assert response.headers["location"] == "https://example.com/cpc/0"


async def test_click_without_impression_is_invalid(client, served, database_url) -> None:
    built, decision = served["cpc"]
    response = await client.get(path_of(decision["click_url"]), headers=BROWSER, follow_redirects=False)
    assert response.status_code == 302
    rows = await query(
        database_url,
        "SELECT valid, invalid_reason FROM clicks WHERE decision_id = $1",
        uuid.UUID(decision["decision_id"]),
    )
    assert [(r["valid"], r["invalid_reason"]) for r in rows] == [(False, "no_impression")]
    assert await spend(database_url, built.campaigns["cpc"]) == 0.0


@pytest.mark.parametrize("agent", ["Googlebot/2.1", "curl/8.0", "Mozilla/5.0 HeadlessChrome/126.0", ""])
async def test_bot_clicks_are_invalid(client, served, database_url, agent) -> None:
    built, decision = served["cpc"]
    await client.get(path_of(decision["impression_url"]))
    await client.get(path_of(decision["click_url"]), headers={"user-agent": agent}, follow_redirects=False)
    rows = await query(
        database_url,
        "SELECT valid, invalid_reason FROM clicks WHERE decision_id = $1",
        uuid.UUID(decision["decision_id"]),
    )
    assert [(r["valid"], r["invalid_reason"]) for r in rows] == [(False, "bot")]
    assert await spend(database_url, built.campaigns["cpc"]) == 0.0


async def test_tampered_click_is_not_stored_and_not_redirected(client, served, database_url) -> None:
    """Not our token: counted (tests/reliability/test_invalid_tracking_hits.py), never a row."""
    _, decision = served["cpc"]
    token = decision["click_url"].rsplit("/", 1)[1]
    payload, signature = token.split(".")
    forged = payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB") + "." + signature
    before = await query(database_url, "SELECT count(*) AS n FROM clicks")
    response = await client.get(f"/c/{forged}", headers=BROWSER, follow_redirects=False)
    assert response.status_code == 400
    after = await query(database_url, "SELECT count(*) AS n FROM clicks")
    assert after[0]["n"] == before[0]["n"]
    assert (await client.get(f"/i/{forged}")).status_code == 400


async def test_expired_click_is_stored_invalid_but_still_lands(
    client, served, settings, database_url
) -> None:
    built, decision = served["cpc"]
    signer = TrackingSigner(settings.secret_key, settings.serving.token_ttl_s)
    old = int(time.time()) - settings.serving.token_ttl_s - 5
    claims = TrackingClaims(
        TokenKind.CLICK,
        uuid.UUID(decision["decision_id"]),
        decision["creative"]["id"],
        decision["creative"]["campaign_id"],
        built.placements["cpc"],
        None,
        old,
        Pricing.CPC,
        800_000,
    )
    response = await client.get(f"/c/{signer.sign(claims)}", headers=BROWSER, follow_redirects=False)
    assert response.status_code == 302
    rows = await query(
        database_url,
        "SELECT valid, invalid_reason FROM clicks WHERE decision_id = $1",
        uuid.UUID(decision["decision_id"]),
    )
    assert [(r["valid"], r["invalid_reason"]) for r in rows] == [(False, "expired")]


async def test_impression_token_is_not_a_click_token(client, served) -> None:
    _, decision = served["cpc"]
    token = decision["impression_url"].rsplit("/", 1)[1]
    response = await client.get(f"/c/{token}", headers=BROWSER, follow_redirects=False)
    assert response.status_code == 400

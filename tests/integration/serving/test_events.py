"""Behaviour events: idempotent, consent-gated, pseudonymous, and purchases become conversions."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from adserve.db.engine import asyncpg_dsn
from tests.integration.serving.catalog_builder import CatalogBuilder, wait_for_placement
from tests.integration.serving.test_decisions import decide
from tests.integration.serving.test_tracking import BROWSER, path_of


async def scalar(database_url: str, sql: str, *args):
    connection = await asyncpg.connect(**asyncpg_dsn(database_url))
    try:
        return await connection.fetchval(sql, *args)
    finally:
        await connection.close()


def event(user: str, kind: str = "product_view", **fields) -> dict:
    return {
        "event_id": str(uuid.uuid4()),
        "user_id": user,
        "type": kind,
        "item_id": "sku-1",
        "category": "shoes",
        "ts": datetime.now(UTC).isoformat(),
        **fields,
    }


async def test_retried_batch_is_stored_once(client, database_url) -> None:
    user = f"retry-{uuid.uuid4().hex[:6]}"
    batch = {"consent": True, "events": [event(user), event(user, "add_to_cart")]}
    for _ in range(3):
        response = await client.post("/v1/events", json=batch)
        assert response.status_code == 202
    ids = [uuid.UUID(e["event_id"]) for e in batch["events"]]
    assert await scalar(database_url, "SELECT count(*) FROM user_events WHERE id = ANY($1::uuid[])", ids) == 2


async def test_without_consent_nothing_is_stored(client, database_url) -> None:
    batch = {"events": [event("no-consent-user")]}  # consent absent = no consent
    response = await client.post("/v1/events", json=batch)
    assert response.json() == {"received": 1, "stored": 0, "ignored_without_consent": 1, "durability": "none"}
    stored = await scalar(
        database_url,
        "SELECT count(*) FROM user_events WHERE id = $1",
        uuid.UUID(batch["events"][0]["event_id"]),
    )
    assert stored == 0


async def test_raw_user_ids_never_reach_postgres(client, database_url) -> None:
    planted = f"planted-{uuid.uuid4().hex}"
    await client.post("/v1/events", json={"consent": True, "events": [event(planted)]})
    found = await scalar(database_url, "SELECT count(*) FROM user_events WHERE user_id = $1", planted)
    assert found == 0
    assert await scalar(database_url, "SELECT count(*) FROM users WHERE id = $1", planted) == 0


@pytest.mark.parametrize(
    "bad",
    [
        {"consent": True, "events": []},
        {"consent": True, "events": [event("u") for _ in range(501)]},
        {"consent": True, "events": [{**event("u"), "type": "teleport"}]},
        {"consent": True, "events": [{**event("u"), "event_id": "not-a-uuid"}]},
        {"consent": True, "events": [{**event("u"), "ts": "2026-01-01T00:00:00"}]},
        {
            "consent": True,
            "events": [{**event("u"), "ts": (datetime.now(UTC) + timedelta(days=1)).isoformat()}],
        },
        {"consent": True, "events": [{**event("u"), "price": -1}]},
    ],
)
async def test_bad_batches_are_400_and_store_nothing(client, database_url, bad) -> None:
    response = await client.post("/v1/events", json=bad)
    assert response.status_code in (400, 413), response.text
    ids = [uuid.UUID(e["event_id"]) for e in bad["events"] if len(e.get("event_id", "")) == 36]
    if ids:
        assert (
            await scalar(database_url, "SELECT count(*) FROM user_events WHERE id = ANY($1::uuid[])", ids)
            == 0
        )


async def test_purchase_after_click_becomes_one_conversion(client, sessionmaker, database_url) -> None:
    async with sessionmaker() as session:
        builder = CatalogBuilder(session)
        await builder.campaign("convert", bid=0.5)
        key = await builder.placement("conv")
    await wait_for_placement(client, key)
    user = f"buyer-{uuid.uuid4().hex[:6]}"
    decision = await decide(client, key, user=user, consent=True)
    await client.get(path_of(decision["impression_url"]))
    await client.get(path_of(decision["click_url"]), headers=BROWSER, follow_redirects=False)
    purchase = event(user, "purchase", price=59.0)
    for _ in range(2):  # a retried purchase must not convert twice
        await client.post("/v1/events", json={"consent": True, "events": [purchase]})
    rows = await scalar(
        database_url,
        "SELECT count(*) FROM conversions WHERE decision_id = $1",
        uuid.UUID(decision["decision_id"]),
    )
    value = await scalar(
        database_url,
        "SELECT value FROM conversions WHERE decision_id = $1",
        uuid.UUID(decision["decision_id"]),
    )
    assert rows == 1 and float(value) == 59.0


async def test_purchase_without_a_click_is_not_a_conversion(client, database_url) -> None:
    user = f"window-{uuid.uuid4().hex[:6]}"
    await client.post("/v1/events", json={"consent": True, "events": [event(user, "purchase", price=10.0)]})
    assert (
        await scalar(
            database_url,
            "SELECT count(*) FROM conversions c JOIN user_events e ON e.user_id = c.user_id "
            "WHERE e.id IS NULL",
        )
        == 0
    )

"""Finding 4: the documented batch of 500 events fits the body limit of POST /v1/events, and a
body over the limit is a problem+json 413 that states it."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg

from adserve.db.engine import asyncpg_dsn

DOCUMENTED_MAXIMUM = 500


def _event(index: int, short: bool = False) -> dict:
    """An event with its text fields at their longest (user id and query 200, item and category 100)."""

    def text(prefix: str, length: int) -> str:
        return (f"{prefix}{index:06d}" + "x" * length)[: 10 if short else length]

    return {
        "event_id": str(uuid.uuid4()),
        "user_id": text("u", 200),
        "type": "purchase",
        "ts": (datetime.now(UTC) - timedelta(minutes=1)).isoformat(),
        "item_id": text("i", 100),
        "category": text("c", 100),
        "price": 999999999.999999,
        "query": text("q", 200),
    }


async def _stored(database_url: str, event_ids: list[str]) -> int:
    connection = await asyncpg.connect(**asyncpg_dsn(database_url))
    try:
        return await connection.fetchval(
            "SELECT count(*) FROM user_events WHERE id = ANY($1::uuid[])", [uuid.UUID(e) for e in event_ids]
        )
    finally:
        await connection.close()


async def test_the_documented_maximum_fits(client, settings, database_url) -> None:
    assert settings.serving.max_events_per_batch == DOCUMENTED_MAXIMUM
    batch = {"consent": True, "events": [_event(i) for i in range(DOCUMENTED_MAXIMUM)]}
    response = await client.post("/v1/events", json=batch)
    assert response.status_code == 202, response.text[:500]
    assert response.json()["stored"] == DOCUMENTED_MAXIMUM
    assert await _stored(database_url, [e["event_id"] for e in batch["events"]]) == DOCUMENTED_MAXIMUM


async def test_an_item_id_longer_than_its_column_is_a_400(client) -> None:
    event = {**_event(0), "item_id": "i" * 101}
    response = await client.post("/v1/events", json={"consent": True, "events": [event]})
    assert response.status_code == 400


async def test_one_event_more_is_a_400_not_a_413(client) -> None:
    batch = {"consent": True, "events": [_event(i, short=True) for i in range(DOCUMENTED_MAXIMUM + 1)]}
    response = await client.post("/v1/events", json=batch)
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/problem+json")


async def test_an_oversized_body_is_a_413_that_states_the_limit(client) -> None:
    body = b'{"consent": true, "events": [' + b" " * 4_000_000 + b"]}"
    response = await client.post("/v1/events", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["status"] == 413 and "/v1/events" in problem["detail"]
    stated = re.search(r"(\d+) bytes", problem["detail"])
    assert stated, problem["detail"]
    limit = int(stated.group(1))
    # the limit is the one in force: a body of exactly that size is parsed (a 400 for its content)
    head, tail = b'{"consent": true, "events": [', b"]}"
    exact = head + b" " * (limit - len(head) - len(tail)) + tail
    response = await client.post("/v1/events", content=exact, headers={"content-type": "application/json"})
    assert response.status_code == 400
    over = exact[:-2] + b" ]}"
    response = await client.post("/v1/events", content=over, headers={"content-type": "application/json"})
    assert response.status_code == 413


async def test_other_endpoints_keep_the_small_limit(client, settings) -> None:
    body = b'{"user_id": "u", "placements": ["p"], "context": {"keywords": [' + b" " * 70_000 + b"]}}"
    response = await client.post("/v1/decisions", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert str(settings.server.max_body_bytes) in response.json()["detail"]

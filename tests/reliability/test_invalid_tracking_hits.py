"""Second paragraph: every request to `/c/<garbage>` stored a clicks row. Hits with a token that
is not ours are counted per minute instead: storage grows with time, not with traffic."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import asyncpg
import pytest

from adserve.db.engine import asyncpg_dsn
from tests.integration.serving.test_tracking import BROWSER

HITS = 200


async def _clicks(database_url: str) -> int:
    connection = await asyncpg.connect(**asyncpg_dsn(database_url))
    try:
        return await connection.fetchval("SELECT count(*) FROM clicks")
    finally:
        await connection.close()


async def _counted(client, database_url: str) -> dict[str, int]:
    """Hits counted so far, by kind, once the app's counter has flushed (on the app's own loop)."""
    await asyncio.to_thread(client.blocking_portal.call, client.app.state.invalid_hits.flush)
    connection = await asyncpg.connect(**asyncpg_dsn(database_url))
    try:
        rows = await connection.fetch("SELECT kind, sum(hits) AS n FROM invalid_tracking_hits GROUP BY kind")
        return {row["kind"]: row["n"] for row in rows}
    finally:
        await connection.close()


async def test_garbage_tokens_are_counted_not_stored(client, database_url) -> None:
    before_rows, before = await _clicks(database_url), await _counted(client, database_url)
    for index in range(HITS):
        response = await client.get(f"/c/garbage{index}.garbage", headers=BROWSER, follow_redirects=False)
        assert response.status_code == 400
    assert (await client.get("/i/garbage.garbage")).status_code == 400
    assert await _clicks(database_url) == before_rows
    after = await _counted(client, database_url)
    assert after.get("click", 0) - before.get("click", 0) == HITS
    assert after.get("impression", 0) - before.get("impression", 0) == 1


async def test_counts_are_stored_as_one_row_per_minute(own_database_url, own_pool) -> None:
    from adserve.events.invalid_hits import InvalidHitCounter

    counter = InvalidHitCounter(own_pool)
    minute = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    for second in range(HITS):
        counter.count("click", "tampered", minute.replace(second=second % 60))
    assert await counter.flush() == HITS
    counter.count("click", "tampered", minute)
    await counter.close()
    rows = await own_pool.fetch("SELECT minute, kind, reason, hits FROM invalid_tracking_hits")
    assert [tuple(row) for row in rows] == [(minute, "click", "tampered", HITS + 1)]


async def test_counts_wait_in_memory_while_postgres_is_away(own_database_url) -> None:
    pool = await asyncpg.create_pool(**asyncpg_dsn(own_database_url), min_size=0, max_size=1)
    await pool.close()  # an unusable pool stands in for an unreachable server
    from adserve.events.invalid_hits import InvalidHitCounter

    counter = InvalidHitCounter(pool)
    counter.count("click", "tampered", datetime.now(UTC))
    assert await counter.flush() == 0
    assert sum(counter.pending.values()) == 1


@pytest.mark.parametrize("path", ["/c/not-a-token", "/c/x.y"])
async def test_malformed_tokens_are_refused_without_a_row(client, database_url, path) -> None:
    before = await _clicks(database_url)
    response = await client.get(path, headers=BROWSER, follow_redirects=False)
    assert response.status_code == 400
    assert await _clicks(database_url) == before

"""In-memory user state (serving/user_state.py) kept true by Postgres notifications, and the
decision log's contract (pipeline._log): real Postgres, the real writer, a second cache standing
in for another serving process."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from adserve.db.engine import asyncpg_dsn
from adserve.events.writer import WRITE_BARRIER_KEY
from adserve.serving.user_state import UserStateCache
from adserve.signing.identity import UserKeys
from tests.integration.serving.catalog_builder import CatalogBuilder, wait_for_placement

SINCE = timedelta(days=30)


async def until(condition, deadline_s: float = 10.0) -> None:
    stop = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > stop:
            raise TimeoutError("condition never held")
        await asyncio.sleep(0.01)  # polling interval of a condition wait


@pytest.fixture
async def other_process(database_url):
    """A second process's user state: its own pool and LISTEN connection on the same database."""
    pool = await asyncpg.create_pool(**asyncpg_dsn(database_url), min_size=1, max_size=4)
    cache = UserStateCache(pool, history_length=50)
    await cache.start()
    try:
        yield cache
    finally:
        await cache.close()
        await pool.close()


def event(user: str, category: str) -> dict:
    return {
        "event_id": str(uuid.uuid4()),
        "user_id": user,
        "type": "product_view",
        "item_id": f"sku-{uuid.uuid4().hex[:6]}",
        "category": category,
        "ts": datetime.now(UTC).isoformat(),
    }


async def capped_placement(sessionmaker, client, name: str, impressions: int) -> tuple[int, str]:
    """A placement whose only campaign is capped at `impressions` an hour: (campaign, placement key)."""
    async with sessionmaker() as session:
        builder = CatalogBuilder(session)
        campaign = await builder.campaign(
            name, bid=9.0, frequency_cap={"impressions": impressions, "window_s": 3600}
        )
        key = await builder.placement(f"{name}-slot")
    await wait_for_placement(client, key)
    return campaign, key


async def row_logged_within_the_flush_window(database_url: str, decision_id: uuid.UUID, settings) -> None:
    """Waits for the decision's row; fails once the writer's flush window (and a margin) passed."""
    answered = time.monotonic()
    connection = await asyncpg.connect(**asyncpg_dsn(database_url))
    try:
        while not await connection.fetchval("SELECT count(*) FROM decisions WHERE id = $1", decision_id):
            assert time.monotonic() - answered < settings.writer.flush_ms / 1000 + 2.0, (
                "row not logged in time"
            )
            await asyncio.sleep(0.01)  # polling interval of a condition wait
    finally:
        await connection.close()


async def test_a_user_is_read_once_until_their_behaviour_changes(client, other_process, settings) -> None:
    user = f"state-{uuid.uuid4().hex[:8]}"
    key = UserKeys(settings.secret_key).consented(user)
    posted = await client.post("/v1/events", json={"consent": True, "events": [event(user, "shoes")]})
    assert posted.status_code == 202
    # a load that overlaps the commit's notification is used once, not kept: let it arrive first
    await until(lambda: key in other_process._touched)
    now = datetime.now(UTC)
    first = await other_process.get(key, True, [], now - SINCE)
    loads = other_process.loads
    assert [e.category for e in first.history] == ["shoes"]
    hits = other_process.counters()["hits"]
    again = await other_process.get(key, True, [], now - SINCE)
    assert again.history == first.history and other_process.loads == loads  # from memory
    assert other_process.counters()["hits"] == hits + 1 and other_process.counters()["users"] >= 1

    posted = await client.post("/v1/events", json={"consent": True, "events": [event(user, "audio")]})
    assert posted.status_code == 202 and posted.json()["durability"] == "stored"
    await until(lambda: key not in other_process._entries)  # the commit's notification arrived
    fresh = await other_process.get(key, True, [], now - SINCE)
    assert [e.category for e in fresh.history] == ["shoes", "audio"] and other_process.loads == loads + 1


async def test_a_capped_serve_reaches_the_other_process_without_a_read(
    client, sessionmaker, other_process, settings, database_url
) -> None:
    campaign, key = await capped_placement(sessionmaker, client, "capped", impressions=2)
    user = f"cap-{uuid.uuid4().hex[:8]}"
    user_key = UserKeys(settings.secret_key).consented(user)
    before = await other_process.get(user_key, True, [campaign], datetime.now(UTC) - SINCE)
    assert before.served == {}
    loads = other_process.loads

    response = await client.post(
        "/v1/decisions", json={"user_id": user, "consent": True, "placements": [key]}
    )
    decision = response.json()["decisions"][0]
    assert decision["creative"]["campaign_id"] == campaign
    # the serve was published before the answer: the other process's next decision sees it,
    # from memory (its catch-up round trip brings the notification in)
    after = await other_process.get(user_key, True, [campaign], datetime.now(UTC) - SINCE)
    assert len(after.served[campaign]) == 1 and other_process.loads == loads
    # and the row follows within the flush window; its commit's own notification repeats the
    # serve, which counts once
    await row_logged_within_the_flush_window(database_url, uuid.UUID(decision["decision_id"]), settings)
    again = await other_process.get(user_key, True, [campaign], datetime.now(UTC) - SINCE)
    assert len(again.served[campaign]) == 1 and other_process.loads == loads


async def test_a_capped_serve_whose_row_is_not_committed_yet_caps_a_user_the_other_process_never_saw(
    client, sessionmaker, other_process, settings, database_url
) -> None:
    """The serve's notification comes before its row: a process without an entry for the user
    keeps the serve and adds it to the user's load, which cannot find the row yet."""
    campaign, key = await capped_placement(sessionmaker, client, "capped-unseen", impressions=1)
    user = f"unseen-{uuid.uuid4().hex[:8]}"
    user_key = UserKeys(settings.secret_key).consented(user)
    # the erasure barrier held exclusively: every writer transaction waits, so no row commits
    barrier = await asyncpg.connect(**asyncpg_dsn(database_url))
    try:
        await barrier.execute("BEGIN")
        await barrier.execute("SELECT pg_advisory_xact_lock($1)", WRITE_BARRIER_KEY)
        response = await client.post(
            "/v1/decisions", json={"user_id": user, "consent": True, "placements": [key]}
        )
        decision = response.json()["decisions"][0]
        assert decision["creative"]["campaign_id"] == campaign
        stored = await barrier.fetchval(
            "SELECT count(*) FROM decisions WHERE id = $1", uuid.UUID(decision["decision_id"])
        )
        assert stored == 0  # answered before its row was committed
        assert user_key not in other_process._entries
        state = await other_process.get(user_key, True, [campaign], datetime.now(UTC) - SINCE)
        assert len(state.served[campaign]) == 1
        # the serving process's own next decision for the user: the cap (1) holds there too
        again = await client.post(
            "/v1/decisions", json={"user_id": user, "consent": True, "placements": [key]}
        )
        assert again.json()["decisions"][0]["creative"] is None
    finally:
        await barrier.execute("COMMIT")
        await barrier.close()


async def test_a_lost_listen_connection_forgets_every_user(other_process, database_url) -> None:
    await other_process.get("some-user-key", False, [], datetime.now(UTC) - SINCE)
    assert len(other_process) == 1
    listener = other_process._listener_pid
    connection = await asyncpg.connect(**asyncpg_dsn(database_url))
    try:
        assert await connection.fetchval("SELECT pg_terminate_backend($1)", listener)
    finally:
        await connection.close()
    await until(lambda: other_process._listener_pid not in (None, listener))  # listening again
    assert len(other_process) == 0
    await other_process.get("some-user-key", False, [], datetime.now(UTC) - SINCE)
    assert len(other_process) == 1  # and caching again


async def test_uncapped_decision_rows_reach_postgres_within_the_flush_window(
    client, sessionmaker, database_url, settings
) -> None:
    async with sessionmaker() as session:
        builder = CatalogBuilder(session)
        await builder.campaign("uncapped", bid=1.0)
        key = await builder.placement("log-contract")
    await wait_for_placement(client, key)
    response = await client.post("/v1/decisions", json={"user_id": "log-contract", "placements": [key]})
    decision_id = uuid.UUID(response.json()["decisions"][0]["decision_id"])
    await row_logged_within_the_flush_window(database_url, decision_id, settings)


async def test_an_event_refreshes_a_served_user_ahead_of_their_next_decision(
    client, other_process, settings
) -> None:
    """Encode at event time: the process reloads a user it was serving when their behaviour
    changes and hands the state to `prepare` (the scorer encodes it), before any decision asks."""
    prepared: list[tuple[str, list[str]]] = []

    async def prepare(user_key, state) -> None:
        prepared.append((user_key, [e.category for e in state.history]))

    other_process.prepare = prepare
    user = f"refresh-{uuid.uuid4().hex[:8]}"
    key = UserKeys(settings.secret_key).consented(user)
    await client.post("/v1/events", json={"consent": True, "events": [event(user, "shoes")]})
    await until(lambda: key in other_process._touched)
    await other_process.get(key, True, [], datetime.now(UTC) - SINCE)
    assert prepared == []  # a plain read prepares nothing

    await client.post("/v1/events", json={"consent": True, "events": [event(user, "audio")]})
    await until(lambda: bool(prepared))
    assert prepared == [(key, ["shoes", "audio"])]
    assert other_process.counters()["refreshed"] == 1
    loads = other_process.loads
    state = await other_process.get(key, True, [], datetime.now(UTC) - SINCE)
    assert [e.category for e in state.history] == ["shoes", "audio"] and other_process.loads == loads


async def test_a_decision_sees_a_change_committed_elsewhere_before_its_notification_was_read(
    other_process, database_url
) -> None:
    """Another process commits a user's event while this one's event loop is busy, so the
    notification sits unread on the LISTEN socket when the next decision asks: the decision still
    sees the event (its round trip on the LISTEN connection brings the notification in first)."""
    user_key = f"sync-{uuid.uuid4().hex[:8]}"
    since = datetime.now(UTC) - SINCE
    before = await other_process.get(user_key, True, [], since)
    assert before.history == () and user_key in other_process._entries
    loads = other_process.loads

    async def commit_elsewhere() -> None:
        connection = await asyncpg.connect(**asyncpg_dsn(database_url))
        try:
            async with connection.transaction():
                await connection.execute(
                    "INSERT INTO user_events (id, user_id, event_type, ts, item_id, category)"
                    " VALUES ($1, $2, 'product_view', now(), 'sku-sync', 'shoes')",
                    uuid.uuid4(),
                    user_key,
                )
                await connection.execute("SELECT pg_notify('adserve_user_state', $1)", f"e {user_key}")
        finally:
            await connection.close()

    # committed from a thread of its own while this loop waits without running: nothing has read
    # the notification when `get` is called
    thread = threading.Thread(target=asyncio.run, args=(commit_elsewhere(),))
    thread.start()
    thread.join()
    after = await other_process.get(user_key, True, [], since)
    assert [e.item_id for e in after.history] == ["sku-sync"]
    assert other_process.loads == loads + 1 and other_process.syncs >= 1


async def test_a_decision_that_reads_nothing_of_the_user_makes_no_round_trip(other_process) -> None:
    """Without consent (no history) and with no capped campaign in play, nothing kept about the
    user is read, so the decision does not wait for the LISTEN round trip; with either, it does."""
    user_key = f"anon-{uuid.uuid4().hex[:8]}"
    since = datetime.now(UTC) - SINCE
    await other_process.get(user_key, False, [], since)
    syncs = other_process.syncs
    await other_process.get(user_key, False, [], since)
    assert other_process.syncs == syncs
    await other_process.get(user_key, True, [], since)  # reads history: the entry is reloaded with it
    syncs = other_process.syncs
    await other_process.get(user_key, True, [], since)
    assert other_process.syncs == syncs + 1
    await other_process.get(user_key, False, [7], since)  # a capped campaign in play
    assert other_process.syncs == syncs + 2


async def test_serves_published_at_once_reach_another_process_whatever_their_number(
    other_process, database_url
) -> None:
    """250 serves in one publication: one round trip, split into notifications Postgres accepts
    (a payload holds under 8,000 bytes), every serve heard by a process that never saw the users."""
    pool = await asyncpg.create_pool(**asyncpg_dsn(database_url), min_size=1, max_size=2)
    publisher = UserStateCache(pool, history_length=50)
    try:
        now = datetime.now(UTC)
        users = [f"{uuid.uuid4().hex}" for _ in range(250)]
        published = publisher.published
        assert await publisher.publish_serves([(user, 42, now) for user in users])
        assert publisher.published == published + 1
        await until(lambda: all(user in other_process._pending for user in users))
        state = await other_process.get(users[-1], False, [42], now - SINCE)
        assert [t.timestamp() for t in state.served[42]] == pytest.approx([now.timestamp()])
        assert (await other_process.get(users[0], False, [7], now - SINCE)).served == {}  # another campaign
    finally:
        await publisher.close()
        await pool.close()


async def test_a_listen_connection_the_pool_took_back_has_no_backend(database_url) -> None:
    """asyncpg's pool takes a closed connection back at once, a loop turn before the termination
    listener that ends the cache's hold runs: in between the hold reads as no connection, not as
    an error (CI once failed here while the LISTEN connection was being replaced)."""
    pool = await asyncpg.create_pool(**asyncpg_dsn(database_url), min_size=1, max_size=1)
    cache = UserStateCache(pool, history_length=50)
    try:
        connection = await pool.acquire()
        cache._listener = connection
        assert cache._listener_pid == connection.get_server_pid()
        await pool.release(connection)
        assert cache._listener_pid is None
    finally:
        cache._listener = None
        await pool.close()


async def test_a_publication_cut_short_by_shutdown_sends_its_decisions_to_the_commit(database_url) -> None:
    """Closing the cache while a publication waits for a connection: its decisions hear False
    (they then wait for their rows' commit) instead of waiting for ever."""
    pool = await asyncpg.create_pool(**asyncpg_dsn(database_url), min_size=1, max_size=1)
    cache = UserStateCache(pool, history_length=50)
    held = await pool.acquire()  # the pool's only connection: the publication waits for it
    try:
        publishing = asyncio.create_task(cache.publish_serves([("user", 1, datetime.now(UTC))]))
        await until(lambda: cache._publishing is not None)
        await cache.close()
        assert await asyncio.wait_for(publishing, 5.0) is False
        assert cache.published == 0
    finally:
        await pool.release(held)
        await pool.close()

"""Second paragraph: erasure (DELETE /v1/users/{id}) changed only the rows already in Postgres;
rows of the user still queued in a log writer, or spooled on disk while Postgres was away, arrived
afterwards with the user's key. Rows from before an erasure now arrive unlinked (decisions,
impressions, clicks) or not at all (behaviour events), whenever and through whichever writer."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import asyncpg
import pytest

from adserve.db.engine import asyncpg_dsn
from adserve.events.erasure import erase_user
from adserve.events.writer import LogWriter
from adserve.settings import WriterSettings
from adserve.signing.identity import UserKeys
from tests.integration.events.rows import (
    UNREACHABLE_URL,
    click_row,
    create_campaign,
    decision_row,
    event_row,
    impression_row,
)

GUARD_S = 20.0
USER_KEYS = UserKeys("erasure reach secret")


@pytest.fixture
async def db(database_url: str):
    connection = await asyncpg.connect(**asyncpg_dsn(database_url))
    yield connection
    await connection.close()


def user_rows(user: str, campaign: int) -> dict[str, list[tuple]]:
    """The user's rows: with consent (their key), and a decision served without consent (the
    day's session key)."""
    now = datetime.now(UTC)
    key = USER_KEYS.consented(user)
    decision = decision_row(user_id=key, campaign_id=campaign, ts=now)
    anonymous = decision_row(user_id=USER_KEYS.session(user, None, now), campaign_id=campaign, ts=now)
    return {
        "user_events": [event_row(user_id=key, received_at=now, ts=now)],
        "decisions": [decision, anonymous],
        "impressions": [impression_row(campaign, 0.0, decision_id=decision[0], user_id=key, ts=now)],
        "clicks": [click_row(campaign, decision[0], 0.0, user_id=key, ts=now)],
    }


async def erase(database_url: str, user: str) -> None:
    connection = await asyncpg.connect(**asyncpg_dsn(database_url))
    try:
        await erase_user(connection, USER_KEYS, user, None, "admin")
    finally:
        await connection.close()


async def assert_erased(db, key: str, rows: dict[str, list[tuple]]) -> None:
    assert await db.fetchval("SELECT count(*) FROM user_events WHERE user_id = $1", key) == 0
    assert await db.fetchval("SELECT count(*) FROM user_events WHERE id = $1", rows["user_events"][0][0]) == 0
    for table, key_column in (("decisions", "id"), ("impressions", "decision_id"), ("clicks", "id")):
        stored = await db.fetch(
            f"SELECT user_id FROM {table} WHERE {key_column} = ANY($1::uuid[])",
            [row[0] for row in rows[table]],
        )
        assert [row["user_id"] for row in stored] == [None] * len(rows[table]), table


async def test_erasure_reaches_rows_spooled_on_disk(database_url, db, tmp_path) -> None:
    user = f"erase-spooled-{uuid.uuid4().hex[:8]}"
    key = USER_KEYS.consented(user)
    rows = user_rows(user, await create_campaign(db, pricing="cpc"))
    offline = LogWriter(UNREACHABLE_URL, WriterSettings(), tmp_path / "spool")
    await offline.start()
    for table, batch in rows.items():
        assert await offline.write(table, batch) == "spooled"
    await offline.close()

    await erase(database_url, user)

    replaying = LogWriter(database_url, WriterSettings(), tmp_path / "spool")
    await replaying.start()
    try:
        await asyncio.wait_for(replaying.drained(), GUARD_S)
    finally:
        await replaying.close()
    await assert_erased(db, key, rows)


async def test_erasure_reaches_rows_queued_in_a_writer(database_url, db, tmp_path) -> None:
    user = f"erase-queued-{uuid.uuid4().hex[:8]}"
    key = USER_KEYS.consented(user)
    rows = user_rows(user, await create_campaign(db, pricing="cpc"))
    writer = LogWriter(database_url, WriterSettings(flush_rows=10_000, flush_ms=600_000), tmp_path / "queued")
    await writer.start()
    try:
        for table, batch in rows.items():
            writer.write_nowait(table, batch)
        await erase(database_url, user)
        await asyncio.wait_for(writer.flush(), GUARD_S)
    finally:
        await writer.close()
    await assert_erased(db, key, rows)

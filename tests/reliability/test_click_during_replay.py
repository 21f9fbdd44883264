"""Second paragraph: the writer said it was `online` as soon as Postgres answered, before its spool
was replayed, so a click whose impression still waited in a spool was judged `no_impression`, in
this process and in every other one. While any writer replays a spool, stored rows are incomplete
and the click is judged by its token, as while Postgres is away."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from types import SimpleNamespace

import asyncpg
import pytest

from adserve.db.engine import asyncpg_dsn
from adserve.domain import Pricing
from adserve.events.tracking import Tracker
from adserve.events.writer import LogWriter
from adserve.settings import WriterSettings
from adserve.signing.tokens import TokenKind, TrackingClaims, TrackingSigner
from tests.integration.events.rows import UNREACHABLE_URL, create_campaign, impression_row
from tests.integration.serving.test_tracking import BROWSER

GUARD_S = 20.0
IMPRESSION_PRICE = 0.004


def writer(url: str, spool_dir) -> LogWriter:
    return LogWriter(url, WriterSettings(flush_rows=50, flush_ms=20), spool_dir)


@pytest.fixture
async def db(database_url: str):
    connection = await asyncpg.connect(**asyncpg_dsn(database_url))
    yield connection
    await connection.close()


@pytest.fixture
async def pool(database_url: str):
    pool = await asyncpg.create_pool(**asyncpg_dsn(database_url), min_size=1, max_size=2)
    yield pool
    await pool.close()


async def test_clicks_are_judged_by_token_while_a_spool_replays(database_url, db, pool, tmp_path) -> None:
    campaign = await create_campaign(db, pricing="cpm")
    signer = TrackingSigner("replay test secret", 3600)
    # Two shown ads whose impressions one process spooled while Postgres was away.
    impressions = [impression_row(campaign, IMPRESSION_PRICE) for _ in range(2)]
    offline = writer(UNREACHABLE_URL, tmp_path / "replaying")
    await offline.start()
    assert await offline.write("impressions", impressions) == "spooled"
    await offline.close()

    # Postgres is back; that process's replay is held up (its impression needs the campaign row),
    # while another process is caught up.
    lock = await asyncpg.connect(**asyncpg_dsn(database_url))
    transaction = lock.transaction()
    await transaction.start()
    await lock.execute("SELECT 1 FROM campaigns WHERE id = $1 FOR UPDATE", campaign)
    replaying = writer(database_url, tmp_path / "replaying")
    other = writer(database_url, tmp_path / "other")
    await replaying.start()
    await other.start()
    try:
        stop = time.monotonic() + GUARD_S
        while not replaying.online and time.monotonic() < stop:
            await asyncio.sleep(0.02)  # polling interval of a condition wait
        assert replaying.online
        assert (
            await db.fetchval(
                "SELECT count(*) FROM impressions WHERE decision_id = ANY($1::uuid[])",
                [row[0] for row in impressions],
            )
            == 0
        )

        outcomes = []
        for row, process_writer in zip(impressions, (replaying, other), strict=True):
            tracker = Tracker(
                signer=signer,
                writer=process_writer,
                pool=pool,
                catalog=SimpleNamespace(catalog=SimpleNamespace(creatives={})),
                invalid_hits=None,
            )
            token = signer.sign(
                TrackingClaims(
                    kind=TokenKind.CLICK,
                    decision_id=row[0],
                    creative_id=1,
                    campaign_id=campaign,
                    placement_id=1,
                    user_key=None,
                    issued_at=int(datetime.now(UTC).timestamp()),
                    pricing=Pricing.CPM,
                    cost_micros=round(IMPRESSION_PRICE * 1_000_000),
                )
            )
            outcome = await asyncio.wait_for(tracker.click(token, BROWSER["user-agent"]), GUARD_S)
            outcomes.append((outcome.valid, outcome.reason))
        assert outcomes == [(True, None), (True, None)]
    finally:
        await transaction.rollback()
        await lock.close()
        await asyncio.wait_for(replaying.drained(), GUARD_S)
        await replaying.close()
        await other.close()
    stored = await db.fetch(
        "SELECT decision_id, valid FROM clicks WHERE decision_id = ANY($1::uuid[])",
        [row[0] for row in impressions],
    )
    assert sorted(row["valid"] for row in stored) == [True, True]
    assert isinstance(stored[0]["decision_id"], uuid.UUID)

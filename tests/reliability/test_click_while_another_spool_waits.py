"""Found by bench/fault_under_load.py's reading of the writer: after a Postgres outage, a process
that is caught up judged a click by the stored rows while the click's impression still waited in
another process's spool: that process had not yet noticed Postgres was back (its probe runs every
2 s), or had died and left its slot for adoption, so it held no replay lock. The click was stored
as `no_impression`: a valid click and its CPC charge lost. Processes on one host share the spool
folder (a slot each), so a writer also reads the other slots: while any holds a segment, stored
rows are incomplete and the click is judged by its token, as while a spool replays."""

from __future__ import annotations

import asyncio
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
CLICK_PRICE = 0.5


def writer(url: str, base, slot: int) -> LogWriter:
    return LogWriter(url, WriterSettings(flush_rows=50, flush_ms=20), base / f"slot-{slot}", adopt_from=base)


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


async def test_click_whose_impression_waits_in_another_slot_is_judged_by_its_token(
    database_url, db, pool, tmp_path
) -> None:
    campaign = await create_campaign(db, pricing="cpc")
    signer = TrackingSigner("other spool test secret", 3600)
    base = tmp_path / "spool"
    # Process B stored the impression in its spool slot: for B, Postgres is still away.
    impression = impression_row(campaign, 0.0)
    lagging = writer(UNREACHABLE_URL, base, 1)
    await lagging.start()
    judging = writer(database_url, base, 0)  # process A on the same host, caught up
    try:
        assert await lagging.write("impressions", [impression]) == "spooled"
        await judging.start()
        await asyncio.wait_for(judging.drained(), GUARD_S)
        tracker = Tracker(
            signer=signer,
            writer=judging,
            pool=pool,
            catalog=SimpleNamespace(catalog=SimpleNamespace(creatives={})),
            invalid_hits=None,
        )
        token = signer.sign(
            TrackingClaims(
                kind=TokenKind.CLICK,
                decision_id=impression[0],
                creative_id=1,
                campaign_id=campaign,
                placement_id=1,
                user_key=None,
                issued_at=int(datetime.now(UTC).timestamp()),
                pricing=Pricing.CPC,
                cost_micros=round(CLICK_PRICE * 1_000_000),
            )
        )
        outcome = await asyncio.wait_for(tracker.click(token, BROWSER["user-agent"]), GUARD_S)
        assert (outcome.valid, outcome.reason) == (True, None)
    finally:
        await judging.close()
        await lagging.close()

    # B notices Postgres: its slot is replayed, and the click stands, charged once.
    replaying = writer(database_url, base, 1)
    await replaying.start()
    try:
        await asyncio.wait_for(replaying.drained(), GUARD_S)
    finally:
        await replaying.close()
    assert await db.fetchval("SELECT count(*) FROM impressions WHERE decision_id = $1", impression[0]) == 1
    clicks = await db.fetch(
        "SELECT valid, invalid_reason, cost FROM clicks WHERE decision_id = $1", impression[0]
    )
    assert [(row["valid"], row["invalid_reason"], float(row["cost"])) for row in clicks] == [
        (True, None, CLICK_PRICE)
    ]
    assert (
        float(await db.fetchval("SELECT spend_total FROM campaigns WHERE id = $1", campaign)) == CLICK_PRICE
    )

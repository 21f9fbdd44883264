"""The log writer while Postgres goes away mid-stream and comes back, on a private server.

These tests stop and restart Postgres, so they use their own embedded server even when
ADSERVE_TEST_DATABASE_URL names a shared one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest

from adserve.db.engine import asyncpg_dsn
from adserve.events.writer import LogWriter
from adserve.settings import WriterSettings
from tests.integration.events.rows import click_row, create_campaign, decision_row, event_row, impression_row
from tests.private_postgres import PrivatePostgres, private_postgres_server

pytestmark = pytest.mark.slow

GUARD_S = 60
PRODUCERS = 4
IMPRESSION_COST = 0.01
CLICK_COST = 0.05


@pytest.fixture(scope="module")
def private_postgres():
    yield from private_postgres_server("adserve-faults-pg-")


@contextlib.asynccontextmanager
async def connect(server: PrivatePostgres) -> AsyncIterator[asyncpg.Connection]:
    """A fresh connection: any opened before a restart is gone after it."""
    connection = await asyncpg.connect(**asyncpg_dsn(server.url))
    try:
        yield connection
    finally:
        await connection.close()


def writer_for(server: PrivatePostgres, spool_dir: Path) -> LogWriter:
    return LogWriter(server.url, WriterSettings(flush_rows=50, flush_ms=20), spool_dir)


@dataclass
class Stream:
    """What the producers wrote, and signals the test waits on."""

    rows: dict[str, dict[object, tuple]] = field(default_factory=lambda: defaultdict(dict))
    outcomes: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    stored_rows: int = 0
    spooled_rows: int = 0
    stored_threshold: int = 0
    stored_enough: asyncio.Event = field(default_factory=asyncio.Event)
    spooled_enough: asyncio.Event = field(default_factory=asyncio.Event)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def record(self, table: str, rows: list[tuple], outcome: str) -> None:
        for row in rows:
            self.rows[table][row[0]] = row
        self.outcomes[outcome] += 1
        if outcome == "stored":
            self.stored_rows += len(rows)
            if self.stored_rows >= self.stored_threshold:
                self.stored_enough.set()
        elif outcome == "spooled":
            self.spooled_rows += len(rows)
            if self.spooled_rows >= 100:
                self.spooled_enough.set()

    def wait_for_stored(self, more: int) -> asyncio.Event:
        self.stored_threshold = self.stored_rows + more
        self.stored_enough.clear()
        return self.stored_enough


async def produce(writer: LogWriter, stream: Stream, cpm: int, cpc: int, producer: int) -> None:
    """One page view after another: a decision, behaviour events, an impression (retried every
    fifth time), and for every other decision a click, sometimes double-clicked."""
    sequence = 0
    while not stream.stop.is_set():
        sequence += 1
        decision = decision_row(campaign_id=cpm, user_id=f"u-{producer}")
        writes = [
            ("decisions", [decision]),
            ("user_events", [event_row(user_id=f"u-{producer}") for _ in range(3)]),
            ("impressions", [impression_row(cpm, IMPRESSION_COST, decision_id=decision[0])]),
        ]
        if sequence % 5 == 0:
            writes.append(("impressions", writes[2][1]))
        if sequence % 2 == 0:
            writes.append(("clicks", [click_row(cpc, decision[0], CLICK_COST)]))
            if sequence % 4 == 0:
                writes.append(("clicks", [click_row(cpc, decision[0], CLICK_COST)]))
        outcomes = await asyncio.gather(*(writer.write(table, rows) for table, rows in writes))
        for (table, rows), outcome in zip(writes, outcomes, strict=True):
            stream.record(table, rows, outcome)


async def assert_stored_exactly_once(db: asyncpg.Connection, stream: Stream, cpm: int, cpc: int) -> None:
    keys = {"impressions": "decision_id"}
    for table, rows in stream.rows.items():
        key = keys.get(table, "id")
        present = await db.fetchval(f"SELECT count(*) FROM {table} WHERE {key} = ANY($1::uuid[])", list(rows))
        assert present == len(rows), table
    clicked_decisions = {row[1] for row in stream.rows["clicks"].values()}
    valid = await db.fetchval(
        "SELECT count(*) FROM clicks WHERE valid AND id = ANY($1::uuid[])", list(stream.rows["clicks"])
    )
    assert valid == len(clicked_decisions)
    spend = dict(
        await db.fetch(
            "SELECT id, spend_total::float8 FROM campaigns WHERE id = ANY($1::bigint[])", [cpm, cpc]
        )
    )
    assert spend[cpm] == pytest.approx(IMPRESSION_COST * len(stream.rows["impressions"]))
    assert spend[cpc] == pytest.approx(CLICK_COST * len(clicked_decisions))


async def test_stream_survives_postgres_stopping_and_returning(private_postgres, tmp_path):
    async with connect(private_postgres) as db:
        cpm, cpc = await create_campaign(db, pricing="cpm"), await create_campaign(db, pricing="cpc")
    writer = writer_for(private_postgres, tmp_path / "spool")
    await writer.start()
    stream = Stream()
    stored_before_stop = stream.wait_for_stored(200)
    producers = [asyncio.create_task(produce(writer, stream, cpm, cpc, n)) for n in range(PRODUCERS)]
    try:
        await asyncio.wait_for(stored_before_stop.wait(), GUARD_S)
        await asyncio.to_thread(private_postgres.stop)
        await asyncio.wait_for(stream.spooled_enough.wait(), GUARD_S)
        await asyncio.to_thread(private_postgres.start)
        await asyncio.wait_for(writer.drained(), GUARD_S)
        await asyncio.wait_for(stream.wait_for_stored(200).wait(), GUARD_S)
    finally:
        stream.stop.set()
        await asyncio.gather(*producers)
    await asyncio.wait_for(writer.flush(), GUARD_S)
    await asyncio.wait_for(writer.drained(), GUARD_S)
    await writer.close()

    assert set(stream.outcomes) == {"stored", "spooled"}
    assert writer.counters.replayed_rows > 0 and writer.counters.dropped_rows == 0
    assert writer.spool_bytes == 0
    async with connect(private_postgres) as db:
        await assert_stored_exactly_once(db, stream, cpm, cpc)


async def test_rows_spooled_by_a_closed_writer_arrive_once_through_the_next(private_postgres, tmp_path):
    async with connect(private_postgres) as db:
        cpm = await create_campaign(db, pricing="cpm")
    spool = tmp_path / "spool"
    events = [event_row() for _ in range(20)]
    impressions = [impression_row(cpm, IMPRESSION_COST) for _ in range(10)]

    first = writer_for(private_postgres, spool)
    await first.start()
    assert await first.write("impressions", impressions[:5]) == "stored"
    await asyncio.to_thread(private_postgres.stop)
    try:
        assert await first.write("user_events", events) == "spooled"
        assert await first.write("impressions", impressions) == "spooled"  # five of them a retry
        await first.close()
        assert first.spool_bytes > 0
    finally:
        await asyncio.to_thread(private_postgres.start)

    second = writer_for(private_postgres, spool)
    await second.start()
    try:
        await asyncio.wait_for(second.drained(), GUARD_S)
        assert second.counters.replayed_rows == 30
        assert second.counters.duplicate_rows == 5
    finally:
        await second.close()
    async with connect(private_postgres) as db:
        ids = [row[0] for row in events]
        assert await db.fetchval("SELECT count(*) FROM user_events WHERE id = ANY($1::uuid[])", ids) == 20
        charged = await db.fetchval("SELECT spend_total::float8 FROM campaigns WHERE id = $1", cpm)
    assert charged == pytest.approx(IMPRESSION_COST * 10)

"""The writer's own binary COPY encoding (db/copy_binary.py) stores exactly what asyncpg's
encoding stores, for every log table and the edge values of each column type; values it does not
write send the batch through asyncpg's encoding."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import numpy as np
import pytest

from adserve.db import copy_binary
from adserve.db.rows import WRITABLE_TABLES, columns, make_row
from adserve.events import writer as writer_module
from adserve.events.writer import _binary_copy, _init_connection

from .rows import decision_row

EDGE_NUMERICS = [
    0.0,
    1.0,
    -1.0,
    0.1,
    1e-6,
    123456789012.123456,
    -0.000001,
    2.5e-7,
    1234.5,
    Decimal("10000.0001"),
    7,
]


def rows_for(table: str) -> list[tuple]:
    now = datetime.now(UTC)
    old = datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)  # before Postgres's epoch
    other_zone = datetime(2026, 3, 29, 1, 30, tzinfo=timezone(timedelta(hours=-7)))
    if table == "user_events":
        return [
            make_row(
                table,
                id=uuid.uuid4(),
                user_id=f"ü-{i}",
                event_type="search",
                ts=ts,
                item_id=None if i else "sku-1",
                category="schuhe & 靴",
                price=price,
                query="rote \\ schuhe\t\n",
                received_at=now,
            )
            for i, (ts, price) in enumerate(
                zip([now, old, other_zone] * 4, [None, *EDGE_NUMERICS], strict=False)
            )
        ]
    if table == "decisions":
        return [
            decision_row(),
            decision_row(ts=old, user_id=None, propensity=None, chosen_creative_id=None, campaign_id=None),
            decision_row(candidate_ids=[], scores=[], pmf=[], context={}),
            decision_row(
                candidate_ids=[2**62, -5, 0],
                scores=[float("inf"), -0.0, 1e-310],
                pmf=np.array([0.25, 0.5, 0.25]),
                context={"deep": [[1, 2], {"ü": "\\n"}], "n": None},
                reserved=12.345678,
                propensity=np.float64(0.5),
            ),
            *(decision_row(reserved=value) for value in EDGE_NUMERICS),
        ]
    if table == "impressions":
        return [
            make_row(
                table,
                decision_id=uuid.uuid4(),
                ts=now,
                creative_id=1,
                campaign_id=np.int64(2),
                placement_id=3,
                user_id=None,
                cost=value,
                unbilled=0.0,
            )
            for value in EDGE_NUMERICS
        ]
    if table == "clicks":
        return [
            make_row(
                table,
                id=uuid.uuid4(),
                decision_id=str(uuid.uuid4()),
                ts=other_zone,
                creative_id=1,
                campaign_id=2,
                placement_id=3,
                user_id="u",
                valid=valid,
                invalid_reason=None if valid else "bot",
                cost=0.25,
            )
            for valid in (True, False)
        ]
    if table == "conversions":
        return [
            make_row(
                table,
                id=uuid.uuid4(),
                decision_id=uuid.uuid4(),
                click_id=None,
                ts=now,
                user_id="u",
                campaign_id=4,
                value=value,
            )
            for value in EDGE_NUMERICS
        ]
    assert table == "rewards"
    return [
        make_row(
            table,
            decision_id=uuid.uuid4(),
            decision_ts=now,
            clicked=bool(i % 2),
            conversion_value=value,
            revenue=value,
            joined_at=now,
        )
        for i, value in enumerate(EDGE_NUMERICS)
    ]


@pytest.mark.parametrize("table", WRITABLE_TABLES)
async def test_binary_copy_stores_what_asyncpg_stores(db, table) -> None:
    await _init_connection(db)
    rows = rows_for(table)
    stream = await _binary_copy(table, rows)
    assert stream is not None, f"{table}: the binary encoder refused a row"
    async with db.transaction():
        await db.execute(f"CREATE TEMP TABLE ours (LIKE {table}) ON COMMIT DROP")
        await db.execute(f"CREATE TEMP TABLE theirs (LIKE {table}) ON COMMIT DROP")
        await db.copy_to_table("ours", source=memoryview(stream), columns=columns(table), format="binary")
        await db.copy_records_to_table("theirs", records=rows, columns=columns(table))
        ours = [tuple(r) for r in await db.fetch("SELECT * FROM ours")]
        theirs = [tuple(r) for r in await db.fetch("SELECT * FROM theirs")]
    assert len(ours) == len(rows)
    assert ours == theirs


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("ts", datetime(2026, 1, 1)),  # naive: asyncpg's rule applies
        ("candidate_ids", [1, None, 3]),
        ("candidate_ids", [1.5, 2.0]),
        ("candidate_ids", [[1, 2], [3, 4]]),
        ("candidate_ids", [2**70]),
        ("reserved", float("nan")),
        ("placement_id", 1.0),
        ("explored", 1),
    ],
)
async def test_a_value_the_encoder_does_not_write_sends_the_batch_through_asyncpg(column, value) -> None:
    rows = [decision_row(), decision_row(**{column: value})]
    assert await _binary_copy("decisions", rows) is None
    with pytest.raises(copy_binary.Unencodable):
        copy_binary.encode_rows("decisions", rows)


async def test_binary_encoding_hands_the_event_loop_back_between_chunks() -> None:
    rows = [decision_row() for _ in range(4 * writer_module.BINARY_CHUNK_ROWS)]
    turns = 0
    encoding = True

    async def other_request() -> None:
        nonlocal turns
        while encoding:
            turns += 1
            await asyncio.sleep(0)

    other = asyncio.create_task(other_request())
    await asyncio.sleep(0)
    before = turns
    stream = await _binary_copy("decisions", rows)
    encoding = False
    await other
    assert stream is not None
    assert turns - before >= 3  # one turn between each of the four chunks


async def stage_bytes(db, table: str) -> int:
    """On-disk size of every session's stage table of `table` (temp tables are visible in the
    catalogue to other sessions)."""
    return await db.fetchval(
        "SELECT coalesce(sum(pg_relation_size(c.oid)), 0) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relname = $1 AND n.nspname LIKE 'pg_temp%'",
        f"_stage_{table}",
    )


async def test_each_batch_stages_only_its_own_rows_and_the_stage_stays_small(
    make_writer, db, monkeypatch
) -> None:
    """The stage tables keep their rows past the commit (ON COMMIT DELETE ROWS truncated all six
    on every commit): each transaction empties its stage first, and truncates it once
    STAGE_TRUNCATE_ROWS rows went through, so the table stays small (DELETE alone leaves every
    row's space behind: nothing vacuums a temp table)."""
    monkeypatch.setattr(writer_module, "STAGE_TRUNCATE_ROWS", 12)
    writer = await make_writer(flush_rows=10_000, flush_ms=600_000)
    before = await stage_bytes(db, "decisions")
    for _ in range(30):
        rows = [decision_row(candidate_ids=list(range(100)), scores=[0.5] * 100) for _ in range(4)]
        assert await asyncio.wait_for(writer.write("decisions", rows), 10) == "stored"
        stored = await db.fetchval(
            "SELECT count(*) FROM decisions WHERE id = ANY($1::uuid[])", [row[0] for row in rows]
        )
        assert stored == 4
    assert writer.counters.duplicate_rows == 0
    assert writer.counters.rows_written["decisions"] == 120
    # 120 rows of ~1.8 kB (~240 kB) went through; truncation keeps at most 16 on disk per connection
    grown = await stage_bytes(db, "decisions") - before
    assert grown <= 8 * 8192, grown


def test_decision_rows_commit_without_waiting_for_the_wal_flush_and_money_waits() -> None:
    """Decision rows (the bulk, and each capped serve waits for its commit) commit with
    synchronous_commit off; rows that move money or answer `durability: stored` keep the
    durable commit. Every flush opens with BEGIN, so the setting is LOCAL to its transaction."""
    opening = writer_module._opening_sql("decisions", truncate=False)
    assert opening.startswith("BEGIN;") and "SET LOCAL synchronous_commit = off" in opening
    for table in ("impressions", "clicks", "conversions", "user_events", "rewards"):
        assert "synchronous_commit" not in writer_module._opening_sql(table, truncate=False)
    assert "TRUNCATE _stage_decisions" in writer_module._opening_sql("decisions", truncate=True)


async def test_an_async_commit_decision_is_visible_to_other_sessions_when_the_write_returns(
    make_writer, db
) -> None:
    writer = await make_writer(flush_rows=10_000, flush_ms=600_000)
    row = decision_row()
    assert await asyncio.wait_for(writer.write("decisions", [row]), 10) == "stored"
    assert await db.fetchval("SELECT count(*) FROM decisions WHERE id = $1", row[0]) == 1

"""The log writer on real Postgres: group commit, flush triggers, idempotency, spend, clicks,
bad rows, and the spool (bounded, durable, replayed by the next writer)."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from datetime import UTC, date, datetime, timedelta

import pytest

from adserve.db.rows import columns, make_row
from adserve.events.writer import FLUSHES_PER_TABLE, WRITE_BARRIER_KEY, RowsRejectedError, SpoolFullError
from tests.integration.events.rows import (
    UNREACHABLE_URL,
    click_row,
    create_campaign,
    decision_row,
    event_row,
    impression_row,
)

# A guard against hangs, not a synchronisation: every wait below is on a future or an event.
GUARD_S = 10


async def count(db, table: str, ids: list[uuid.UUID], key: str = "id") -> int:
    return await db.fetchval(f"SELECT count(*) FROM {table} WHERE {key} = ANY($1::uuid[])", ids)


async def spend(db, campaign_id: int):
    return await db.fetchrow(
        "SELECT spend_total::float8 AS total, spend_today::float8 AS today, spend_day AS day "
        "FROM campaigns WHERE id = $1",
        campaign_id,
    )


def test_row_helper_orders_columns_and_fills_defaults():
    row = make_row(
        "impressions",
        decision_id=uuid.uuid4(),
        ts=datetime.now(UTC),
        creative_id=1,
        campaign_id=2,
        placement_id=3,
    )
    assert columns("impressions") == (
        "decision_id",
        "ts",
        "creative_id",
        "campaign_id",
        "placement_id",
        "user_id",
        "cost",
        "unbilled",
    )
    assert row[5] is None and row[6] == 0.0 and row[7] == 0.0
    received_at = make_row(
        "user_events", id=uuid.uuid4(), user_id="u", event_type="search", ts=datetime.now(UTC)
    )[-1]
    assert received_at.tzinfo is not None
    with pytest.raises(ValueError, match="required"):
        make_row("user_events", id=uuid.uuid4())
    with pytest.raises(ValueError, match="no column"):
        make_row(
            "user_events", id=uuid.uuid4(), user_id="u", event_type="x", ts=datetime.now(UTC), colour="red"
        )


async def test_concurrent_writes_share_one_copy(make_writer, db):
    writer = await make_writer(flush_rows=10_000, flush_ms=100)
    rows = [event_row() for _ in range(60)]
    outcomes = await asyncio.wait_for(
        asyncio.gather(*(writer.write("user_events", [row]) for row in rows)), GUARD_S
    )
    assert set(outcomes) == {"stored"}
    assert writer.counters.batches < len(rows)
    assert writer.counters.rows_written["user_events"] == len(rows)
    assert await count(db, "user_events", [row[0] for row in rows]) == len(rows)
    assert writer.pending == 0


async def test_awaited_writes_that_arrive_during_a_flush_share_the_next_commit(make_writer, db):
    """At most FLUSHES_PER_TABLE flushes of a table at a time: rows awaited while they are in
    flight gather into one more COPY and commit instead of a transaction each."""
    writer = await make_writer(flush_rows=10_000, flush_ms=600_000)
    await db.execute("SELECT pg_advisory_lock($1)", WRITE_BARRIER_KEY)  # holds the first flush
    try:
        first = asyncio.create_task(writer.write("user_events", [event_row()]))
        while not await db.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        ):  # a condition: the first flush waits on the barrier
            await asyncio.sleep(0.002)  # polling interval of a condition wait
        later = []
        for _ in range(5):
            later.append(asyncio.create_task(writer.write("user_events", [event_row()])))
            for _ in range(5):
                await asyncio.sleep(0)  # loop turns, not time: a writer free to flush starts one here
    finally:
        await db.execute("SELECT pg_advisory_unlock($1)", WRITE_BARRIER_KEY)
    outcomes = await asyncio.wait_for(asyncio.gather(first, *later), GUARD_S)
    assert outcomes == ["stored"] * 6
    assert writer.counters.batches == FLUSHES_PER_TABLE + 1  # the held ones, then all the rest
    assert writer.counters.rows_written["user_events"] == 6


async def test_flush_by_rows_does_not_wait_for_the_timer(make_writer, db):
    writer = await make_writer(flush_rows=5, flush_ms=600_000)
    rows = [event_row() for _ in range(5)]
    assert await asyncio.wait_for(writer.write("user_events", rows), GUARD_S) == "stored"
    assert await count(db, "user_events", [row[0] for row in rows]) == 5


async def test_flush_by_time_below_the_row_threshold(make_writer, db):
    writer = await make_writer(flush_rows=10_000, flush_ms=30)
    loop = asyncio.get_running_loop()
    started = loop.time()
    row = event_row()
    writer.write_nowait("user_events", [row])
    while writer.pending and loop.time() - started < GUARD_S:
        await asyncio.sleep(0.002)  # polling interval of a condition wait
    assert writer.pending == 0
    assert loop.time() - started >= 0.03
    assert await count(db, "user_events", [row[0]]) == 1


async def test_an_awaited_write_is_committed_at_once(make_writer, db):
    """Group commit: a caller waiting for durability does not wait for flush_ms."""
    writer = await make_writer(flush_rows=10_000, flush_ms=600_000)
    row = event_row()
    assert await asyncio.wait_for(writer.write("user_events", [row]), 10) == "stored"
    assert await count(db, "user_events", [row[0]]) == 1


async def test_write_nowait_and_flush(make_writer, db):
    writer = await make_writer(flush_rows=10_000, flush_ms=600_000)
    rows = [event_row() for _ in range(7)]
    writer.write_nowait("user_events", rows)
    assert writer.pending == 7
    await asyncio.wait_for(writer.flush(), GUARD_S)
    assert writer.pending == 0
    assert await count(db, "user_events", [row[0] for row in rows]) == 7


async def test_same_rows_twice_are_stored_once(make_writer, db):
    writer = await make_writer()
    rows = [event_row() for _ in range(4)] + [decision_row()]
    events, decision = rows[:4], rows[4:]
    for _ in range(2):
        assert await writer.write("user_events", events) == "stored"
        assert await writer.write("decisions", decision) == "stored"
    # And twice within one batch.
    doubled = event_row()
    assert set(await asyncio.gather(*(writer.write("user_events", [doubled]) for _ in range(2)))) == {
        "stored"
    }
    assert await count(db, "user_events", [row[0] for row in [*events, doubled]]) == 5
    assert await count(db, "decisions", [decision[0][0]]) == 1
    assert writer.counters.duplicate_rows == 6


async def test_unknown_table_and_wrong_width_fail_fast(make_writer):
    writer = await make_writer()
    with pytest.raises(ValueError, match="not one of"):
        await writer.write("campaigns", [(1,)])
    with pytest.raises(ValueError, match="columns"):
        await writer.write("user_events", [(uuid.uuid4(), "u")])


async def test_impression_spend_is_charged_once_per_inserted_row(make_writer, db):
    campaign = await create_campaign(db)
    writer = await make_writer(flush_ms=50)
    rows = [impression_row(campaign, 0.25) for _ in range(4)]
    await asyncio.gather(*(writer.write("impressions", [row]) for row in rows))
    await writer.write("impressions", rows)  # a replay of all four
    charged = await spend(db, campaign)
    assert charged["total"] == pytest.approx(1.0)
    assert charged["today"] == pytest.approx(1.0)
    assert charged["day"] == datetime.now(UTC).date()
    assert await count(db, "impressions", [row[0] for row in rows], key="decision_id") == 4


async def test_spend_today_rolls_over_on_the_campaigns_local_day(make_writer, db):
    campaign = await create_campaign(db, timezone="Pacific/Auckland")
    # 2024-03-10 11:30 UTC is 2024-03-11 00:30 in Auckland (NZDT, UTC+13).
    await db.execute(
        "UPDATE campaigns SET spend_total = 10, spend_today = 10, spend_day = '2024-03-10' WHERE id = $1",
        campaign,
    )
    writer = await make_writer()
    late_evening = impression_row(campaign, 0.5, ts=datetime(2024, 3, 10, 10, 30, tzinfo=UTC))  # 23:30 local
    assert await writer.write("impressions", [late_evening]) == "stored"
    charged = await spend(db, campaign)
    assert (charged["total"], charged["today"], charged["day"]) == (10.5, 10.5, date(2024, 3, 10))

    next_day = impression_row(campaign, 2.0, ts=datetime(2024, 3, 10, 11, 30, tzinfo=UTC))
    assert await writer.write("impressions", [next_day]) == "stored"
    charged = await spend(db, campaign)
    assert (charged["total"], charged["today"], charged["day"]) == (12.5, 2.0, date(2024, 3, 11))

    # A late row of the previous local day counts toward the total, not toward today.
    late = impression_row(campaign, 1.0, ts=datetime(2024, 3, 10, 9, 0, tzinfo=UTC))
    assert await writer.write("impressions", [late]) == "stored"
    charged = await spend(db, campaign)
    assert (charged["total"], charged["today"], charged["day"]) == (13.5, 2.0, date(2024, 3, 11))


async def test_duplicate_valid_click_is_kept_as_invalid_and_never_charged(make_writer, db):
    campaign = await create_campaign(db, pricing="cpc")
    writer = await make_writer()
    decision, other_decision = uuid.uuid4(), uuid.uuid4()
    first = click_row(campaign, decision, 0.4)
    assert await writer.write("clicks", [first]) == "stored"
    second = click_row(campaign, decision, 0.4)  # a later batch
    same_batch = [click_row(campaign, other_decision, 0.4), click_row(campaign, other_decision, 0.4)]
    bot = click_row(campaign, uuid.uuid4(), 0.4, valid=False)
    assert await writer.write("clicks", [second, *same_batch, bot]) == "stored"
    assert await writer.write("clicks", [first, second]) == "stored"  # replays change nothing

    stored = {
        record["id"]: record
        for record in await db.fetch(
            "SELECT id, valid, invalid_reason, cost::float8 AS cost FROM clicks WHERE campaign_id = $1",
            campaign,
        )
    }
    assert len(stored) == 5
    assert (stored[first[0]]["valid"], stored[first[0]]["cost"]) == (True, 0.4)
    assert (stored[second[0]]["valid"], stored[second[0]]["invalid_reason"], stored[second[0]]["cost"]) == (
        False,
        "duplicate",
        0.0,
    )
    assert sorted(stored[row[0]]["invalid_reason"] or "" for row in same_batch) == ["", "duplicate"]
    assert (stored[bot[0]]["invalid_reason"], stored[bot[0]]["cost"]) == ("bot", 0.0)
    assert (await spend(db, campaign))["total"] == pytest.approx(0.8)


async def test_rows_postgres_rejects_are_dropped_alone(make_writer, db, caplog):
    writer = await make_writer(flush_ms=50)
    good = [event_row() for _ in range(4)]
    bad = event_row(user_id=None)  # NOT NULL
    too_long = event_row(user_id="u" * 65)  # varchar(64)
    with caplog.at_level(logging.ERROR, logger="adserve.events.writer"):
        outcomes = await asyncio.gather(
            writer.write("user_events", good[:2]),
            writer.write("user_events", [bad, too_long]),
            writer.write("user_events", good[2:]),
            return_exceptions=True,
        )
    assert outcomes[0] == outcomes[2] == "stored"
    assert isinstance(outcomes[1], RowsRejectedError)
    assert writer.counters.dropped_rows == 2
    assert await count(db, "user_events", [row[0] for row in good]) == 4
    assert "u" * 65 not in caplog.text and "user_events" in caplog.text


async def test_unreachable_postgres_spools_and_a_full_spool_refuses(make_writer, caplog, tmp_path):
    with caplog.at_level(logging.WARNING, logger="adserve.events.writer"):
        writer = await make_writer(url=UNREACHABLE_URL, spool_max_bytes=600)
        assert not writer.online
        outcomes: list[object] = []
        for _ in range(12):
            try:
                outcomes.append(await writer.write("user_events", [event_row()]))
            except SpoolFullError as refusal:
                outcomes.append(refusal)
    assert outcomes[0] == "spooled"
    refused = [outcome for outcome in outcomes if isinstance(outcome, SpoolFullError)]
    assert refused and refused[0].retry_after_s > 0
    assert set(outcomes) - set(refused) == {"spooled"}
    assert 0 < writer.spool_bytes <= 600
    assert writer.counters.spooled_rows + writer.counters.dropped_rows == 12
    full_lines = [r for r in caplog.records if r.levelno == logging.ERROR and "full" in r.getMessage()]
    assert len(full_lines) == 1


async def test_spool_survives_the_process_and_is_replayed_once(make_writer, db, tmp_path):
    spool = tmp_path / "shared-spool"
    events = [event_row() for _ in range(3)]
    decision = decision_row(ts=datetime(2024, 5, 1, 12, 0, tzinfo=UTC), user_id=None, propensity=None)
    campaign = await create_campaign(db)
    impressions = [impression_row(campaign, 0.1) for _ in range(3)]

    offline = await make_writer(url=UNREACHABLE_URL, spool_dir=spool)
    assert await offline.write("user_events", events) == "spooled"
    assert await offline.write("decisions", [decision]) == "spooled"
    assert await offline.write("impressions", impressions) == "spooled"
    assert await offline.write("impressions", impressions[:1]) == "spooled"  # a client retry
    await offline.close()

    online = await make_writer(spool_dir=spool)
    await asyncio.wait_for(online.drained(), GUARD_S)
    assert online.spool_bytes == 0 and online.counters.replayed_rows == 8
    assert await count(db, "user_events", [row[0] for row in events]) == 3
    stored = await db.fetchrow("SELECT * FROM decisions WHERE id = $1", decision[0])
    # The check connection has no JSONB codec, so the context comes back as text.
    values = list(stored.values())
    values[5] = json.loads(values[5])
    assert tuple(values) == decision
    assert (await spend(db, campaign))["total"] == pytest.approx(0.3)


async def test_a_second_writer_cannot_share_a_spool_folder(make_writer, tmp_path):
    from adserve.events.spool import SpoolLockedError

    await make_writer(spool_dir=tmp_path / "one")
    with pytest.raises(SpoolLockedError):
        await make_writer(spool_dir=tmp_path / "one")


async def test_close_flushes_queued_rows(make_writer, db):
    writer = await make_writer(flush_rows=10_000, flush_ms=600_000)
    rows = [event_row() for _ in range(3)]
    writer.write_nowait("user_events", rows)
    await writer.close()
    assert await count(db, "user_events", [row[0] for row in rows]) == 3
    with pytest.raises(RuntimeError):
        writer.write_nowait("user_events", rows)


def test_day_boundary_arithmetic_used_above():
    assert (datetime(2024, 3, 10, 11, 30, tzinfo=UTC) + timedelta(hours=13)).date() == date(2024, 3, 11)


async def test_a_copy_hands_the_event_loop_back_every_few_rows(make_writer, db):
    """COPY encodes rows on the event loop as it draws them: the writer's row source lets other
    tasks run every COPY_YIELD_ROWS rows, so a request arriving during a big flush waits for a few
    rows' encoding, not the whole batch's. Checked on the order of events: the rows COPY drew and
    the turns another task got between them."""
    from adserve.events import writer as writer_module

    rows = [decision_row() for _ in range(5 * writer_module.COPY_YIELD_ROWS)]
    order: list[str] = []
    drawing = True

    async def other_request() -> None:
        while drawing:
            order.append("other")
            await asyncio.sleep(0)

    other = asyncio.create_task(other_request())
    await asyncio.sleep(0)
    async for row in writer_module._yielding(rows):
        order.append(f"row {rows.index(row)}")
    drawing = False
    await other
    drawn = [i for i, item in enumerate(order) if item.startswith("row")]
    # between consecutive chunks of COPY_YIELD_ROWS rows, the other task ran
    for chunk in range(1, 5):
        before, after = (
            drawn[chunk * writer_module.COPY_YIELD_ROWS - 1],
            drawn[chunk * writer_module.COPY_YIELD_ROWS],
        )
        assert "other" in order[before:after], order[before : after + 1]
    # and a batch drawn this way is stored whole
    writer = await make_writer(flush_rows=10_000, flush_ms=600_000)
    assert await asyncio.wait_for(writer.write("decisions", rows), GUARD_S) == "stored"
    assert await count(db, "decisions", [row[0] for row in rows]) == len(rows)

"""Partitioned logs: the migration keeps every row both ways, partitions are made ahead and
dropped whole past retention, and the hot-path and job queries prune partitions."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from adserve.db.engine import asyncpg_dsn
from adserve.db.migrate import downgrade, upgrade
from adserve.jobs.partitions import (
    PARTITIONED_TABLES,
    ensure_partitions,
    list_partitions,
    purge_expired,
    purge_table,
)
from adserve.settings import RetentionSettings

BEFORE_PARTITIONING = "6476fa7db70a"
NOW = datetime.now(UTC)
# Rows months old (migrated into monthly partitions), today's, and far ahead (the default partition).
AGES = [timedelta(days=400), timedelta(days=40), timedelta(days=2), timedelta(0), timedelta(days=-60)]


async def _connect(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(**asyncpg_dsn(url))


async def _seed(connection: asyncpg.Connection) -> dict[str, int]:
    """Rows of every log table at each age, with a second (invalid) click per decision."""
    for age in AGES:
        ts = NOW - age
        decision_id = uuid.uuid4()
        await connection.execute(
            "INSERT INTO user_events (id, user_id, event_type, ts) VALUES ($1, 'u-1', 'product_view', $2)",
            uuid.uuid4(),
            ts,
        )
        await connection.execute(
            "INSERT INTO decisions (id, ts, request_id, placement_id, user_id, context, candidate_ids, "
            "scores, pmf, chosen_creative_id, campaign_id, propensity, scorer_version, policy_version) "
            "VALUES ($1, $2, $3, 1, 'u-1', $4::jsonb, '{7}', '{0.1}', '{1.0}', 7, 3, 1.0, 's', 'p')",
            decision_id,
            ts,
            uuid.uuid4(),
            json.dumps({"page_type": "home"}),
        )
        await connection.execute(
            "INSERT INTO impressions (decision_id, ts, creative_id, campaign_id, placement_id, user_id) "
            "VALUES ($1, $2, 7, 3, 1, 'u-1')",
            decision_id,
            ts,
        )
        for valid in (True, False):
            await connection.execute(
                "INSERT INTO clicks (id, decision_id, ts, creative_id, campaign_id, placement_id, user_id, "
                "valid, invalid_reason) VALUES ($1, $2, $3, 7, 3, 1, 'u-1', $4, $5)",
                uuid.uuid4(),
                decision_id,
                ts + timedelta(seconds=5),
                valid,
                None if valid else "duplicate",
            )
    return await _counts(connection)


async def _counts(connection: asyncpg.Connection) -> dict[str, int]:
    return {table: await connection.fetchval(f"SELECT count(*) FROM {table}") for table in PARTITIONED_TABLES}


async def _is_partitioned(connection: asyncpg.Connection, table: str) -> bool:
    return await connection.fetchval("SELECT relkind = 'p' FROM pg_class WHERE relname = $1", table)


async def test_migration_round_trip_keeps_every_row(fresh_database) -> None:
    url = await fresh_database()
    await asyncio.to_thread(upgrade, url, BEFORE_PARTITIONING)
    connection = await _connect(url)
    try:
        seeded = await _seed(connection)
        assert seeded == {"user_events": 5, "decisions": 5, "impressions": 5, "clicks": 10}

        await asyncio.to_thread(upgrade, url)
        assert await _counts(connection) == seeded
        for table in PARTITIONED_TABLES:
            assert await _is_partitioned(connection, table)
            partitions = await list_partitions(connection, table)
            # 400 days back to today: one partition per month (14); today and 7 days ahead; default
            assert 21 <= len(partitions) <= 24
            assert partitions[-1].is_default
            in_default = await connection.fetchval(f"SELECT count(*) FROM {table}_default")
            assert in_default == (2 if table == "clicks" else 1)  # the row 60 days ahead
        print(f"upgrade: {seeded} rows before, {await _counts(connection)} after")

        await asyncio.to_thread(downgrade, url, BEFORE_PARTITIONING)
        assert await _counts(connection) == seeded
        assert not any([await _is_partitioned(connection, table) for table in PARTITIONED_TABLES])
        # the old keys are back: a decision holds one impression whatever its time
        with pytest.raises(asyncpg.UniqueViolationError):
            await connection.execute(
                "INSERT INTO impressions (decision_id, ts, creative_id, campaign_id, placement_id) "
                "SELECT decision_id, ts + interval '1 s', 7, 3, 1 FROM impressions LIMIT 1"
            )

        await asyncio.to_thread(upgrade, url)
        assert await _counts(connection) == seeded
        print(f"downgrade and upgrade again: {await _counts(connection)}")
    finally:
        await connection.close()


async def test_retention_drops_whole_partitions_and_premake_moves_default_rows(fresh_database) -> None:
    url = await fresh_database()
    await asyncio.to_thread(upgrade, url)
    pool = await asyncpg.create_pool(**asyncpg_dsn(url), min_size=1, max_size=2)
    try:
        connection = await pool.acquire()
        # Made daily for 100 days back, as a long-running deployment has them.
        created = await ensure_partitions(pool, ahead_days=99, now=NOW - timedelta(days=100))
        assert len(created["created"]) == 4 * 100  # the days before today; today on were there
        seeded = await _seed(connection)
        # premake for 70 days ahead takes the row 60 days ahead out of the default partition
        await ensure_partitions(pool, ahead_days=70, now=NOW)
        assert await connection.fetchval("SELECT count(*) FROM decisions_default") == 1  # 400 days old
        assert await _counts(connection) == seeded

        before = {p.name for p in await list_partitions(connection, "decisions")}
        figures = await purge_expired(pool, RetentionSettings(events_days=30, decisions_days=10), now=NOW)
        print("retention run:", json.dumps(figures, indent=1))
        after = {p.name for p in await list_partitions(connection, "decisions")}
        # decisions: every daily partition ending 10 days ago or earlier is gone, no other
        cutoff = NOW - timedelta(days=10)
        gone = {name for name in before if name.startswith("decisions_p")} - after
        assert gone == set(figures["decisions"]["dropped"])
        assert len(gone) == (cutoff.date() - (NOW - timedelta(days=100)).date()).days
        assert not await connection.fetchval("SELECT to_regclass($1) IS NOT NULL", sorted(gone)[0])
        # the 40- and 400-day-old rows are gone (a dropped partition, a DELETE in the default);
        # the rows of 2 days ago, today and 60 days ahead stay
        left = await _counts(connection)
        assert left == {"user_events": 3, "decisions": 3, "impressions": 3, "clicks": 6}
        assert figures["user_events"]["deleted"] == 1 and figures["decisions"]["deleted"] == 1

        # a second run has nothing left to do
        again = await purge_table(pool, "decisions", 10, now=NOW)
        assert again["dropped"] == [] and again["deleted"] == 0
        await pool.release(connection)
    finally:
        await pool.close()


def _scanned(plan: str, table: str) -> set[str]:
    """The daily partitions of `table` a plan reads."""
    return set(re.findall(rf"\b{table}_p\d{{8}}\b", plan))


def _days(first: datetime, last: datetime) -> set[str]:
    span = (last.date() - first.date()).days
    return {f"decisions_p{first + timedelta(days=n):%Y%m%d}" for n in range(span + 1)}


async def _plan(connection: asyncpg.Connection, sql: str, *args: object) -> str:
    rows = await connection.fetch(f"EXPLAIN (COSTS OFF) {sql}", *args)
    return "\n".join(row[0] for row in rows)


async def test_bounded_queries_prune_to_the_partitions_of_their_window(fresh_database) -> None:
    url = await fresh_database()
    await asyncio.to_thread(upgrade, url)
    pool = await asyncpg.create_pool(**asyncpg_dsn(url), min_size=1, max_size=2)
    try:
        await ensure_partitions(pool, ahead_days=40, now=NOW - timedelta(days=30))
        async with pool.acquire() as connection:
            # the reward join's window: decisions between now - lookback and now - reward window
            pending = await _plan(
                connection,
                "SELECT d.id FROM decisions d LEFT JOIN impressions i ON i.decision_id = d.id "
                "WHERE d.ts >= $1::timestamptz - make_interval(secs => $3::float8) "
                "AND d.ts < $1::timestamptz - make_interval(secs => $2::float8)",
                NOW,
                1800.0,
                7 * 86400.0,
            )
            print("reward join:\n" + pending)
            # (up to the reward window before now: in the first half hour of a UTC day, yesterday)
            reward_window = timedelta(seconds=1800)
            assert _scanned(pending, "decisions") == _days(NOW - timedelta(days=7), NOW - reward_window)
            user_state = await _plan(
                connection,
                "SELECT event_type, ts FROM user_events WHERE user_id = $1 AND ts > $3 "
                "ORDER BY ts DESC LIMIT $2",
                "u-1",
                50,
                NOW - timedelta(days=2),
            )
            print("user state, bounded:\n" + user_state)
            assert (
                min(_scanned(user_state, "user_events")) == f"user_events_p{NOW - timedelta(days=2):%Y%m%d}"
            )
    finally:
        await pool.close()


async def test_a_partition_busy_with_a_writer_is_left_to_the_next_run(fresh_database) -> None:
    url = await fresh_database()
    await asyncio.to_thread(upgrade, url)
    pool = await asyncpg.create_pool(**asyncpg_dsn(url), min_size=1, max_size=2)
    writer = await _connect(url)
    try:
        await ensure_partitions(pool, ahead_days=0, now=NOW - timedelta(days=20))
        expired = f"decisions_p{NOW - timedelta(days=20):%Y%m%d}"
        # a log writer's open transaction on the table: DETACH must not queue every writer behind it
        transaction = writer.transaction()
        await transaction.start()
        await writer.execute("LOCK TABLE decisions IN ROW EXCLUSIVE MODE")
        figures = await purge_table(pool, "decisions", 10, now=NOW)
        assert figures["busy"] == [expired] and figures["dropped"] == []
        await transaction.rollback()
        figures = await purge_table(pool, "decisions", 10, now=NOW)
        assert figures["dropped"] == [expired] and "busy" not in figures
    finally:
        await writer.close()
        await pool.close()

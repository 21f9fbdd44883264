"""partitioned logs: user_events, decisions, impressions and clicks by RANGE (ts)

The log tables only grew: retention was a batched DELETE of user_events that got slower with the
table, and decisions, impressions and clicks were never purged. Each is now partitioned by time,
so retention detaches and drops whole partitions (adserve/jobs/partitions.py), which also creates
the partitions of the coming days ahead of time.

A partitioned table's unique keys must contain the partition key, so the keys gain `ts`:
user_events and decisions (id, ts), impressions (decision_id, ts), clicks (id, ts) and the one
valid click per decision (decision_id, ts) WHERE valid. A retried or replayed row carries the same
ts as the first copy (client- or server-set once), so ON CONFLICT still stores it once.

Every row is kept: a partitioned copy of each table is created with one partition per calendar
month of the existing rows up to today (UTC), one per day from today to PREMAKE_DAYS ahead and a
default partition for anything outside; the rows are copied, counted, the old table dropped and
the copy renamed. Downgrade does the reverse (a row the old keys cannot hold, e.g. a second
impression of a decision at another time, is dropped there).

Revision ID: 8138adb72135
Revises: 6476fa7db70a
Create Date: 2026-12-02 00:00:00
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, time, timedelta

from alembic import op

revision = "8138adb72135"
down_revision = "6476fa7db70a"
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")

PREMAKE_DAYS = 7
VALID_CLICK = "uq_clicks_valid_decision_id"  # one valid click per decision

# table: (old primary key, new primary key, other indexes as (name, columns))
TABLES: dict[str, tuple[str, str, list[tuple[str, str]]]] = {
    "user_events": (
        "id",
        "id, ts",
        [
            ("ix_user_events_ts", "ts"),
            ("ix_user_events_user_id_ts", "user_id, ts"),
        ],
    ),
    "decisions": (
        "id",
        "id, ts",
        [
            ("ix_decisions_ts", "ts"),
            ("ix_decisions_user_id_ts", "user_id, ts"),
        ],
    ),
    "impressions": (
        "decision_id",
        "decision_id, ts",
        [
            ("ix_impressions_ts", "ts"),
            ("ix_impressions_user_id_campaign_id_ts", "user_id, campaign_id, ts"),
        ],
    ),
    "clicks": (
        "id",
        "id, ts",
        [
            ("ix_clicks_ts", "ts"),
            ("ix_clicks_user_id_ts", "user_id, ts"),
        ],
    ),
}


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


def _ranges(oldest: datetime | None, today: date) -> list[tuple[datetime, datetime]]:
    """Monthly ranges from the oldest row's month up to today, then daily ranges ahead."""
    ranges: list[tuple[datetime, datetime]] = []
    if oldest is not None and oldest.date() < today:
        month = oldest.astimezone(UTC).date().replace(day=1)
        while month < today:
            following = (month + timedelta(days=32)).replace(day=1)
            ranges.append((_midnight(month), _midnight(min(following, today))))
            month = following
    for offset in range(PREMAKE_DAYS + 1):
        day = today + timedelta(days=offset)
        ranges.append((_midnight(day), _midnight(day + timedelta(days=1))))
    return ranges


def _count(connection, table: str) -> int:
    return connection.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one()


def upgrade() -> None:
    connection = op.get_bind()
    today = datetime.now(UTC).date()
    for table, (_old_key, new_key, indexes) in TABLES.items():
        staged = f"{table}__partitioned"
        op.execute(f"CREATE TABLE {staged} (LIKE {table} INCLUDING DEFAULTS) PARTITION BY RANGE (ts)")
        oldest = connection.exec_driver_sql(f"SELECT min(ts) FROM {table}").scalar_one()
        for lower, upper in _ranges(oldest, today):
            op.execute(
                f"CREATE TABLE {table}_p{lower:%Y%m%d} PARTITION OF {staged} "
                f"FOR VALUES FROM ('{lower.isoformat()}') TO ('{upper.isoformat()}')"
            )
        op.execute(f"CREATE TABLE {table}_default PARTITION OF {staged} DEFAULT")
        op.execute(f"INSERT INTO {staged} SELECT * FROM {table}")
        before, after = _count(connection, table), _count(connection, staged)
        if before != after:
            raise RuntimeError(f"{table}: {before} rows, {after} copied; nothing was changed")
        op.execute(f"DROP TABLE {table}")
        op.execute(f"ALTER TABLE {staged} RENAME TO {table}")
        op.execute(f"ALTER TABLE {table} ADD CONSTRAINT pk_{table} PRIMARY KEY ({new_key})")
        for name, columns in indexes:
            op.execute(f"CREATE INDEX {name} ON {table} ({columns})")
        if table == "clicks":
            op.execute(f"CREATE UNIQUE INDEX {VALID_CLICK} ON clicks (decision_id, ts) WHERE valid")


def downgrade() -> None:
    connection = op.get_bind()
    for table, (old_key, _new_key, indexes) in TABLES.items():
        staged = f"{table}__unpartitioned"
        op.execute(f"CREATE TABLE {staged} (LIKE {table} INCLUDING DEFAULTS)")
        op.execute(f"ALTER TABLE {staged} ADD PRIMARY KEY ({old_key})")
        if table == "clicks":
            op.execute(f"CREATE UNIQUE INDEX {staged}_valid ON {staged} (decision_id) WHERE valid")
        op.execute(f"INSERT INTO {staged} SELECT * FROM {table} ORDER BY ts ON CONFLICT DO NOTHING")
        kept, total = _count(connection, staged), _count(connection, table)
        if kept != total:
            log.warning(
                "%s: %d rows that the unpartitioned keys cannot hold were dropped", table, total - kept
            )
        op.execute(f"DROP TABLE {table}")
        op.execute(f"ALTER TABLE {staged} RENAME TO {table}")
        op.execute(f"ALTER TABLE {table} RENAME CONSTRAINT {staged}_pkey TO pk_{table}")
        if table == "clicks":
            op.execute(f"ALTER INDEX {staged}_valid RENAME TO {VALID_CLICK}")
        for name, columns in indexes:
            op.execute(f"CREATE INDEX {name} ON {table} ({columns})")

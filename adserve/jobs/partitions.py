"""Partitions of the log tables: created ahead of time, dropped whole once past retention.

user_events, decisions, impressions and clicks are partitioned by RANGE (ts) (migration
8138adb72135): one partition per UTC day, named ``<table>_pYYYYMMDD``, plus ``<table>_default`` for
rows outside every range (a clock far off, a replay older than the oldest partition). Partitions the
migration made for rows that already existed span a calendar month each.

`ensure_partitions` (job ``partitions_premake``) creates the partitions of today and the next
``retention.premake_days`` days; a range that already has rows in the default partition gets them
moved into its new partition in the same transaction. `purge_expired` (job ``retention_purge``)
detaches and drops every partition that ends at or before its table's cutoff (now minus
``retention.events_days`` for behaviour events, ``retention.decisions_days`` for decisions,
impressions and clicks): no row-by-row DELETE, no vacuum debt. Rows older than the cutoff that sit
in the default partition or in a migrated monthly partition still holding younger rows are deleted;
those are few, and a daily partition is dropped only once all of its day is past the cutoff
(retention rounds up to whole days). Reports keep their rollups: daily_stats is never purged.

DDL waits at most `LOCK_TIMEOUT` for its locks (DETACH takes an exclusive lock on the parent for
an instant): a partition that stays busy is left to the next run (``busy`` in the figures), and a
premake that cannot get its locks fails and is retried by the scheduler.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any

import asyncpg

if TYPE_CHECKING:
    from adserve.settings import RetentionSettings

__all__ = [
    "BEHAVIOUR_TABLES",
    "DECISION_LOG_TABLES",
    "PARTITIONED_TABLES",
    "Partition",
    "ensure_partitions",
    "list_partitions",
    "purge_expired",
    "purge_table",
]

BEHAVIOUR_TABLES = ("user_events",)
DECISION_LOG_TABLES = ("decisions", "impressions", "clicks")
PARTITIONED_TABLES = BEHAVIOUR_TABLES + DECISION_LOG_TABLES
# DETACH waits for an exclusive lock on the parent, and every writer queues behind the wait: wait
# briefly and leave a busy partition to the next run rather than stall the log writers.
LOCK_TIMEOUT = "500ms"
ONE_DAY = timedelta(days=1)

# Each partition of `$1` with its bounds (NULL for the default partition).
PARTITIONS_SQL = r"""
SELECT c.relname AS name, b[1]::timestamptz AS lower, b[2]::timestamptz AS upper
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
LEFT JOIN LATERAL regexp_match(pg_get_expr(c.relpartbound, c.oid),
                               'FROM \(''([^'']+)''\) TO \(''([^'']+)''\)') AS b ON true
WHERE i.inhparent = to_regclass($1)
ORDER BY lower NULLS LAST
"""


@dataclass(frozen=True, slots=True)
class Partition:
    name: str
    lower: datetime | None  # None: the default partition
    upper: datetime | None

    @property
    def is_default(self) -> bool:
        return self.lower is None


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


def _now(now: datetime | None) -> datetime:
    return now if now is not None else datetime.now(UTC)


async def list_partitions(connection: asyncpg.Connection | asyncpg.Pool, table: str) -> list[Partition]:
    """`table`'s partitions in range order, the default partition last."""
    rows = await connection.fetch(PARTITIONS_SQL, table)
    return [Partition(row["name"], row["lower"], row["upper"]) for row in rows]


async def _create_day(connection: asyncpg.Connection, table: str, day: date) -> str:
    """Creates and attaches `table`'s partition of `day`, moving in any rows of that day from the
    default partition (ATTACH would refuse while the default holds them)."""
    name = f"{table}_p{day:%Y%m%d}"
    lower, upper = _midnight(day), _midnight(day + ONE_DAY)
    async with connection.transaction():
        await connection.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        # Created apart and attached: ATTACH locks the parent less than CREATE … PARTITION OF.
        await connection.execute(f"CREATE TABLE {name} (LIKE {table} INCLUDING DEFAULTS)")
        await connection.execute(
            f"WITH moved AS (DELETE FROM {table}_default WHERE ts >= $1 AND ts < $2 RETURNING *) "
            f"INSERT INTO {name} SELECT * FROM moved",
            lower,
            upper,
        )
        await connection.execute(
            f"ALTER TABLE {table} ATTACH PARTITION {name} "
            f"FOR VALUES FROM ('{lower.isoformat()}') TO ('{upper.isoformat()}')"
        )
    return name


async def ensure_partitions(
    pool: asyncpg.Pool, ahead_days: int, now: datetime | None = None
) -> dict[str, Any]:
    """Every partitioned table gets a partition for each UTC day from today to `ahead_days` ahead
    (days an existing partition covers are skipped). Returns the created partitions' names."""
    today = _now(now).astimezone(UTC).date()
    created: list[str] = []
    async with pool.acquire() as connection:
        for table in PARTITIONED_TABLES:
            ranges = [
                (p.lower, p.upper) for p in await list_partitions(connection, table) if not p.is_default
            ]
            for offset in range(ahead_days + 1):
                day = today + timedelta(days=offset)
                start, end = _midnight(day), _midnight(day + ONE_DAY)
                if any(lower < end and start < upper for lower, upper in ranges):  # type: ignore[operator]
                    continue
                created.append(await _create_day(connection, table, day))
    return {"created": created}


async def purge_table(
    pool: asyncpg.Pool, table: str, retention_days: int, now: datetime | None = None
) -> dict[str, Any]:
    """Drops `table`'s partitions that end at or before now − `retention_days`; deletes older rows
    left in the default partition and in partitions wider than a day that straddle the cutoff."""
    cutoff = _now(now) - timedelta(days=retention_days)
    dropped: list[str] = []
    busy: list[str] = []
    deleted = 0
    async with pool.acquire() as connection:
        for partition in await list_partitions(connection, table):
            if partition.upper is not None and partition.upper <= cutoff:
                try:
                    async with connection.transaction():
                        await connection.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                        await connection.execute(f"ALTER TABLE {table} DETACH PARTITION {partition.name}")
                        await connection.execute(f"DROP TABLE {partition.name}")
                except asyncpg.LockNotAvailableError:
                    busy.append(partition.name)  # the next run drops it
                    continue
                dropped.append(partition.name)
            elif partition.is_default or (
                partition.lower < cutoff  # type: ignore[operator]
                and partition.upper - partition.lower > ONE_DAY  # type: ignore[operator]
            ):
                status = await connection.execute(f"DELETE FROM {partition.name} WHERE ts < $1", cutoff)
                deleted += int(status.split()[-1])
    return {
        "dropped": dropped,
        "deleted": deleted,
        "cutoff": cutoff.isoformat(),
        **({"busy": busy} if busy else {}),
    }


async def purge_expired(
    pool: asyncpg.Pool, retention: RetentionSettings, now: datetime | None = None
) -> dict[str, Any]:
    """Retention of every partitioned table: behaviour events after `events_days`, the decision
    log (decisions, impressions, clicks) after `decisions_days`."""
    figures: dict[str, Any] = {}
    for table in PARTITIONED_TABLES:
        days = retention.events_days if table in BEHAVIOUR_TABLES else retention.decisions_days
        figures[table] = await purge_table(pool, table, days, now)
    return figures

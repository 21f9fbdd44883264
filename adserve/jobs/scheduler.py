"""One scheduler per deployment: APScheduler 3.x in whichever process holds a Postgres lock.

Every process (each `adserve serve` worker with `jobs.enabled`, and every `adserve worker`) keeps
one asyncpg connection and tries `pg_try_advisory_lock(LEADER_LOCK_KEY)` on it every
`jobs.leader_poll_s`. The holder is the leader and runs an `AsyncIOScheduler` with the jobs of
`job_specs`. The lock is a session lock: if the leader dies its connection drops, Postgres frees
the lock, and another process takes it at its next try (within seconds). A leader whose lock
connection stops answering steps down at once (stops the scheduler, cancels running jobs), so two
processes never run jobs together for longer than one poll.

The lock connection's `application_name` names the leader (`adserve-jobs host:pid`), so any
process can tell who leads from `pg_locks` (see `current_leader`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import asyncpg
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, EVENT_JOB_MAX_INSTANCES, JobEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from adserve.db.engine import asyncpg_dsn, create_engine, sessionmaker_for
from adserve.jobs.partitions import ensure_partitions, purge_expired
from adserve.jobs.runs import JobMetrics, RetryPolicy, process_identity, run_recorded
from adserve.jobs.tasks import (
    JobContext,
    learn_bandit,
    reset_daily_budgets,
    retrain_interest,
    rollup_daily_stats,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from adserve.settings import Settings

__all__ = ["LEADER_LOCK_KEY", "JobScheduler", "JobSpec", "current_leader", "job_specs", "run_worker"]

log = logging.getLogger(__name__)

LEADER_LOCK_KEY = 0x61647376  # "adsv": one advisory lock per database
APPLICATION_PREFIX = "adserve-jobs "


@dataclass(frozen=True, slots=True)
class JobSpec:
    name: str
    interval_s: float
    work: Callable[[JobContext], Awaitable[dict[str, Any]]]


def job_specs(settings: Settings) -> list[JobSpec]:
    """The jobs and their cadences, from `[jobs]` and `[retention]` in the configs."""
    jobs = settings.jobs
    specs = [
        JobSpec(
            "budget_reset",
            jobs.budget_reset_s,
            lambda c: reset_daily_budgets(c.pool, reservation_ttl_s=settings.serving.token_ttl_s),
        ),
        JobSpec(
            "rollup_recent",
            jobs.rollup_recent_s,
            lambda c: rollup_daily_stats(c.pool, jobs.rollup_recent_days),
        ),
        JobSpec(
            "rollup_full", jobs.rollup_full_s, lambda c: rollup_daily_stats(c.pool, jobs.rollup_full_days)
        ),
        JobSpec(
            "partitions_premake",
            jobs.purge_s,
            lambda c: ensure_partitions(c.pool, settings.retention.premake_days),
        ),
        JobSpec("retention_purge", jobs.purge_s, lambda c: purge_expired(c.pool, settings.retention)),
        JobSpec("interest_retrain", jobs.retrain_s, retrain_interest),
        JobSpec("bandit_learning", jobs.bandit_s, learn_bandit),
    ]
    return specs


async def current_leader(connection: asyncpg.Connection) -> str | None:
    """`host:pid` of the process holding the jobs lock on this database, or None."""
    name = await connection.fetchval(
        """
        SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
        WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 0 AND l.objid = $1
          AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
        """,
        LEADER_LOCK_KEY,
    )
    return name.removeprefix(APPLICATION_PREFIX) if name else None


async def last_started(connection: asyncpg.Connection) -> dict[str, datetime]:
    rows = await connection.fetch("SELECT job, max(started_at) AS started_at FROM job_runs GROUP BY job")
    return {row["job"]: row["started_at"] for row in rows}


class JobScheduler:
    """Competes for leadership; while leading, runs the jobs on this process's event loop."""

    def __init__(self, url: str, settings: Settings) -> None:
        self.url = url
        self.settings = settings
        self.identity = process_identity()
        self.specs = job_specs(settings)
        self.metrics = {spec.name: JobMetrics() for spec in self.specs}
        self.retry = RetryPolicy(
            settings.jobs.max_attempts, settings.jobs.retry_base_s, settings.jobs.retry_max_s
        )
        self._lock_connection: asyncpg.Connection | None = None
        self._leading = False
        self._scheduler: AsyncIOScheduler | None = None
        self._context: JobContext | None = None
        self._engine: Any = None
        self._running: set[asyncio.Task] = set()
        self._overran: set[str] = set()  # jobs whose turn came while they still ran
        self._election: asyncio.Task | None = None

    @property
    def is_leader(self) -> bool:
        return self._leading

    async def start(self) -> None:
        self._election = asyncio.create_task(self._elect(), name="adserve-jobs-election")

    async def close(self) -> None:
        if self._election is not None:
            self._election.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._election
        await self._step_down()
        await self._close_lock_connection()

    def next_run_times(self) -> dict[str, datetime | None]:
        if self._scheduler is None:
            return {}
        return {job.id: job.next_run_time for job in self._scheduler.get_jobs()}

    async def _elect(self) -> None:
        poll_s = self.settings.jobs.leader_poll_s
        while True:
            try:
                if self._leading:
                    await asyncio.wait_for(self._lock_connection.fetchval("SELECT 1"), poll_s)  # type: ignore[union-attr]
                else:
                    await self._try_lead()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("jobs: lock connection lost (%s); %s", type(exc).__name__, self.identity)
                await self._step_down()
                await self._close_lock_connection()
            await asyncio.sleep(poll_s)

    async def _try_lead(self) -> None:
        if self._lock_connection is None or self._lock_connection.is_closed():
            dsn = asyncpg_dsn(self.url, statement_timeout_ms=self.settings.database.statement_timeout_ms)
            dsn["server_settings"] = {
                **dsn.get("server_settings", {}),
                "application_name": (APPLICATION_PREFIX + self.identity)[:63],
            }
            self._lock_connection = await asyncpg.connect(**dsn)
        if await self._lock_connection.fetchval("SELECT pg_try_advisory_lock($1)", LEADER_LOCK_KEY):
            await self._lead()

    async def _lead(self) -> None:
        log.info("jobs: %s leads; starting the scheduler", self.identity)
        pool = await asyncpg.create_pool(
            **asyncpg_dsn(self.url, statement_timeout_ms=self.settings.database.statement_timeout_ms),
            min_size=0,
            max_size=3,
        )
        self._engine = create_engine(self.url, self.settings)
        self._context = JobContext(self.url, self.settings, pool, sessionmaker_for(self._engine))
        started = await last_started(self._lock_connection)  # type: ignore[arg-type]
        now = datetime.now(UTC)
        scheduler = AsyncIOScheduler(timezone=UTC, job_defaults={"coalesce": True, "max_instances": 1})
        for spec in self.specs:
            # A new leader keeps the cadence across failovers: a job is due one interval after
            # its last start, whichever process ran it.
            previous = started.get(spec.name)
            due = max(now, previous + timedelta(seconds=spec.interval_s)) if previous else now
            scheduler.add_job(
                self._run,
                IntervalTrigger(seconds=spec.interval_s, timezone=UTC),
                args=[spec],
                id=spec.name,
                name=spec.name,
                next_run_time=due,
                misfire_grace_time=None,
            )
        scheduler.add_listener(self._turn_missed, EVENT_JOB_MAX_INSTANCES)
        scheduler.add_listener(self._run_ended, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
        scheduler.start()
        self._scheduler = scheduler
        self._leading = True

    def _turn_missed(self, event: JobEvent) -> None:
        log.warning(
            "jobs: %s is still running at its next turn (its runs take longer than its interval); "
            "it runs again as soon as this run ends",
            event.job_id,
        )
        self._overran.add(event.job_id)

    def _run_ended(self, event: JobEvent) -> None:
        """A job that ran past its turn runs again at once, instead of a whole interval later
        (a retrain slower than its cadence would run every other turn, the machine idle between).
        Runs never overlap: the scheduler tells of the run's end after it stops counting it."""
        if event.job_id in self._overran and self._scheduler is not None:
            self._overran.discard(event.job_id)
            self._scheduler.modify_job(event.job_id, next_run_time=datetime.now(UTC))

    async def _run(self, spec: JobSpec) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._running.add(task)
        context = self._context
        try:
            if context is not None:
                await run_recorded(
                    context.pool, spec.name, lambda: spec.work(context), self.retry, self.metrics[spec.name]
                )
        finally:
            self._running.discard(task)  # type: ignore[arg-type]

    async def _step_down(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
        self._overran.clear()
        for task in list(self._running):
            task.cancel()
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        if self._context is not None:
            await self._context.pool.close()
            self._context = None
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None
        if self._leading:
            log.info("jobs: %s stepped down", self.identity)
        self._leading = False

    async def _close_lock_connection(self) -> None:
        connection, self._lock_connection = self._lock_connection, None
        if connection is not None and not connection.is_closed():
            # Closing the session releases the advisory lock.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), 5.0)
            if not connection.is_closed():
                connection.terminate()


async def run_worker(url: str, settings: Settings) -> None:
    """`adserve worker`: compete for the jobs lock until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    scheduler = JobScheduler(url, settings)
    await scheduler.start()
    log.info("jobs worker %s started", scheduler.identity)
    try:
        await stop.wait()
    finally:
        await scheduler.close()

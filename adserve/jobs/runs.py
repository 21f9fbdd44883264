"""Every job run is a `job_runs` row; a failing job is retried with bounded exponential backoff.

A run row is inserted as ``running`` when an attempt starts and finished as ``ok`` (with the job's
figures) or ``failed`` (with the exception's type and message, never its arguments or context,
which may hold user ids). Each attempt is its own row, so retries are visible. Exceptions never
escape `run_recorded`: the scheduler keeps running whatever a job does.

Figures are stored as JSON that Postgres accepts: NaN and infinities (a log loss or a CTR before
any click) become null (`json_safe`), so a job's own numbers can never fail its run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from adserve.db.engine import json_safe
from adserve.metrics import observe_job_run

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import asyncpg

__all__ = [
    "JobMetrics",
    "RetryPolicy",
    "error_text",
    "figures_json",
    "json_safe",
    "latest_finishes",
    "process_identity",
    "run_recorded",
]

log = logging.getLogger(__name__)

MAX_ERROR_CHARS = 500
# The last finish of each job with each status, whichever process ran it (the index on
# (job, started_at) bounds the scan to the last week).
LATEST_FINISHES_SQL = """
SELECT DISTINCT ON (job, status) job, status, extract(epoch FROM finished_at)::float8 AS finished
FROM job_runs
WHERE started_at > now() - interval '7 days' AND finished_at IS NOT NULL
ORDER BY job, status, started_at DESC
"""


def process_identity() -> str:
    """`host:pid` of this process: tags job runs and the leader's lock connection."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 3
    base_s: float = 2.0
    max_s: float = 60.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt `attempt` (1-based): base, 2·base, 4·base … ≤ max."""
        return min(self.base_s * 2 ** (attempt - 1), self.max_s)


@dataclass(slots=True)
class JobMetrics:
    """In-process counters of one job (the leader's view; job_runs holds the durable history)."""

    runs: int = 0
    failures: int = 0
    last_status: str | None = None
    last_duration_s: float | None = None
    last_finished_at: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def error_text(exc: BaseException) -> str:
    """The exception's type and first line: Postgres details (row values) are left out."""
    message = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {message}"[:MAX_ERROR_CHARS]


def figures_json(figures: dict[str, Any]) -> str:
    """A job's figures as a JSON document for a jsonb column (non-finite floats as null)."""
    return json.dumps(json_safe(figures), default=str, allow_nan=False)


async def _start_row(pool: asyncpg.Pool, job: str, figures: dict[str, Any]) -> int:
    return await pool.fetchval(
        "INSERT INTO job_runs (job, started_at, status, figures) VALUES ($1, $2, 'running', $3::jsonb) "
        "RETURNING id",
        job,
        datetime.now(UTC),
        figures_json(figures),
    )


async def _finish_row(
    pool: asyncpg.Pool, run_id: int, status: str, figures: dict[str, Any], error: str | None
) -> None:
    await pool.execute(
        "UPDATE job_runs SET finished_at = $2, status = $3, figures = $4::jsonb, error = $5 WHERE id = $1",
        run_id,
        datetime.now(UTC),
        status,
        figures_json(figures),
        error,
    )


async def latest_finishes(pool: asyncpg.Pool, timeout_s: float = 2.0) -> dict[tuple[str, str], float]:
    """`(job, status) -> unix time` of each job's last finished run per status in the last week."""
    rows = await pool.fetch(LATEST_FINISHES_SQL, timeout=timeout_s)
    return {(row["job"], row["status"]): row["finished"] for row in rows}


async def run_recorded(
    pool: asyncpg.Pool,
    job: str,
    work: Callable[[], Awaitable[dict[str, Any] | None]],
    retry: RetryPolicy,
    metrics: JobMetrics | None = None,
) -> bool:
    """Runs `work` until it succeeds or `retry.max_attempts` attempts failed; True on success."""
    metrics = metrics if metrics is not None else JobMetrics()
    for attempt in range(1, retry.max_attempts + 1):
        base = {"attempt": attempt, "leader": process_identity()}
        started = time.perf_counter()
        run_id: int | None = None
        try:
            run_id = await _start_row(pool, job, base)
            figures = await work() or {}
            status, error = "ok", None
        except Exception as exc:
            figures, status, error = {}, "failed", error_text(exc)
            log.warning("job %s attempt %d/%d failed: %s", job, attempt, retry.max_attempts, error)
        duration = time.perf_counter() - started
        metrics.runs += 1
        metrics.failures += status == "failed"
        metrics.last_status, metrics.last_duration_s = status, duration
        metrics.last_finished_at = datetime.now(UTC)
        observe_job_run(job, status, duration)
        if run_id is not None:
            try:
                await _finish_row(pool, run_id, status, {**base, **figures, "duration_s": duration}, error)
            except Exception as exc:
                log.warning("job %s: run %d not recorded: %s", job, run_id, error_text(exc))
        if status == "ok":
            return True
        if attempt < retry.max_attempts:
            await asyncio.sleep(retry.delay(attempt))
    return False

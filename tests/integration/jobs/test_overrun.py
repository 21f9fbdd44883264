"""A job that runs past its next turn runs again as soon as it finishes, not a whole interval
later: a retrain slower than its cadence would otherwise run at every other turn, idle between."""

from __future__ import annotations

import asyncio
import os
import time

from apscheduler.events import EVENT_JOB_MAX_INSTANCES

from adserve.db.migrate import upgrade
from adserve.jobs.runs import JobMetrics
from adserve.jobs.scheduler import JobScheduler, JobSpec
from adserve.settings import load_settings

INTERVAL_S = 2.0
DEADLINE_S = 30.0


async def until(condition, what: str) -> None:
    """Polls `condition` (a deadline, not a sleep as synchronisation)."""
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {DEADLINE_S:.0f} s")
        await asyncio.sleep(0.02)


async def test_a_job_that_overruns_its_turn_runs_again_as_soon_as_it_finishes(
    fresh_database, tmp_path
) -> None:
    url = await fresh_database()  # its own database: the leader lock and job_runs are per database
    await asyncio.to_thread(upgrade, url)
    settings = load_settings(
        environ={
            **os.environ,
            "ADSERVE_DATABASE_URL": url,
            "ADSERVE_VAR_DIR": str(tmp_path / "var"),
            "ADSERVE_MODELS_DIR": str(tmp_path / "models"),
            "ADSERVE_JOBS_LEADER_POLL_S": "0.1",
        }
    )
    starts: list[float] = []
    ends: list[float] = []
    release = asyncio.Event()

    async def slow(context) -> dict:
        starts.append(time.monotonic())
        if len(starts) == 1:
            await release.wait()  # the first run lasts past its next turn
        ends.append(time.monotonic())
        return {"run": len(starts)}

    scheduler = JobScheduler(url, settings)
    scheduler.specs = [JobSpec("slow", INTERVAL_S, slow)]
    scheduler.metrics = {"slow": JobMetrics()}
    skipped: list[str] = []
    await scheduler.start()
    try:
        await until(lambda: scheduler._scheduler is not None, "leadership")
        scheduler._scheduler.add_listener(lambda event: skipped.append(event.job_id), EVENT_JOB_MAX_INSTANCES)
        await until(lambda: skipped, "turn skipped while the first run lasts")
        release.set()
        await until(lambda: len(starts) >= 2, "second run")
        # at once after the overrun (the next turn on the grid was INTERVAL_S later), never overlapping
        assert 0.0 <= starts[1] - ends[0] < INTERVAL_S / 2, (starts, ends)
        assert skipped == ["slow"]
        await until(lambda: len(starts) >= 3, "third run")
        # then back on its cadence: no run in between
        assert starts[2] - starts[1] > INTERVAL_S / 4, starts
    finally:
        await scheduler.close()

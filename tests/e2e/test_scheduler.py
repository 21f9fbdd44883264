"""Two `adserve worker` processes on one database: exactly one runs the jobs, and killing it
hands them to the other (Postgres advisory lock)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import pytest

from adserve.db.engine import asyncpg_dsn
from adserve.db.migrate import upgrade
from adserve.jobs.scheduler import current_leader

ROOT = Path(__file__).resolve().parents[2]
TAKEOVER_DEADLINE_S = 60.0

pytestmark = pytest.mark.slow


@contextmanager
def workers(database_url: str, tmp_path: Path, count: int) -> Iterator[list[subprocess.Popen]]:
    env = {
        **os.environ,
        "ADSERVE_DATABASE_URL": database_url,
        "ADSERVE_VAR_DIR": str(tmp_path / "var"),
        "ADSERVE_MODELS_DIR": str(tmp_path / "models"),
        "ADSERVE_JOBS_LEADER_POLL_S": "2",
        "ADSERVE_JOBS_BUDGET_RESET_S": "1",
    }
    processes = []
    for n in range(count):
        with (tmp_path / f"worker-{n}.log").open("wb") as log:
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "adserve", "worker"],
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    try:
        yield processes
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def wait_for_runs(connection, leader: str, count: int, processes, tmp_path: Path) -> None:
    """Polls job_runs until `leader` has finished `count` budget resets (a deadline, not a sleep)."""
    deadline = time.monotonic() + TAKEOVER_DEADLINE_S
    while time.monotonic() < deadline:
        done = await connection.fetchval(
            "SELECT count(*) FROM job_runs WHERE job = 'budget_reset' AND status = 'ok' AND figures->>'leader' = $1",
            leader,
        )
        if done >= count:
            return
        if all(p.poll() is not None for p in processes):
            logs = "\n".join(p.read_text()[-2000:] for p in tmp_path.glob("worker-*.log"))
            raise AssertionError(f"every worker exited:\n{logs}")
        await asyncio.sleep(0.2)
    raise AssertionError(f"{leader} did not run {count} budget resets within {TAKEOVER_DEADLINE_S} s")


async def test_one_worker_leads_and_the_other_takes_over_when_it_dies(fresh_database, tmp_path: Path) -> None:
    url = await fresh_database()
    await asyncio.to_thread(upgrade, url)
    host = socket.gethostname()
    connection = await asyncpg.connect(**asyncpg_dsn(url))
    try:
        with workers(url, tmp_path, 2) as (first, second):
            identities = {f"{host}:{first.pid}": first, f"{host}:{second.pid}": second}
            deadline = time.monotonic() + TAKEOVER_DEADLINE_S
            while (leader := await current_leader(connection)) is None and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            assert leader in identities, f"leader {leader!r} is not one of {sorted(identities)}"
            await wait_for_runs(connection, leader, 3, [first, second], tmp_path)
            runners = await connection.fetch("SELECT DISTINCT figures->>'leader' AS who FROM job_runs")
            assert [r["who"] for r in runners] == [leader]

            (follower,) = set(identities) - {leader}
            identities[leader].send_signal(signal.SIGKILL)
            identities[leader].wait()
            killed_at = time.monotonic()
            await wait_for_runs(connection, follower, 1, [identities[follower]], tmp_path)
            assert time.monotonic() - killed_at < TAKEOVER_DEADLINE_S
            assert await current_leader(connection) == follower
            runners = await connection.fetch(
                "SELECT DISTINCT figures->>'leader' AS who FROM job_runs ORDER BY 1"
            )
            assert sorted(r["who"] for r in runners) == sorted(identities)
    finally:
        await connection.close()

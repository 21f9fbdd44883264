"""Every attempt is a job_runs row; failures are retried with backoff and never escape."""

from __future__ import annotations

import secrets

from adserve.jobs.runs import JobMetrics, RetryPolicy, error_text, run_recorded


def test_backoff_doubles_and_is_bounded() -> None:
    policy = RetryPolicy(max_attempts=6, base_s=1.0, max_s=5.0)
    assert [policy.delay(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_error_text_keeps_only_the_first_line() -> None:
    assert error_text(ValueError("bad row\nDETAIL: Key (user_id)=(u-123)")) == "ValueError: bad row"


async def test_a_job_failing_twice_then_succeeding_is_retried_and_recorded(jobs_pool) -> None:
    job = f"flaky-{secrets.token_hex(3)}"
    calls = 0

    async def flaky() -> dict:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise RuntimeError(f"transient failure {calls}")
        return {"rows": 3}

    metrics = JobMetrics()
    assert await run_recorded(jobs_pool, job, flaky, RetryPolicy(3, 0.01, 0.05), metrics)
    rows = await jobs_pool.fetch(
        "SELECT status, error, figures, started_at, finished_at FROM job_runs WHERE job = $1 ORDER BY id", job
    )
    assert [r["status"] for r in rows] == ["failed", "failed", "ok"]
    assert rows[0]["error"] == "RuntimeError: transient failure 1"
    assert rows[2]["error"] is None
    assert all(r["finished_at"] >= r["started_at"] for r in rows)
    assert metrics.runs == 3 and metrics.failures == 2 and metrics.last_status == "ok"
    assert metrics.last_duration_s is not None


async def test_a_job_that_always_fails_gives_up_after_max_attempts(jobs_pool) -> None:
    job = f"broken-{secrets.token_hex(3)}"

    async def broken() -> dict:
        raise KeyError("missing")

    assert not await run_recorded(jobs_pool, job, broken, RetryPolicy(2, 0.01, 0.01))
    statuses = await jobs_pool.fetch("SELECT status FROM job_runs WHERE job = $1", job)
    assert [r["status"] for r in statuses] == ["failed", "failed"]

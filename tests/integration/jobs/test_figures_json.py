"""A job's figures never break it: NaN and infinities (no clicks yet) are stored as JSON null.

Postgres's json types reject Python's `NaN`/`Infinity` tokens ("invalid input syntax for type
json"); the first demo `interest_retrain` run failed that way on a click log loss of NaN.
"""

from __future__ import annotations

import json
import math
import secrets
from typing import TYPE_CHECKING

import numpy as np

from adserve.jobs.gate import apply_gate
from adserve.jobs.runs import RetryPolicy, figures_json, json_safe, run_recorded

if TYPE_CHECKING:
    from pathlib import Path


def test_json_safe_turns_non_finite_numbers_into_null() -> None:
    figures = {
        "ctr": float("nan"),
        "lift": float("inf"),
        "loss": -math.inf,
        "ok": 0.5,
        "np": np.float32("nan"),
        "count": np.int64(3),
        "nested": [{"x": float("nan")}, (1.0, float("-inf"))],
    }
    assert json_safe(figures) == {
        "ctr": None,
        "lift": None,
        "loss": None,
        "ok": 0.5,
        "np": None,
        "count": 3,
        "nested": [{"x": None}, [1.0, None]],
    }
    assert json.loads(figures_json(figures))["nested"] == [{"x": None}, [1.0, None]]


async def test_a_job_returning_nan_and_infinity_is_recorded_ok_with_nulls(jobs_pool) -> None:
    job = f"nan-figures-{secrets.token_hex(3)}"

    async def no_clicks_yet() -> dict:
        return {"ctr": float("nan"), "logloss": float("inf"), "holdout": {"auc": np.float64("nan")}}

    assert await run_recorded(jobs_pool, job, no_clicks_yet, RetryPolicy(1, 0.01, 0.01))
    row = await jobs_pool.fetchrow("SELECT status, error, figures FROM job_runs WHERE job = $1", job)
    assert row["status"] == "ok" and row["error"] is None
    figures = row["figures"] if isinstance(row["figures"], dict) else json.loads(row["figures"])
    assert figures["ctr"] is None and figures["logloss"] is None and figures["holdout"] == {"auc": None}


async def test_the_retrain_gate_registers_a_challenger_whose_figures_hold_nan(
    jobs_database, jobs_sessionmaker, tmp_path: Path
) -> None:
    # What the training process hands back when a holdout has no clicks: json.dumps writes NaN.
    version = tmp_path / f"nan-{secrets.token_hex(3)}"
    version.mkdir()
    (version / "metrics.json").write_text(json.dumps({"metrics": {"click": {"logloss": float("nan")}}}))
    pair = json.loads(
        json.dumps(
            {
                "challenger": {"ndcg_at_10": 0.2, "logloss": float("nan"), "click_trained": True},
                "champion": None,
            }
        )
    )
    decision = await apply_gate(jobs_database, version, pair)
    assert decision.promote
    from adserve.learning.registry import Registry

    async with jobs_sessionmaker() as session:
        row = await Registry(session).get("interest", version.name)
    assert row.metrics["gate"]["challenger"]["logloss"] is None
    assert row.metrics["click"]["logloss"] is None

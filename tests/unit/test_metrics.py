"""The metrics module alone: what `observe_decision` counts, and workers summed in multiprocess mode."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from adserve import metrics

ROOT = Path(__file__).resolve().parents[2]


def _value(exposition: str, sample: str) -> float:
    line = next(line for line in exposition.splitlines() if line.startswith(sample + " "))
    return float(line.rsplit(" ", 1)[1])


def _registry(serving: dict | None = None):
    return metrics.build_registry(metrics.ProcessStateCollector(lambda: None, lambda: serving or {}))


def test_a_decision_counts_its_outcome_removals_exploration_and_inference_time() -> None:
    registry = _registry()
    before = metrics.exposition(registry).decode()
    metrics.observe_decision(
        "served", {"geo": 2, "frequency_cap": 1}, explored=True, score_s=0.002, choose_s=0.0003
    )
    metrics.observe_decision("no_eligible_creative", {"geo": 3})
    after = metrics.exposition(registry).decode()

    def moved(sample: str) -> float:
        start = _value(before, sample) if sample + " " in before else 0.0
        return _value(after, sample) - start

    assert moved('adserve_decisions_total{outcome="served"}') == 1
    assert moved('adserve_decisions_total{outcome="no_eligible_creative"}') == 1
    assert moved('adserve_eligibility_removed_total{rule="geo"}') == 5
    assert moved('adserve_eligibility_removed_total{rule="frequency_cap"}') == 1
    assert moved("adserve_decisions_explored_total") == 1
    assert moved("adserve_scoring_seconds_count") == 1 and moved("adserve_policy_choose_seconds_count") == 1


def test_what_serves_is_read_at_scrape_time() -> None:
    serving = {
        "scorer": {"kind": "interest", "version": "20261130T000000Z"},
        "policy": {"kind": "vw", "version": "untrained", "examples_learned": 0},
        "champions_loaded": {"interest": "20261130T000000Z"},
    }
    exposition = metrics.exposition(_registry(serving)).decode()
    assert (
        'adserve_serving_info{component="scorer",kind="interest",version="20261130T000000Z"} 1.0'
        in exposition
    )
    assert 'adserve_champion_loaded_info{kind="interest",version="20261130T000000Z"} 1.0' in exposition
    assert "adserve_writer_queue_rows" not in exposition  # no writer before the app has started


_WORKER = """
from adserve import metrics
metrics.observe_job_run("bandit_learning", "ok", 0.5)
"""
_SCRAPE = """
from adserve import metrics
registry = metrics.build_registry(metrics.ProcessStateCollector(lambda: None, lambda: {}))
print(metrics.exposition(registry).decode())
"""


def test_workers_sharing_a_multiprocess_folder_are_summed(tmp_path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for _ in range(2):
        subprocess.run([sys.executable, "-c", _WORKER], cwd=ROOT, env=env, check=True, timeout=60)
    scraped = subprocess.run(
        [sys.executable, "-c", _SCRAPE],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=60,
        capture_output=True,
        text=True,
    ).stdout
    assert _value(scraped, 'adserve_job_runs_total{job="bandit_learning",status="ok"}') == 2

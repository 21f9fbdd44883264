"""A short in-process comparison on a fixed seed: the full system must have learned something."""

from __future__ import annotations

import math

import pytest

from adserve.sim.compare import CompareConfig, compare, format_table, summary_rows, write_outputs
from adserve.sim.oracle import ClickModel
from adserve.sim.world import WorldConfig

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _z(clicks_a: int, n_a: int, clicks_b: int, n_b: int) -> float:
    """Two-proportion z statistic of b's rate over a's (pooled standard error)."""
    pooled = (clicks_a + clicks_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    return (clicks_b / n_b - clicks_a / n_a) / se


def test_full_system_learns_beyond_uniform(tmp_path):
    # A small world (300 users come back often) with a higher base CTR (more clicks per
    # decision) keeps the run short; an interest model is trained after the warm-up and then
    # about every 2,000 decisions (8,000 decisions span ~130,000 simulated seconds).
    config = CompareConfig(
        decisions=8_000,
        seed=3,
        windows=4,
        policies=("uniform", "full"),
        warmup=2_000,
        retrain_s=30_000,
        epochs=2,
        click_epochs=4,
        world=WorldConfig(seed=3, n_users=300),
        click_model=ClickModel(base_logit=-3.5),
    )
    # ~50 s on 2 quiet cores (the learning, not the clock, is what this test checks)
    uniform, full = compare(config, progress=lambda line: None)
    # every trained version went through the serving gate; the first was judged against the
    # empirical CTR scorer it would replace
    assert len(full.interest_gate) >= 3, full.interest_gate
    assert full.interest_gate[0].startswith("sim-0002000: "), full.interest_gate
    assert "empirical CTR" in full.interest_gate[0]
    promoted = [g.split(":")[0] for g in full.interest_gate if ": rejected" not in g]
    assert full.model_versions == promoted and promoted, full.interest_gate
    # the serving learner ran: versions learned at window close, promoted into the serving policy
    assert full.bandit_versions > 10
    assert full.results.scorer_version.startswith(full.model_versions[-1])
    assert full.results.policy_version.startswith("v")

    last_u, last_f = uniform.results.window(5_000, 8_000), full.results.window(5_000, 8_000)
    # same traffic, same requests: the oracle and uniform expectations are identical
    assert last_u.oracle_ctr == pytest.approx(last_f.oracle_ctr)
    z = _z(last_u.clicks, last_u.decisions, last_f.clicks, last_f.decisions)
    assert z > 3, f"full {last_f.ctr:.4f} vs uniform {last_u.ctr:.4f}: z = {z:.2f}"
    assert last_f.expected_ctr < last_f.oracle_ctr

    paths = write_outputs([uniform, full], config, tmp_path)
    header = paths["csv"].read_text().splitlines()[0]
    assert header.startswith("policy,start,end,decisions,clicks,ctr,expected_ctr,oracle_ctr")
    assert len(paths["csv"].read_text().splitlines()) == 1 + 2 * config.windows
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = format_table(summary_rows([uniform, full]))
    assert "full system" in table and "oracle (expected)" in table


def test_the_revenue_objective_runs_the_services_objective_and_is_judged_by_the_revenue_oracle():
    config = CompareConfig(
        decisions=3_000,
        seed=3,
        windows=2,
        policies=("uniform", "bandit"),
        objective="revenue",
        world=WorldConfig(seed=3, n_users=300),
    )
    assert config.policy_config().cost.objective == "revenue"
    assert CompareConfig().policy_config().cost.objective == "clicks"
    with pytest.raises(ValueError, match="objective"):
        CompareConfig(objective="ctr")  # type: ignore[arg-type]
    uniform, bandit = compare(config, progress=lambda line: None)
    rows = {row["policy"]: row for row in summary_rows([uniform, bandit])}
    # the revenue oracle serves the highest expected revenue of each request: nothing beats it,
    # and a uniform choice earns a fraction of it
    assert rows["oracle (expected)"]["revenue_ratio_to_oracle"] == 1.0
    assert 0 < rows["uniform"]["revenue_ratio_to_oracle"] < 0.5
    assert 0 < rows["bandit"]["revenue_ratio_to_oracle"] <= 1.0
    assert "expected revenue × revenue oracle" in format_table(list(rows.values()))

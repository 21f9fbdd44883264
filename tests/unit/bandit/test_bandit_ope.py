"""OPE on synthetic logs whose true policy values are known in closed form."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
import pytest

from adserve.bandit.ope import (
    EmpiricalCtrModel,
    dr,
    effective_sample_size,
    evaluate,
    evaluate_logs,
    format_table,
    ips,
    logged_score_model,
    logging_target,
    snips,
    uniform_target,
)
from adserve.bandit.policy import VWPolicy
from adserve.bandit.records import LoggedDecision
from adserve.domain import Candidate, DecisionContext, Pricing

if TYPE_CHECKING:
    from pathlib import Path

PLACEMENTS = ("home", "search", "product")
CANDIDATES = (
    Candidate(10, 1, 1, Pricing.CPC, bid=1.0),
    Candidate(11, 2, 1, Pricing.CPC, bid=0.5),
    Candidate(12, 3, 2, Pricing.CPC, bid=2.0),
    Candidate(13, 4, 2, Pricing.CPM, bid=6.0),
)
# true click probability per placement (row) and candidate (column)
TRUE_CTR = np.array(
    [
        [0.10, 0.30, 0.05, 0.02],
        [0.20, 0.05, 0.15, 0.10],
        [0.05, 0.10, 0.40, 0.20],
    ]
)
LOGGING_PMF = np.array([[0.4, 0.3, 0.2, 0.1], [0.1, 0.4, 0.3, 0.2], [0.25, 0.25, 0.25, 0.25]])
TARGET_PMF = np.array([[0.05, 0.85, 0.05, 0.05], [0.7, 0.1, 0.1, 0.1], [0.0, 0.1, 0.9, 0.0]])
REVENUE_IF_CLICK = np.array([1.0, 0.5, 2.0, 0.0])
REVENUE_PER_IMPRESSION = np.array([0.0, 0.0, 0.0, 0.006])


def true_value(pmf: np.ndarray) -> tuple[float, float]:
    """Placements are equally likely: (CTR, revenue per decision) of a policy with this pmf."""
    ctr = float(np.mean(np.sum(pmf * TRUE_CTR, axis=1)))
    revenue = float(np.mean(np.sum(pmf * (TRUE_CTR * REVENUE_IF_CLICK + REVENUE_PER_IMPRESSION), axis=1)))
    return ctr, revenue


def synthetic_logs(n: int, seed: int) -> list[LoggedDecision]:
    rng = np.random.default_rng(seed)
    slots = rng.integers(len(PLACEMENTS), size=n)
    uniforms = rng.random(n)
    records = []
    for i, x in enumerate(slots):
        chosen = int(rng.choice(4, p=LOGGING_PMF[x]))
        clicked = bool(uniforms[i] < TRUE_CTR[x, chosen])
        revenue = REVENUE_IF_CLICK[chosen] * clicked + REVENUE_PER_IMPRESSION[chosen]
        records.append(
            LoggedDecision(
                context=DecisionContext(placement=PLACEMENTS[x], now=float(i)),
                candidates=CANDIDATES,
                click_probabilities=(0.1, 0.1, 0.1, 0.1),
                pmf=tuple(LOGGING_PMF[x]),
                chosen=chosen,
                clicked=clicked,
                revenue=float(revenue),
            )
        )
    return records


def target(record: LoggedDecision) -> np.ndarray:
    return TARGET_PMF[PLACEMENTS.index(record.context.placement)]


def oracle_model(record: LoggedDecision) -> np.ndarray:
    return TRUE_CTR[PLACEMENTS.index(record.context.placement)]


def constant_model(record: LoggedDecision) -> np.ndarray:
    return np.full(len(record.candidates), 0.5)  # badly wrong on purpose


def test_estimates_fall_within_their_intervals_and_cover_the_truth() -> None:
    records = synthetic_logs(4000, seed=0)
    report = evaluate(records, {"target": target, "logging": logging_target}, n_bootstrap=500, seed=1)
    for name, pmf in (("target", TARGET_PMF), ("logging", LOGGING_PMF)):
        truth = dict(zip(("ctr", "revenue"), true_value(pmf), strict=True))
        for estimator, by_metric in report.policies[name].estimates.items():
            for metric, interval in by_metric.items():
                assert interval.low <= interval.value <= interval.high, (name, estimator, metric)
                assert interval.low <= truth[metric] <= interval.high, (
                    name,
                    estimator,
                    metric,
                    truth[metric],
                )
                assert interval.high - interval.low < 0.1  # an interval, not the whole line


def test_intervals_cover_the_truth_at_about_the_nominal_rate() -> None:
    truth_ctr, _ = true_value(TARGET_PMF)
    covered = 0
    seeds = range(40)
    for seed in seeds:
        report = evaluate(
            synthetic_logs(600, seed), {"t": target}, n_bootstrap=200, seed=seed, metrics=("ctr",)
        )
        interval = report.policies["t"].estimates["ips"]["ctr"]
        covered += interval.low <= truth_ctr <= interval.high
    assert covered >= 33  # 95% nominal; P(covered < 33 of 40) is under 1% at 93% true coverage


def test_ips_and_dr_are_unbiased_across_seeds() -> None:
    truth_ctr, truth_revenue = true_value(TARGET_PMF)
    estimates = {"ips": [], "ips_revenue": [], "dr_wrong_model": [], "dr_oracle": []}
    for seed in range(200):
        records = synthetic_logs(300, seed + 1000)
        weights = np.array([target(r)[r.chosen] / r.propensity for r in records])
        clicks = np.array([float(r.clicked) for r in records])
        revenue = np.array([r.revenue for r in records])
        estimates["ips"].append(ips(weights, clicks))
        estimates["ips_revenue"].append(ips(weights, revenue))
        for key, model in (("dr_wrong_model", constant_model), ("dr_oracle", oracle_model)):
            direct = np.array([target(r) @ model(r) for r in records])
            chosen = np.array([model(r)[r.chosen] for r in records])
            estimates[key].append(dr(weights, clicks, direct, chosen))
    for key, truth in (
        ("ips", truth_ctr),
        ("ips_revenue", truth_revenue),
        ("dr_wrong_model", truth_ctr),
        ("dr_oracle", truth_ctr),
    ):
        values = np.array(estimates[key])
        standard_error = values.std(ddof=1) / np.sqrt(len(values))
        assert abs(values.mean() - truth) < 3 * standard_error, (key, values.mean(), truth)
        assert abs(values.mean() - truth) < 0.05 * truth
    # a good reward model makes DR tighter than IPS (the click noise itself stays)
    assert np.std(estimates["dr_oracle"]) < np.std(estimates["ips"])


def test_point_estimators_on_hand_computed_values() -> None:
    w = np.array([2.0, 0.0, 1.0, 1.0])
    r = np.array([1.0, 1.0, 0.0, 1.0])
    assert ips(w, r) == pytest.approx(0.75)
    assert snips(w, r) == pytest.approx(0.75)
    assert snips(np.zeros(3), np.ones(3)) != snips(np.zeros(3), np.ones(3))  # NaN: no support
    assert dr(w, r, direct=np.full(4, 0.5), predicted_chosen=np.full(4, 0.5)) == pytest.approx(0.75)
    assert effective_sample_size(np.ones(10)) == pytest.approx(10)
    assert effective_sample_size(np.array([4.0, 0.0, 0.0, 0.0])) == pytest.approx(1)


def test_logging_policy_value_is_the_on_policy_mean_with_full_ess() -> None:
    records = synthetic_logs(1000, seed=3)
    report = evaluate(records, {"logging": logging_target, "uniform": uniform_target}, n_bootstrap=100)
    logging = report.policies["logging"]
    assert logging.ess == pytest.approx(1000)
    assert logging.estimates["ips"]["ctr"].value == pytest.approx(np.mean([r.clicked for r in records]))
    assert logging.estimates["snips"]["revenue"].value == pytest.approx(np.mean([r.revenue for r in records]))
    # uniform is off-policy here: fewer effective decisions than logged
    assert report.policies["uniform"].ess < 1000


def test_empirical_ctr_model_shrinks_towards_the_overall_rate() -> None:
    records = synthetic_logs(2000, seed=4)
    model = EmpiricalCtrModel.fit(records, prior_strength=20)
    overall = np.mean([r.clicked for r in records])
    assert model.overall == pytest.approx(overall)
    shown = sum(r.chosen_candidate.creative_id == 10 for r in records)
    clicks = sum(r.clicked for r in records if r.chosen_candidate.creative_id == 10)
    assert model.rates[10] == pytest.approx((clicks + 20 * overall) / (shown + 20))
    unseen = Candidate(99, 9, 9, Pricing.CPC, bid=1.0)
    record = LoggedDecision(records[0].context, (unseen,), (0.3,), (1.0,), 0, False, 0.0)
    assert model(record).tolist() == [overall]
    assert logged_score_model(record).tolist() == [0.3]


def test_evaluate_logs_with_a_saved_challenger(tmp_path: Path) -> None:
    records = synthetic_logs(800, seed=5)
    learner = VWPolicy()
    learner.learn(records[:500])
    directory = learner.save(tmp_path, version="challenger-1")
    report = evaluate_logs(records[500:], challenger_dir=directory, n_bootstrap=100)
    assert set(report.policies) == {"logging", "uniform", "greedy", "challenger"}
    greedy = report.policies["greedy"]
    assert greedy.ess < report.policies["challenger"].ess <= report.n  # exploration buys support
    data = json.loads(json.dumps(report.to_dict()))
    assert data["policies"]["challenger"]["estimates"]["dr"]["revenue"]["low"] is not None
    table = format_table(report)
    assert table.count("\n") == 2 + 4 * 3 - 1
    assert "| challenger | SNIPS |" in table


def test_rejects_empty_logs_and_unknown_metrics() -> None:
    with pytest.raises(ValueError, match="at least one"):
        evaluate([], {"u": uniform_target})
    with pytest.raises(ValueError, match="unknown metrics"):
        evaluate(synthetic_logs(10, 0), {"u": uniform_target}, metrics=("clicks",))

"""Off-policy evaluation: what would another policy have earned on the decisions we logged?

For logged decisions i (context x_i, chosen action a_i with logged propensity p_i, reward r_i)
and a target policy π, with importance weight w_i = π(a_i | x_i) / p_i:

    IPS   = (1/n) Σ w_i r_i                                   unbiased when p_i > 0 wherever π > 0
    SNIPS = Σ w_i r_i / Σ w_i                                 slightly biased, lower variance
    DR    = (1/n) Σ [ Σ_a π(a|x_i) r̂(x_i, a) + w_i (r_i − r̂(x_i, a_i)) ]
                                                              unbiased with a wrong r̂, tighter with a good one
    ESS   = (Σ w_i)² / Σ w_i²                                 how many logged decisions the estimate is worth

Every estimator is reported for two rewards: `ctr` (the click, 0/1) and `revenue` (currency
earned by the decision). Intervals are percentile bootstrap 95% intervals; every policy in one
report is scored on the same resamples, so their intervals are comparable.

A reward model predicts P(click) for each candidate of a record; revenue predictions follow
from it through `expected_value` (bid × P(click) for CPC, bid/1000 for CPM). The integration
passes the interest model here; `EmpiricalCtrModel` is the self-contained default. Fit it on
data other than the evaluated records where you can (the OBD path fits on the training split):
fitted on the same records, DR's correction is very slightly biased.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from adserve.domain import expected_value

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from pathlib import Path

    from adserve.bandit.policy import VWPolicy
    from adserve.bandit.records import LoggedDecision

    TargetPolicy = Callable[[LoggedDecision], np.ndarray]
    RewardModel = Callable[[LoggedDecision], np.ndarray]

__all__ = [
    "ESTIMATORS",
    "METRICS",
    "EmpiricalCtrModel",
    "Interval",
    "OpeReport",
    "PolicyEstimate",
    "dr",
    "effective_sample_size",
    "evaluate",
    "evaluate_logs",
    "format_table",
    "greedy_target",
    "ips",
    "logged_score_model",
    "logging_target",
    "policy_target",
    "snips",
    "standard_targets",
    "uniform_target",
]

ESTIMATORS = ("ips", "snips", "dr")
METRICS = ("ctr", "revenue")
# bootstrap resamples are drawn in blocks of about this many (resample × record) cells
_BOOTSTRAP_BLOCK_CELLS = 4_000_000


# -- point estimators on arrays ---------------------------------------------------------------


def ips(weights: np.ndarray, rewards: np.ndarray) -> float:
    return float(np.mean(weights * rewards))


def snips(weights: np.ndarray, rewards: np.ndarray) -> float:
    total = float(np.sum(weights))
    return float(np.sum(weights * rewards) / total) if total > 0 else float("nan")


def dr(weights: np.ndarray, rewards: np.ndarray, direct: np.ndarray, predicted_chosen: np.ndarray) -> float:
    """`direct[i]` = Σ_a π(a|x_i) r̂(x_i, a); `predicted_chosen[i]` = r̂(x_i, a_i)."""
    return float(np.mean(direct + weights * (rewards - predicted_chosen)))


def effective_sample_size(weights: np.ndarray) -> float:
    square_sum = float(np.sum(weights**2))
    return float(np.sum(weights)) ** 2 / square_sum if square_sum > 0 else 0.0


# -- target policies and reward models ----------------------------------------------------------


def logging_target(record: LoggedDecision) -> np.ndarray:
    """The logging policy itself: its value is the on-policy average (every weight is 1)."""
    return np.asarray(record.pmf, dtype=np.float64)


def uniform_target(record: LoggedDecision) -> np.ndarray:
    n = len(record.candidates)
    return np.full(n, 1.0 / n)


def policy_target(policy: VWPolicy) -> TargetPolicy:
    """A VW policy as it would serve: its exploring pmf over the logged candidates."""

    def target(record: LoggedDecision) -> np.ndarray:
        return policy.pmf(
            record.context, record.candidates, record.click_probabilities, record.scorer_version
        )

    return target


def greedy_target(policy: VWPolicy) -> TargetPolicy:
    """A VW policy without exploration: all mass on its pmf's argmax."""

    def target(record: LoggedDecision) -> np.ndarray:
        pmf = policy.pmf(record.context, record.candidates, record.click_probabilities, record.scorer_version)
        greedy = np.zeros_like(pmf)
        greedy[int(np.argmax(pmf))] = 1.0
        return greedy

    return target


def logged_score_model(record: LoggedDecision) -> np.ndarray:
    """Reward model from the interest model's scores logged at decision time."""
    return np.asarray(record.click_probabilities, dtype=np.float64)


@dataclass(frozen=True, slots=True)
class EmpiricalCtrModel:
    """Per-creative click rate, shrunk towards the overall rate by `prior_strength` pseudo-decisions."""

    rates: Mapping[int, float]
    overall: float

    @classmethod
    def fit(cls, records: Sequence[LoggedDecision], prior_strength: float = 20.0) -> EmpiricalCtrModel:
        if not records:
            raise ValueError("cannot fit a reward model on zero records")
        shown: dict[int, int] = defaultdict(int)
        clicks: dict[int, int] = defaultdict(int)
        for record in records:
            creative = record.chosen_candidate.creative_id
            shown[creative] += 1
            clicks[creative] += record.clicked
        overall = sum(clicks.values()) / len(records)
        rates = {c: (clicks[c] + prior_strength * overall) / (shown[c] + prior_strength) for c in shown}
        return cls(rates=rates, overall=overall)

    def __call__(self, record: LoggedDecision) -> np.ndarray:
        return np.array([self.rates.get(c.creative_id, self.overall) for c in record.candidates])


# -- reports ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Interval:
    value: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float | None]:
        return {
            k: (None if np.isnan(v) else v)
            for k, v in (("value", self.value), ("low", self.low), ("high", self.high))
        }


@dataclass(frozen=True, slots=True)
class PolicyEstimate:
    """One policy's estimated value: `estimates[estimator][metric]`, e.g. `["snips"]["ctr"]`."""

    name: str
    n: int
    ess: float
    estimates: dict[str, dict[str, Interval]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "ess": self.ess,
            "estimates": {
                e: {m: iv.to_dict() for m, iv in by_metric.items()} for e, by_metric in self.estimates.items()
            },
        }


@dataclass(frozen=True, slots=True)
class OpeReport:
    n: int
    n_bootstrap: int
    metrics: tuple[str, ...]
    policies: dict[str, PolicyEstimate] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "n_bootstrap": self.n_bootstrap,
            "interval": "bootstrap percentile 95%",
            "metrics": list(self.metrics),
            "policies": {name: estimate.to_dict() for name, estimate in self.policies.items()},
        }


def _record_terms(
    records: Sequence[LoggedDecision], target: TargetPolicy, reward_model: RewardModel, metrics: Sequence[str]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Per-record weights, and per metric a (n, 3) array of [w·r, w, DR term]."""
    n = len(records)
    weights = np.empty(n)
    rewards = {m: np.empty(n) for m in metrics}
    direct = {m: np.empty(n) for m in metrics}
    predicted = {m: np.empty(n) for m in metrics}
    for i, record in enumerate(records):
        pi = np.asarray(target(record), dtype=np.float64)
        if pi.shape != (len(record.candidates),):
            raise ValueError(f"target pmf has shape {pi.shape} for {len(record.candidates)} candidates")
        weights[i] = pi[record.chosen] / record.propensity
        click_hat = np.asarray(reward_model(record), dtype=np.float64)
        for metric in metrics:
            if metric == "ctr":
                r_hat, reward = click_hat, float(record.clicked)
            else:
                r_hat = np.array(
                    [expected_value(c, p) for c, p in zip(record.candidates, click_hat, strict=True)]
                )
                reward = record.revenue
            rewards[metric][i] = reward
            direct[metric][i] = float(pi @ r_hat)
            predicted[metric][i] = r_hat[record.chosen]
    terms = {
        m: np.column_stack([weights * rewards[m], weights, direct[m] + weights * (rewards[m] - predicted[m])])
        for m in metrics
    }
    return weights, terms


def _estimates_from_sums(sums: np.ndarray, n: int) -> np.ndarray:
    """Rows of [Σ w·r, Σ w, Σ DR term] → rows of [IPS, SNIPS, DR]."""
    with np.errstate(divide="ignore", invalid="ignore"):
        snips_values = np.where(sums[..., 1] > 0, sums[..., 0] / sums[..., 1], np.nan)
    return np.stack([sums[..., 0] / n, snips_values, sums[..., 2] / n], axis=-1)


def evaluate(
    records: Sequence[LoggedDecision],
    targets: Mapping[str, TargetPolicy],
    reward_model: RewardModel | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    metrics: Sequence[str] = METRICS,
) -> OpeReport:
    """Estimate every target policy's value with IPS, SNIPS and DR plus bootstrap 95% intervals.

    `reward_model` defaults to `EmpiricalCtrModel.fit(records)`.
    """
    if not records:
        raise ValueError("off-policy evaluation needs at least one logged decision")
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; known: {list(METRICS)}")
    model = reward_model or EmpiricalCtrModel.fit(records)
    n = len(records)
    columns, layout, ess = [], [], {}
    for name, target in targets.items():
        weights, terms = _record_terms(records, target, model, metrics)
        ess[name] = effective_sample_size(weights)
        for metric in metrics:
            columns.append(terms[metric])
            layout.append((name, metric))
    stacked = np.stack(columns, axis=1)  # (n, policy×metric, 3)
    points = _estimates_from_sums(stacked.sum(axis=0), n)  # (policy×metric, 3)

    rng = np.random.default_rng(seed)
    flat = stacked.reshape(n, -1)
    block = max(1, _BOOTSTRAP_BLOCK_CELLS // n)
    boot = []
    for start in range(0, n_bootstrap, block):
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=min(block, n_bootstrap - start))
        boot.append(_estimates_from_sums((counts @ flat).reshape(len(counts), *stacked.shape[1:]), n))
    resampled = np.concatenate(boot) if boot else np.full((0, *points.shape), np.nan)
    with np.errstate(invalid="ignore"):
        low = np.nanpercentile(resampled, 2.5, axis=0) if n_bootstrap else np.full(points.shape, np.nan)
        high = np.nanpercentile(resampled, 97.5, axis=0) if n_bootstrap else np.full(points.shape, np.nan)

    estimates: dict[str, dict[str, dict[str, Interval]]] = {
        name: {e: {} for e in ESTIMATORS} for name in targets
    }
    for column, (name, metric) in enumerate(layout):
        for k, estimator in enumerate(ESTIMATORS):
            estimates[name][estimator][metric] = Interval(
                float(points[column, k]), float(low[column, k]), float(high[column, k])
            )
    policies = {name: PolicyEstimate(name, n, ess[name], estimates[name]) for name in targets}
    return OpeReport(n=n, n_bootstrap=n_bootstrap, metrics=tuple(metrics), policies=policies)


def standard_targets(
    challenger: VWPolicy | None = None, greedy_from: VWPolicy | None = None
) -> dict[str, TargetPolicy]:
    """logging, uniform, and where given: `greedy` (of `greedy_from`) and `challenger` (as it serves)."""
    targets: dict[str, TargetPolicy] = {"logging": logging_target, "uniform": uniform_target}
    if greedy_from is not None:
        targets["greedy"] = greedy_target(greedy_from)
    if challenger is not None:
        targets["challenger"] = policy_target(challenger)
    return targets


def evaluate_logs(
    records: Sequence[LoggedDecision],
    challenger_dir: Path | str | None = None,
    greedy_from: VWPolicy | None = None,
    reward_model: RewardModel | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> OpeReport:
    """The `adserve ope` / admin entry: logging, uniform, greedy and challenger on logged decisions.

    `challenger_dir` is a saved policy version directory; `greedy` is the greedy version of
    `greedy_from`, or of the challenger when only a challenger is given.
    """
    from adserve.bandit.policy import VWPolicy

    challenger = VWPolicy.load(challenger_dir) if challenger_dir is not None else None
    targets = standard_targets(challenger, greedy_from or challenger)
    return evaluate(records, targets, reward_model, n_bootstrap=n_bootstrap, seed=seed)


def _cell(interval: Interval, digits: int) -> str:
    if np.isnan(interval.value):
        return "n/a"
    return f"{interval.value:.{digits}f} [{interval.low:.{digits}f}, {interval.high:.{digits}f}]"


def format_table(report: OpeReport, digits: int = 4) -> str:
    """A Markdown table: one row per policy and estimator, one column per metric."""
    names = {"ctr": "CTR", "revenue": "revenue / decision"}
    header = ["policy", "estimator", *(f"{names[m]} [95% CI]" for m in report.metrics), "ESS"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, estimate in report.policies.items():
        for estimator in ESTIMATORS:
            cells = [_cell(estimate.estimates[estimator][m], digits) for m in report.metrics]
            lines.append(
                f"| {name} | {estimator.upper()} | " + " | ".join(cells) + f" | {estimate.ess:,.0f} |"
            )
    return "\n".join(lines)

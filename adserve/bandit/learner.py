"""One learning step of the bandit, without storage: learn a batch progressively, then gate it.

Shared by the Postgres learner (`adserve.learning.learner.learn_once`, the `bandit_learning` job
and `adserve learn`) and the simulator's `full` arm, so both learn with the same semantics:

- a batch holds decisions whose reward window has closed, clicked or not, so positives never
  reach VW ahead of their negatives;
- the learner is the lineage of every batch learned so far (a rejected batch is not lost: the
  next step continues from it), and the champion serves until a learner version passes the gate;
- the gate: the learner's SNIPS value per decision (progressive validation: each record scored by
  a model that has not seen it yet) must have a bootstrap 95 % upper bound at least the
  champion's SNIPS point estimate on the same decisions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Sequence

    from adserve.bandit.policy import VWPolicy
    from adserve.bandit.records import LoggedDecision

__all__ = ["GateResult", "gate", "learn_progressively"]


def learn_progressively(
    learner: VWPolicy, champion: VWPolicy | None, records: Sequence[LoggedDecision]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Learns records one at a time in time order; before each update, takes the learner's pmf
    and the unchanged champion's pmf on the same record. Both lists follow `records`' order."""
    learner_pmfs: list[np.ndarray] = [np.zeros(0)] * len(records)
    champion_pmfs: list[np.ndarray] = [np.zeros(0)] * len(records)
    for position in sorted(range(len(records)), key=lambda i: records[i].context.now):
        record = records[position]
        learner_pmfs[position] = learner.pmf(
            record.context, record.candidates, record.click_probabilities, record.scorer_version
        )
        if champion is not None:
            champion_pmfs[position] = champion.pmf(
                record.context, record.candidates, record.click_probabilities, record.scorer_version
            )
        learner.learn([record])
    return learner_pmfs, champion_pmfs


@dataclass(frozen=True, slots=True)
class GateResult:
    promote: bool
    reason: str
    figures: dict[str, Any] = field(default_factory=dict)


def gate(
    records: Sequence[LoggedDecision],
    learner_pmfs: Sequence[np.ndarray],
    champion_pmfs: Sequence[np.ndarray],
    seed: int = 0,
    metric: str = "revenue",
    n_bootstrap: int = 200,
) -> GateResult:
    """Promote unless the learner is significantly worse than the champion on these records."""
    from adserve.bandit.ope import evaluate, logged_score_model

    position = {id(record): i for i, record in enumerate(records)}
    report = evaluate(
        records,
        {
            "new": lambda r: learner_pmfs[position[id(r)]],
            "champion": lambda r: champion_pmfs[position[id(r)]],
        },
        reward_model=logged_score_model,
        n_bootstrap=n_bootstrap,
        seed=seed,
    )
    new = report.policies["new"].estimates["snips"][metric]
    champion = report.policies["champion"].estimates["snips"][metric]
    figures = {
        name: {
            "snips_revenue": report.policies[name].estimates["snips"]["revenue"].to_dict(),
            "snips_ctr": report.policies[name].estimates["snips"]["ctr"].to_dict(),
            "ess": report.policies[name].ess,
        }
        for name in ("new", "champion")
    }
    if np.isnan(new.high) or np.isnan(champion.value):
        return GateResult(True, "gate: no estimate on this window (zero weights); promoted", figures)
    detail = (
        f"SNIPS {metric}/decision {new.value:.6f} [{new.low:.6f}, {new.high:.6f}] "
        f"vs champion {champion.value:.6f} on {report.n} decisions"
    )
    if new.high >= champion.value:
        return GateResult(True, f"not significantly worse: {detail}", figures)
    return GateResult(False, f"significantly worse: {detail}", figures)

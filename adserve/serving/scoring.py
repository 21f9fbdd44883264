"""The simplest serving policy (adserve.domain.Policy); the empirical CTR scorer that serves before
any interest version does lives in `adserve.learning.empirical_ctr`.

`EpsilonGreedyPolicy`: the candidate with the highest expected revenue gets 1 − ε, and ε is
  spread evenly over all candidates; the chosen candidate's probability is its propensity.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from adserve.domain import Choice, expected_value

if TYPE_CHECKING:
    from collections.abc import Sequence

    from adserve.domain import Candidate, DecisionContext

__all__ = ["EpsilonGreedyPolicy"]


class EpsilonGreedyPolicy:
    objective = "revenue"  # its greedy choice is the highest expected revenue

    def __init__(self, epsilon: float) -> None:
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError("epsilon must be within [0, 1]")
        self.epsilon = epsilon
        self.version = f"epsilon-greedy:{epsilon:g}"

    def choose(
        self,
        context: DecisionContext,
        candidates: Sequence[Candidate],
        click_probabilities: np.ndarray,
        rng: np.random.Generator,
        scorer_version: str | None = None,
    ) -> Choice:
        if not candidates:
            raise ValueError("cannot choose among zero candidates")
        values = np.array(
            [expected_value(c, float(p)) for c, p in zip(candidates, click_probabilities, strict=True)]
        )
        greedy = int(np.argmax(values))
        pmf = np.full(len(candidates), self.epsilon / len(candidates))
        pmf[greedy] += 1.0 - self.epsilon
        index = int(rng.choice(len(candidates), p=pmf))
        return Choice(
            pmf=tuple(float(p) for p in pmf),
            index=index,
            explored=index != greedy,
            details={"expected_value": float(values[index])},
        )

"""The logged decision with its outcome: what learning and off-policy evaluation both read.

The integration builds these from a decision row joined with its reward (`rewards.join_rewards`):
the context and candidates as the policy saw them, the interest model's scores, the pmf the
choice was sampled from, the chosen index, and what it earned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Hashable

    from adserve.domain import Candidate, DecisionContext

__all__ = ["LoggedDecision"]


@dataclass(frozen=True, slots=True)
class LoggedDecision:
    """One served decision and its reward; `context.now` is the decision time.

    `click_probabilities` and `pmf` have one entry per candidate, in the order the policy was
    given them; `pmf` is the logged pmf (the logging policy's, over those candidates).
    `revenue` is in currency units (`rewards.decision_revenue`); `conversion_value` is 0 without
    a conversion.
    """

    context: DecisionContext
    candidates: tuple[Candidate, ...]
    click_probabilities: tuple[float, ...]
    pmf: tuple[float, ...]
    chosen: int
    clicked: bool
    revenue: float
    conversion_value: float = 0.0
    decision_id: Hashable | None = None
    scorer_version: str | None = None  # the scorer whose `click_probabilities` these are

    def __post_init__(self) -> None:
        n = len(self.candidates)
        if n == 0:
            raise ValueError("a logged decision needs at least one candidate")
        if len(self.click_probabilities) != n or len(self.pmf) != n:
            raise ValueError(
                f"decision {self.decision_id}: {n} candidates but {len(self.click_probabilities)} "
                f"scores and {len(self.pmf)} pmf entries"
            )
        if not 0 <= self.chosen < n:
            raise ValueError(
                f"decision {self.decision_id}: chosen index {self.chosen} out of range 0..{n - 1}"
            )
        if not self.pmf[self.chosen] > 0:
            raise ValueError(f"decision {self.decision_id}: logged propensity is {self.pmf[self.chosen]}")

    @property
    def propensity(self) -> float:
        return self.pmf[self.chosen]

    @property
    def chosen_candidate(self) -> Candidate:
        return self.candidates[self.chosen]

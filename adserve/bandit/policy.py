"""The Vowpal Wabbit contextual-bandit policy, layered on the interest model: choose, learn, save.

`VWPolicy` implements `adserve.domain.Policy`. The bandit starts where the model is and corrects
it; it never replaces it:

    predicted cost of action a = model_cost(a) + r(x, a)
    model_cost(a)              = -clip(value(a, P(click)) / revenue_scale, 0, 1)
    r(x, a)                    = VW's learned residual (`--cb_adf`, regression on the chosen action)

VW regresses the residual (observed cost minus the model's predicted cost of the action that was
served) on context × ad features (slot, page, device, geo, hour × creative, campaign, category,
brand). The model's score is an offset, not a feature: before VW has learned anything r = 0 and
the greedy action is the model's best; what VW learns is where the model is wrong for a context.
Because the score is an offset, a retrained interest model does not change what VW's weights
mean (a weight is "this ad in this slot does better than the model says by so much"); each
logged decision is learned against the score it was served with (`LoggedDecision.click_probabilities`),
so after a retrain the residual re-converges to the new version's errors. A different scorer is
another matter: the empirical cold-start scorer's errors (an uncalibrated history lift, no
personal taste) are not the interest model's, so each scorer family has its own residual weights
(`features.scorer_family`; chosen by the `scorer_version` the decision is served or logged with).
The first trained model starts from a zero residual, its own ranking, rather than from
corrections learned against the cold start.

A trained model's residual is added at `model_residual_weight` (0.25) of what VW learned; the cold
start's whole. The model already knows the creative and the user's history, so early on what VW
learns over its scores is mostly the winner's curse of its own picks plus noise, and VW's adaptive
updates learn it fast; shrinking the correction keeps the model's ranking unless VW's evidence
is large. In the simulator (three seeds, 200,000 decisions) 0.25 served 0.725 / 0.709 / 0.741 ×
oracle over the last 20 % against 0.717 / 0.674 / 0.731 with the whole residual and 0.721 / 0.701
/ 0.726 with none (BENCHMARKS.md, "Simulated market").

Exploration is inverse-gap weighting (SquareCB, Foster & Rakhlin 2020) computed here over the
combined predicted costs of the top-K candidates: p(a) = 1 / (K + gamma · (cost(a) − cost_min))
for every non-best action and the rest to the best, with gamma = gamma_initial + gamma_scale ·
n^gamma_exponent (n = examples learned). A large gamma_initial gives the cold start "the model's
ranking with light exploration": exploration costs at most (K − 1) / gamma in expected cost per
decision. Each non-best action's expected cost, gap / (K + gamma · gap), approaches 1 / gamma as
its gap grows, so the candidates the model ranks far below the best cost the most to explore and
are the least likely to be better: only those the model values at least `plausible_share` (0.5)
of the best one's value are explored, the rest of the top-K get probability 0 (K counts the
explored ones). `epsilon_greedy` spreads epsilon evenly over the same candidates instead. Only
the top-K candidates by the model's value go to VW, so latency does not grow with the catalogue;
the rest get probability 0. The pmf computed here is the one sampled from and the one returned in
`Choice.pmf`: the logged propensity is exactly the probability the choice was made with.

Objective and cost
------------------
`objective = "revenue"` (the service's): value(a, p) = bid × p for CPC, bid / 1000 for CPM, and

    cost = -clip((revenue + conversion_weight × conversion_value) / revenue_scale, 0, 1)

where revenue is the bid on a CPC click (0 without) and bid/1000 for a CPM impression. Regressing
on revenue makes the greedy action the one with the highest expected revenue, the objective
itself; one global `revenue_scale` (near the largest CPC bid) keeps every cost in [-1, 0] and the
ordering between campaigns intact; clipping bounds any one update. `objective = "clicks"` (cost
−1 on a click, value = P(click)) is what the simulator's CTR comparison measures. The residual is
learned without importance weights (SquareCB's regression oracle): the logged propensity is for
off-policy evaluation, not for the regression.

Learner and readers
-------------------
One process learns (`learn`, then `save` a version directory); serving processes `load` a
version and `reload` newer ones: the new workspace is built off to the side and swapped in one
reference assignment under the lock, so requests never see a half-loaded model.

One module, past 450 lines, on purpose: the features VW sees, the pmf served and the costs learned
must agree exactly (the logged propensity is the sampling probability), so they are kept side by
side.
"""

from __future__ import annotations

import bisect
import json
import os
import shutil
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import vowpalwabbit

from adserve.bandit.features import MODEL_FAMILY, creative_text, example_lines, scorer_family, shared_line
from adserve.domain import Choice, Pricing

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from adserve.bandit.records import LoggedDecision
    from adserve.domain import Candidate, DecisionContext

__all__ = [
    "MODEL_FILE",
    "POLICY_FILE",
    "CostConfig",
    "Exploration",
    "PolicyConfig",
    "VWPolicy",
    "cost_of",
    "inverse_gap_pmf",
    "list_versions",
    "model_costs",
    "plausible",
    "sample",
    "top_k_indices",
]

MODEL_FILE = "model.vw"
POLICY_FILE = "policy.json"
# Residuals kept per (context text, creative text) between weight changes: a slot's contexts
# repeat (placement, page, device, geo, hour), so most decisions need no VW parse at all.
RESIDUAL_CACHE_SIZE = 100_000
# Candidate lists repeat (a slot's eligible set changes with the catalogue, caps and budgets, not
# per request), so each list's pricing and bids are kept as arrays instead of read per decision.
PRICE_CACHE_SIZE = 1024
_price_lock = threading.Lock()
_price_vectors_of: OrderedDict[tuple[int, ...], tuple[tuple[Candidate, ...], np.ndarray, np.ndarray]] = (
    OrderedDict()
)
# The last tuple of candidates priced, and its vectors: found by identity, without building a key
_last_price_vectors: tuple[tuple[Candidate, ...], np.ndarray, np.ndarray] = ((), np.zeros(0), np.zeros(0))


class Exploration(StrEnum):
    SQUARECB = "squarecb"
    EPSILON_GREEDY = "epsilon_greedy"


@dataclass(frozen=True, slots=True)
class CostConfig:
    """How a logged outcome becomes VW's cost, and a model score the cost it predicts."""

    objective: Literal["revenue", "clicks"] = "revenue"
    revenue_scale: float = 1.0
    conversion_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.objective not in ("revenue", "clicks"):
            raise ValueError(f"objective must be 'revenue' or 'clicks', got {self.objective!r}")
        if not self.revenue_scale > 0:
            raise ValueError(f"revenue_scale must be > 0, got {self.revenue_scale}")
        if self.conversion_weight < 0:
            raise ValueError(f"conversion_weight must be >= 0, got {self.conversion_weight}")


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """Everything that defines a policy's behaviour; saved with every version."""

    exploration: Exploration = Exploration.SQUARECB
    top_k: int = 10
    epsilon: float = 0.05
    gamma_initial: float = 20_000.0
    gamma_scale: float = 20.0
    gamma_exponent: float = 0.5
    learning_rate: float = 0.01
    bit_precision: int = 18
    interactions: tuple[str, ...] = ()
    seed: int = 0
    max_importance_weight: float = 1.0
    # the share of VW's learned correction added to a trained model's costs (the empirical cold
    # start's is added whole): shrinkage of a per-ad residual that is mostly noise at first
    model_residual_weight: float = 0.25
    # a top-K candidate is explored only while the model values it at least this share of the
    # best one's value (0: every top-K candidate): the far ones cost the most and win the least
    plausible_share: float = 0.5
    cost: CostConfig = field(default_factory=CostConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "exploration", Exploration(self.exploration))
        object.__setattr__(self, "interactions", tuple(self.interactions))
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if not 0 <= self.epsilon <= 1:
            raise ValueError(f"epsilon must be in [0, 1], got {self.epsilon}")
        if self.gamma_initial < 0 or self.gamma_scale < 0:
            raise ValueError("gamma_initial and gamma_scale must be >= 0")
        if self.max_importance_weight < 1:
            raise ValueError(f"max_importance_weight must be >= 1, got {self.max_importance_weight}")
        if not 0 <= self.model_residual_weight <= 1:
            raise ValueError(f"model_residual_weight must be in [0, 1], got {self.model_residual_weight}")
        if not 0 <= self.plausible_share <= 1:
            raise ValueError(f"plausible_share must be in [0, 1], got {self.plausible_share}")

    def vw_args(self) -> list[str]:
        """The VW command line of the residual regressor (without model-file arguments)."""
        args = [
            "--cb_adf",
            "--cb_type=mtr",
            "--quiet",
            f"--random_seed={self.seed}",
            f"--bit_precision={self.bit_precision}",
            f"--learning_rate={self.learning_rate}",
        ]
        return args + [f"--interactions={pair}" for pair in self.interactions]

    def gamma(self, examples_learned: int) -> float:
        return self.gamma_initial + self.gamma_scale * max(examples_learned, 0) ** self.gamma_exponent

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["exploration"] = self.exploration.value
        data["interactions"] = list(self.interactions)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PolicyConfig:
        """Build from a settings table or a saved `policy.json`; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown bandit policy settings: {sorted(unknown)}; known: {sorted(known)}")
        values = dict(data)
        if "cost" in values and not isinstance(values["cost"], CostConfig):
            values["cost"] = CostConfig(**values["cost"])
        return cls(**values)


def cost_of(revenue: float, conversion_value: float, config: CostConfig, clicked: bool = False) -> float:
    """VW's cost for one logged outcome (module docstring)."""
    if config.objective == "clicks":
        return -1.0 if clicked else 0.0
    value = (revenue + config.conversion_weight * conversion_value) / config.revenue_scale
    return -min(max(value, 0.0), 1.0)


def _price_vectors(candidates: Sequence[Candidate]) -> tuple[np.ndarray, np.ndarray]:
    """(N,) each candidate's bid where it is priced per click (0 otherwise), and (N,) its value
    where it is priced per thousand impressions (0 otherwise), so a value is one multiply-add;
    kept per list (the list's objects are held with it, so their ids in the key stay theirs)."""
    global _last_price_vectors
    last = _last_price_vectors
    if last[0] is candidates:  # the catalogue's own tuple, decision after decision
        return last[1], last[2]
    key = tuple(map(id, candidates))
    held = _price_vectors_of.get(key)
    if held is not None:
        if isinstance(candidates, tuple):  # a list could change in place under the same identity
            _last_price_vectors = (candidates, held[1], held[2])
        return held[1], held[2]
    cpc = np.fromiter((c.pricing is Pricing.CPC for c in candidates), bool, len(candidates))
    bids = np.fromiter((c.bid for c in candidates), np.float64, len(candidates))
    cpc_bids = np.where(cpc, bids, 0.0)
    cpm_values = np.where(cpc, 0.0, bids / 1000.0)
    if isinstance(candidates, tuple):
        _last_price_vectors = (candidates, cpc_bids, cpm_values)
    with _price_lock:
        _price_vectors_of[key] = (tuple(candidates), cpc_bids, cpm_values)
        while len(_price_vectors_of) > PRICE_CACHE_SIZE:
            _price_vectors_of.popitem(last=False)
    return cpc_bids, cpm_values


def model_values(
    candidates: Sequence[Candidate], click_probabilities: Sequence[float] | np.ndarray, config: CostConfig
) -> np.ndarray:
    """(N,) what the model expects each candidate to earn under the objective: bid × P(click)
    for CPC, bid / 1000 for CPM (0 × P + bid / 1000: the same number)."""
    p = np.asarray(click_probabilities, dtype=np.float64)
    if config.objective == "clicks":
        return p.copy()
    cpc_bids, cpm_values = _price_vectors(candidates)
    values = cpc_bids * p
    values += cpm_values
    return values


def costs_of_values(values: np.ndarray, config: CostConfig) -> np.ndarray:
    """The model's values (`model_values`) on VW's cost scale."""
    if config.objective == "clicks":
        return -values
    return -np.clip(values / config.revenue_scale, 0.0, 1.0)


def model_costs(
    candidates: Sequence[Candidate], click_probabilities: Sequence[float] | np.ndarray, config: CostConfig
) -> np.ndarray:
    """(N,) the cost the model predicts for each candidate, on VW's cost scale."""
    return costs_of_values(model_values(candidates, click_probabilities, config), config)


def top_k_indices(
    candidates: Sequence[Candidate],
    click_probabilities: Sequence[float] | np.ndarray,
    k: int,
    config: CostConfig | None = None,
) -> np.ndarray:
    """Indices of the k candidates the model values most, in their original order.

    Ties keep the earlier candidate (stable sort), so the learner rebuilds the same set from
    the logged scores that serving used.
    """
    if len(candidates) <= k:
        return np.arange(len(candidates))
    values = model_values(candidates, click_probabilities, config or CostConfig())
    return _top_of_values(values, k)


def _top_of_values(values: np.ndarray, k: int) -> np.ndarray:
    if len(values) <= k:
        return np.arange(len(values))
    return np.sort(np.argsort(-values, kind="stable")[:k])


def sample(indices: Sequence[int], probabilities: Sequence[float], rng: np.random.Generator) -> int:
    """One index drawn from a pmf given by its non-zero entries (`indices` ascending, their
    `probabilities`): numpy's `Generator.choice(n, p=pmf)` algorithm, one uniform draw against
    the running sum, without its argument checks (the policy built the pmf). The running sum over
    the non-zero entries is the one over the whole pmf (adding 0.0 changes no sum). A draw that
    rounds onto the total takes the last non-zero entry, never a candidate of probability 0."""
    cumulative = 0.0
    cdf = []
    for p in probabilities:
        cumulative += p
        cdf.append(cumulative)
    position = bisect.bisect_right(cdf, rng.random() * cumulative)
    return indices[min(position, len(indices) - 1)]


def plausible(values: Sequence[float], greedy: int, share: float) -> list[int]:
    """Positions of the candidates worth exploring: those the model values at least `share` of
    its best value, and the greedy one (which VW's correction may have moved below that)."""
    floor = share * max(values)
    return [i for i, value in enumerate(values) if value >= floor or i == greedy]


def inverse_gap_pmf(costs: Sequence[float], gamma: float) -> list[float]:
    """SquareCB's pmf over predicted costs: 1 / (K + gamma · gap) for each non-best action."""
    k = len(costs)
    best = _argmin(costs)
    lowest = costs[best]
    pmf = [1.0 / (k + gamma * (cost - lowest)) for cost in costs]
    pmf[best] = 0.0
    pmf[best] = 1.0 - sum(pmf)
    return pmf


def _argmin(values: Sequence[float]) -> int:
    """The first position of the smallest value, as `np.argmin`."""
    return min(range(len(values)), key=values.__getitem__)


def list_versions(root: Path) -> list[str]:
    """Saved policy versions under `<root>/bandit/`, oldest first (versions sort by time)."""
    base = Path(root) / "bandit"
    if not base.is_dir():
        return []
    return sorted(
        p.name for p in base.iterdir() if (p / POLICY_FILE).is_file() and not p.name.startswith(".")
    )


def _new_version() -> str:
    now = time.time()
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now % 1 * 1e6):06d}Z"


class VWPolicy:
    """The model's ranking corrected by a VW residual, explored by inverse-gap weighting.

    Thread-safe (one workspace behind one lock). `examples_learned` counts every example this
    policy has learned, across saves and loads; `data_window` is the (first, last) decision time
    learned from, or None; `scorer_versions` counts the examples learned per scorer version.
    """

    def __init__(self, config: PolicyConfig | None = None, version: str = "untrained") -> None:
        self.config = config or PolicyConfig()
        self.version = version
        self.examples_learned = 0
        self.data_window: tuple[float, float] | None = None
        self.scorer_versions: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._workspace = vowpalwabbit.Workspace(arg_list=self.config.vw_args())
        self._residuals: dict[tuple[str, str], float] = {}

    @property
    def objective(self) -> str:
        """What the choice maximises: "revenue" or "clicks" (`[bandit] objective`)."""
        return self.config.cost.objective

    @property
    def gamma(self) -> float:
        return self.config.gamma(self.examples_learned)

    # -- serving ---------------------------------------------------------------------------

    def residuals(
        self, context: DecisionContext, candidates: Sequence[Candidate], family: str = MODEL_FAMILY
    ) -> np.ndarray:
        """(N,) VW's learned correction to the model's predicted cost of each candidate, for the
        scorer family whose scores it corrects (`features.scorer_family`).

        In `--cb_adf` regression each action is scored on its own features with the shared ones,
        independently of the other actions, so a residual is a pure function of (context text,
        creative text) until the weights change (`learn`, `reload`): it is cached on that key and
        only the candidates not seen in this context go through VW's parser.
        """
        return np.asarray(self._residual_list(context, candidates, family), dtype=np.float64)

    def _residual_list(
        self, context: DecisionContext, candidates: Sequence[Candidate], family: str
    ) -> list[float]:
        shared = shared_line(context)
        keys = [(shared, creative_text(candidate, family)) for candidate in candidates]
        with self._lock:
            cache = self._residuals
            values = [cache.get(key) for key in keys]
            missing = [i for i, value in enumerate(values) if value is None]
            if missing:
                workspace = self._workspace
                examples = workspace.parse([shared, *(keys[i][1] for i in missing)])
                try:
                    predicted = workspace.predict(examples)
                finally:
                    workspace.finish_example(examples)
                if len(cache) + len(missing) > RESIDUAL_CACHE_SIZE:
                    cache.clear()  # bounded memory; contexts repeat, so it refills in seconds
                for i, value in zip(missing, predicted, strict=True):
                    values[i] = cache[keys[i]] = float(value)
        return values  # type: ignore[return-value]  # every None was filled

    def _checked(self, candidates: Sequence[Candidate], click_probabilities: Any) -> np.ndarray:
        if len(candidates) == 0:
            raise ValueError("cannot choose among zero candidates")
        if len(click_probabilities) != len(candidates):
            raise ValueError(
                f"{len(candidates)} candidates but {len(click_probabilities)} click probabilities"
            )
        scores = np.asarray(click_probabilities, dtype=np.float64)
        # min and max are NaN when any score is, and NaN fails both comparisons
        if not (scores.min() >= 0.0 and scores.max() <= 1.0):
            raise ValueError(
                f"click probabilities must lie in [0, 1], got {scores[~((scores >= 0) & (scores <= 1))]}"
            )
        return scores

    def _pmf_and_greedy(
        self,
        context: DecisionContext,
        candidates: Sequence[Candidate],
        click_probabilities: Any,
        scorer_version: str | None,
    ) -> tuple[list[float], int, list[int], list[float]]:
        """The pmf over all candidates (a list: 0.0 outside the explored ones), the greedy index,
        and the explored candidates' indices (ascending) with their probabilities.

        Past the top-K selection everything is on K (10) numbers, where Python floats cost less
        than numpy's per-call overhead (the cost line is `costs_of_values` element by element)."""
        scores = self._checked(candidates, click_probabilities)
        cost_config = self.config.cost
        values = model_values(candidates, scores, cost_config)
        top = _top_of_values(values, self.config.top_k).tolist()  # = top_k_indices, same values
        top_values = values[top].tolist()
        family = scorer_family(scorer_version)
        residuals = self._residual_list(context, [candidates[i] for i in top], family)
        if family == MODEL_FAMILY:
            weight = self.config.model_residual_weight
            residuals = [r * weight for r in residuals]
        if cost_config.objective == "clicks":
            costs = [-v + r for v, r in zip(top_values, residuals, strict=True)]
        else:
            scale = cost_config.revenue_scale
            costs = [-min(max(v / scale, 0.0), 1.0) + r for v, r in zip(top_values, residuals, strict=True)]
        greedy = _argmin(costs)
        explored = plausible(top_values, greedy, self.config.plausible_share)
        if self.config.exploration is Exploration.SQUARECB:
            explored_pmf = inverse_gap_pmf([costs[i] for i in explored], self.gamma)
        else:
            epsilon = self.config.epsilon
            explored_pmf = [epsilon / len(explored)] * len(explored)
            explored_pmf[explored.index(greedy)] += 1.0 - epsilon
        total = sum(explored_pmf)
        # (epsilon 0 leaves the explored non-greedy ones at 0: `sample` takes non-zero entries)
        indices = [top[i] for i, p in zip(explored, explored_pmf, strict=True) if p > 0.0]
        probabilities = [p / total for p in explored_pmf if p > 0.0]
        pmf = [0.0] * len(candidates)
        for i, p in zip(indices, probabilities, strict=True):
            pmf[i] = p
        return pmf, top[greedy], indices, probabilities

    def pmf(
        self,
        context: DecisionContext,
        candidates: Sequence[Candidate],
        click_probabilities: Sequence[float] | np.ndarray,
        scorer_version: str | None = None,
    ) -> np.ndarray:
        """(N,) float64 pmf over all given candidates: exploring over the top-K, 0 elsewhere;
        `scorer_version` is the scorer that gave `click_probabilities` (its family's residual)."""
        pmf = self._pmf_and_greedy(context, candidates, click_probabilities, scorer_version)[0]
        return np.asarray(pmf, dtype=np.float64)

    def choose(
        self,
        context: DecisionContext,
        candidates: Sequence[Candidate],
        click_probabilities: np.ndarray,
        rng: np.random.Generator,
        scorer_version: str | None = None,
    ) -> Choice:
        """Sample one candidate from `pmf`; the returned `Choice.pmf` is that exact pmf."""
        pmf, greedy, indices, probabilities = self._pmf_and_greedy(
            context, candidates, click_probabilities, scorer_version
        )
        index = sample(indices, probabilities, rng)
        return Choice(
            pmf=tuple(pmf),
            index=index,
            explored=index != greedy,
            details={
                "greedy_index": float(greedy),
                "actions_scored": float(min(len(pmf), self.config.top_k)),
                "gamma": self.gamma,
            },
        )

    # -- learning --------------------------------------------------------------------------

    def learn(self, records: Iterable[LoggedDecision]) -> int:
        """Learn from labelled decisions in decision-time order; returns how many were learned.

        Each example holds the top-K actions rebuilt from the logged scores (plus the chosen one
        if the top-K changed since serving); the chosen action is labelled with the residual of
        its observed cost against the cost its logged score predicted.
        """
        ordered = sorted(records, key=lambda r: r.context.now)
        for record in ordered:
            lines = self._labelled_lines(record)
            with self._lock:
                self._residuals.clear()
                examples = self._workspace.parse(lines)
                try:
                    self._workspace.learn(examples)
                finally:
                    self._workspace.finish_example(examples)
            self.scorer_versions[record.scorer_version or "unknown"] += 1
        if ordered:
            first, last = ordered[0].context.now, ordered[-1].context.now
            if self.data_window is not None:
                first, last = min(first, self.data_window[0]), max(last, self.data_window[1])
            self.data_window = (first, last)
            self.examples_learned += len(ordered)
        return len(ordered)

    def _labelled_lines(self, record: LoggedDecision) -> list[str]:
        cost_config = self.config.cost
        top = top_k_indices(record.candidates, record.click_probabilities, self.config.top_k, cost_config)
        if record.chosen not in top:
            top = np.sort(np.append(top, record.chosen))
        chosen_position = int(np.searchsorted(top, record.chosen))
        chosen = record.candidates[record.chosen]
        predicted = model_costs([chosen], [record.click_probabilities[record.chosen]], cost_config)[0]
        observed = cost_of(record.revenue, record.conversion_value, cost_config, record.clicked)
        # VW weights the regression by 1 / probability: the logged propensity, floored so no
        # weight exceeds max_importance_weight (1: an unweighted regression, SquareCB's oracle)
        probability = max(record.propensity, 1.0 / self.config.max_importance_weight)
        return example_lines(
            record.context,
            [record.candidates[i] for i in top],
            labelled=(chosen_position, observed - float(predicted), min(probability, 1.0)),
            family=scorer_family(record.scorer_version),
        )

    # -- persistence -----------------------------------------------------------------------

    def save(self, root: Path | str, version: str | None = None) -> Path:
        """Write `<root>/bandit/<version>/` (model.vw + policy.json) atomically; returns the dir.

        The directory appears complete or not at all (written beside it, then renamed), so a
        server polling for new versions never loads a half-written one.
        """
        version = version or _new_version()
        base = Path(root) / "bandit"
        target = base / version
        if target.exists():
            raise FileExistsError(f"policy version {version} already exists at {target}")
        staging = base / f".staging-{version}-{os.getpid()}"
        staging.mkdir(parents=True)
        try:
            with self._lock:
                self._workspace.save(str(staging / MODEL_FILE))
                metadata = {
                    "version": version,
                    "config": self.config.to_dict(),
                    "examples_learned": self.examples_learned,
                    "data_window": list(self.data_window) if self.data_window else None,
                    "scorer_versions": dict(self.scorer_versions),
                    "saved_at": time.time(),
                    "vowpalwabbit": vowpalwabbit.__version__,
                    "vw_args": self.config.vw_args(),
                }
            (staging / POLICY_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True))
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self.version = version
        return target

    @classmethod
    def load(cls, directory: Path | str) -> VWPolicy:
        """Rebuild a policy from a version directory alone (config, counters and VW weights)."""
        policy = cls.__new__(cls)
        policy._lock = threading.Lock()
        policy._residuals = {}
        policy._adopt(cls._read(Path(directory)))
        return policy

    def reload(self, directory: Path | str) -> None:
        """Hot-swap to another saved version: build it off to the side, then swap one reference."""
        state = self._read(Path(directory))
        with self._lock:
            old = self._workspace
            self._adopt(state)
        old.finish()

    def _adopt(self, state: _SavedState) -> None:
        self.config, self.version, self.examples_learned = state.config, state.version, state.learned
        self.data_window, self.scorer_versions = state.window, state.scorer_versions
        self._workspace = state.workspace
        self._residuals = {}

    @staticmethod
    def _read(directory: Path) -> _SavedState:
        metadata_path, model_path = directory / POLICY_FILE, directory / MODEL_FILE
        if not metadata_path.is_file() or not model_path.is_file():
            raise FileNotFoundError(
                f"{directory} is not a saved bandit policy (needs {POLICY_FILE} and {MODEL_FILE})"
            )
        metadata = json.loads(metadata_path.read_text())
        config = PolicyConfig.from_dict(metadata["config"])
        workspace = vowpalwabbit.Workspace(
            arg_list=[*config.vw_args(), "--initial_regressor", str(model_path)]
        )
        window = metadata.get("data_window")
        return _SavedState(
            config=config,
            version=metadata["version"],
            learned=int(metadata["examples_learned"]),
            window=(float(window[0]), float(window[1])) if window else None,
            scorer_versions=Counter(metadata.get("scorer_versions") or {}),
            workspace=workspace,
        )

    def close(self) -> None:
        with self._lock:
            self._workspace.finish()


@dataclass(frozen=True, slots=True)
class _SavedState:
    config: PolicyConfig
    version: str
    learned: int
    window: tuple[float, float] | None
    scorer_versions: Counter[str]
    workspace: vowpalwabbit.Workspace

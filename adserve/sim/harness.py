"""Run any `Scorer` + `Policy` against the simulated world in-process: no HTTP, no database.

Per ad request the harness builds the `DecisionContext` the server would (consented history
included) and the eligible `Candidate`s (size and targeting; budgets, pacing and caps are left to
the serving pipeline), asks the scorer and policy, then samples the outcome from the oracle with the
request's fixed random draws. It records what the policy did next to what the oracle and a
uniform-random policy would expect on the very same request, so regret needs no second run.

Learners plug in through hooks: `on_page(page)` sees every page and its behaviour events,
`on_outcome(decision, clicked)` every decision and its outcome (bandit updates, periodic retraining).

One module, past 450 lines, on purpose: the replay loop, its bookkeeping of regret and the learner
hooks share the per-request random draws; split, a change to one could silently change another arm's
draws.
"""

from __future__ import annotations

import csv
import itertools
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

from adserve.domain import Candidate, Choice, DecisionContext, Pricing
from adserve.sim.oracle import Objective, Oracle, expected_values
from adserve.sim.traffic import Traffic

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

    from adserve.domain import Policy, Scorer
    from adserve.sim.traffic import AdOutcome, AdRequest, PageView
    from adserve.sim.world import Placement, User, World

__all__ = [
    "ConstantScorer",
    "GreedyPolicy",
    "OraclePolicy",
    "OracleScorer",
    "OutcomeHook",
    "PageHook",
    "SimDecision",
    "SimResults",
    "UniformRandomPolicy",
    "WindowStats",
    "run",
]


@dataclass(frozen=True, slots=True)
class SimDecision:
    """One decision as a learner sees it after the fact."""

    index: int
    page: PageView
    request: AdRequest
    context: DecisionContext
    candidates: list[Candidate]
    scores: np.ndarray  # the scorer's P(click), one per candidate
    choice: Choice
    outcome: AdOutcome
    revenue: float
    scorer_version: str = ""  # the scorer that produced `scores`

    @property
    def chosen(self) -> Candidate:
        return self.candidates[self.choice.index]


# A learner's hooks: every page (behaviour events included), and every decision with its click.
PageHook = Callable[["PageView"], None]
OutcomeHook = Callable[[SimDecision, bool], None]


@dataclass(frozen=True, slots=True)
class WindowStats:
    """Aggregates over decisions [start, end). CTRs are per decision; regret is in expected clicks."""

    start: int
    end: int
    decisions: int
    clicks: int
    ctr: float  # realised
    expected_ctr: float  # the oracle's P(click) of what was chosen: same mean, far less noise
    oracle_ctr: float  # best P(click) per request
    uniform_ctr: float  # mean P(click) over the candidates per request
    revenue: float
    expected_revenue: float
    oracle_revenue: float  # best expected revenue per request
    regret: float  # Σ (oracle P(click) - chosen P(click)) in this window
    cumulative_regret: float  # the same from decision 0 to `end`


@dataclass(slots=True)
class SimResults:
    """Per-decision columns (equal length) and the summaries a demo or a comparison prints."""

    scorer_version: str
    policy_version: str
    ts: np.ndarray
    user_key: list[str]
    placement: list[str]
    chosen_creative_id: np.ndarray
    propensity: np.ndarray
    pmf: list[tuple[float, ...]]
    explored: np.ndarray
    clicked: np.ndarray
    converted: np.ndarray
    revenue: np.ndarray
    chosen_p: np.ndarray
    oracle_p: np.ndarray
    uniform_p: np.ndarray
    expected_revenue: np.ndarray
    oracle_revenue: np.ndarray
    n_candidates: np.ndarray
    elapsed_s: float = 0.0
    pages: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ts)

    @property
    def ctr(self) -> float:
        return float(self.clicked.mean()) if len(self) else 0.0

    @property
    def expected_ctr(self) -> float:
        return float(self.chosen_p.mean()) if len(self) else 0.0

    @property
    def oracle_ctr(self) -> float:
        return float(self.oracle_p.mean()) if len(self) else 0.0

    @property
    def uniform_ctr(self) -> float:
        return float(self.uniform_p.mean()) if len(self) else 0.0

    @property
    def total_revenue(self) -> float:
        return float(self.revenue.sum())

    @property
    def regret(self) -> float:
        """Expected clicks lost to the CTR oracle over the whole run."""
        return float((self.oracle_p - self.chosen_p).sum())

    @property
    def decisions_per_second(self) -> float:
        return len(self) / self.elapsed_s if self.elapsed_s > 0 else float("inf")

    def window(self, start: int, end: int) -> WindowStats:
        s = slice(start, end)
        n = max(end - start, 0)
        regret = float((self.oracle_p[s] - self.chosen_p[s]).sum())
        cumulative = float((self.oracle_p[:end] - self.chosen_p[:end]).sum())

        def mean(a: np.ndarray) -> float:
            return float(a[s].mean()) if n else 0.0

        return WindowStats(
            start=start,
            end=end,
            decisions=n,
            clicks=int(self.clicked[s].sum()),
            ctr=mean(self.clicked),
            expected_ctr=mean(self.chosen_p),
            oracle_ctr=mean(self.oracle_p),
            uniform_ctr=mean(self.uniform_p),
            revenue=float(self.revenue[s].sum()),
            expected_revenue=float(self.expected_revenue[s].sum()),
            oracle_revenue=float(self.oracle_revenue[s].sum()),
            regret=regret,
            cumulative_regret=cumulative,
        )

    def windows(self, n_windows: int = 10) -> list[WindowStats]:
        """The run cut into `n_windows` equal consecutive windows (learning curves)."""
        edges = np.linspace(0, len(self), n_windows + 1).astype(int)
        return [self.window(int(a), int(b)) for a, b in itertools.pairwise(edges)]

    def last(self, fraction: float) -> WindowStats:
        """The final `fraction` of decisions, e.g. `last(0.2)` for "CTR over the last 20%"."""
        return self.window(round(len(self) * (1 - fraction)), len(self))

    def summary(self) -> dict[str, float | str]:
        return {
            "scorer": self.scorer_version,
            "policy": self.policy_version,
            "decisions": len(self),
            "clicks": int(self.clicked.sum()),
            "ctr": self.ctr,
            "expected_ctr": self.expected_ctr,
            "oracle_ctr": self.oracle_ctr,
            "uniform_ctr": self.uniform_ctr,
            "revenue": self.total_revenue,
            "oracle_revenue": float(self.oracle_revenue.sum()),
            "regret": self.regret,
            "conversions": int(self.converted.sum()),
            "decisions_per_second": self.decisions_per_second,
        }

    def to_csv(self, path: str | Path) -> None:
        """One row per decision."""
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(
                ["decision", "ts", "user", "placement", "chosen_creative_id", "propensity", "explored",
                 "clicked", "converted", "revenue", "chosen_p", "oracle_p", "uniform_p", "n_candidates"]
            )  # fmt: skip
            for i in range(len(self)):
                writer.writerow(
                    [i, f"{self.ts[i]:.3f}", self.user_key[i], self.placement[i], int(self.chosen_creative_id[i]),
                     f"{self.propensity[i]:.6g}", int(self.explored[i]), int(self.clicked[i]),
                     int(self.converted[i]), f"{self.revenue[i]:.6g}", f"{self.chosen_p[i]:.6g}",
                     f"{self.oracle_p[i]:.6g}", f"{self.uniform_p[i]:.6g}", int(self.n_candidates[i])]
                )  # fmt: skip

    def windows_to_csv(self, path: str | Path, n_windows: int = 20, label: str | None = None) -> None:
        """One row per window, labelled (default: the policy version) so runs can be concatenated."""
        rows = [asdict(w) for w in self.windows(n_windows)]
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["label", *rows[0].keys()] if rows else ["label"])
            writer.writeheader()
            for row in rows:
                writer.writerow({"label": label or self.policy_version, **row})


def run(
    world: World,
    scorer: Scorer,
    policy: Policy,
    n_decisions: int,
    *,
    oracle: Oracle | None = None,
    history_limit: int = 50,
    policy_seed: int | None = None,
    on_page: Iterable[PageHook] = (),
    on_outcome: Iterable[OutcomeHook] = (),
) -> SimResults:
    """Serves `n_decisions` ad requests of a fresh `Traffic(world)` with `scorer` and `policy`.

    The policy's random numbers come from their own stream (`policy_seed`, default derived from the
    world seed), so they never shift the traffic or click draws.
    """
    oracle = oracle or Oracle(world)
    traffic = Traffic(world, oracle)
    policy_rng = np.random.default_rng(
        policy_seed if policy_seed is not None else np.random.SeedSequence([world.config.seed, 1])
    )
    page_hooks = list(on_page)
    outcome_hooks = list(on_outcome)
    slots: dict[tuple[str, str, str], _Slot] = {}
    n = n_decisions
    cols = _Columns(n)
    i = 0
    started = time.perf_counter()
    while i < n:
        page = next(traffic)
        for hook in page_hooks:
            hook(page)
        user = page.user
        for request in page.ad_requests:
            if i >= n:
                break
            key = (request.placement.key, user.device, user.geo)
            slot = slots.get(key) or slots.setdefault(key, _Slot.build(world, request.placement, user))
            candidates = slot.candidates
            if not candidates:
                continue
            context = page.context(request, history_limit)
            scorer_version = scorer.version
            scores = np.asarray(scorer.score(context, candidates), dtype=np.float64)
            choice = policy.choose(context, candidates, scores, policy_rng, scorer_version=scorer_version)
            truth = oracle.click_probabilities(user, slot.creative_ids, request.placement, page.ts)
            values = slot.revenue_per_click * truth + slot.revenue_per_impression
            chosen = candidates[choice.index]
            outcome = traffic.outcome(page, request, chosen.creative_id, float(truth[choice.index]))
            if chosen.pricing is Pricing.CPC:
                revenue = chosen.bid if outcome.clicked else 0.0
            else:
                revenue = chosen.bid / 1000.0
            cols.record(i, page, request, choice, chosen, outcome, revenue, truth, values)
            if outcome_hooks:
                decision = SimDecision(
                    i, page, request, context, candidates, scores, choice, outcome, revenue, scorer_version
                )
                for hook in outcome_hooks:
                    hook(decision, outcome.clicked)
            i += 1
    elapsed = time.perf_counter() - started
    return cols.results(i, scorer.version, policy.version, elapsed, traffic.pages_served)


@dataclass(frozen=True, slots=True)
class _Slot:
    """Eligible candidates of one placement for one device and geo, with their revenue vectors.

    The candidate list is shared by every decision on the slot: scorers and policies must not mutate it.
    """

    candidates: list[Candidate]
    creative_ids: np.ndarray
    revenue_per_click: np.ndarray  # the bid for CPC, 0 for CPM
    revenue_per_impression: np.ndarray  # a thousandth of the price for CPM, 0 for CPC

    @classmethod
    def build(cls, world: World, placement: Placement, user: User) -> _Slot:
        candidates = world.eligible_candidates(placement, user.device, user.geo)
        cpc = np.array([c.pricing is Pricing.CPC for c in candidates], dtype=bool)
        bids = np.array([c.bid for c in candidates], dtype=np.float64)
        return cls(
            candidates,
            np.array([c.creative_id for c in candidates], dtype=np.int64),
            np.where(cpc, bids, 0.0),
            np.where(cpc, 0.0, bids / 1000.0),
        )


class _Columns:
    """Preallocated per-decision columns; filled by index to keep the loop cheap."""

    def __init__(self, n: int) -> None:
        self.ts = np.zeros(n)
        self.user_key: list[str] = []
        self.placement: list[str] = []
        self.chosen = np.zeros(n, dtype=np.int64)
        self.propensity = np.zeros(n)
        self.pmf: list[tuple[float, ...]] = []
        self.explored = np.zeros(n, dtype=bool)
        self.clicked = np.zeros(n, dtype=bool)
        self.converted = np.zeros(n, dtype=bool)
        self.revenue = np.zeros(n)
        self.chosen_p = np.zeros(n)
        self.oracle_p = np.zeros(n)
        self.uniform_p = np.zeros(n)
        self.expected_revenue = np.zeros(n)
        self.oracle_revenue = np.zeros(n)
        self.n_candidates = np.zeros(n, dtype=np.int64)

    def record(
        self,
        i: int,
        page: PageView,
        request: AdRequest,
        choice: Choice,
        chosen: Candidate,
        outcome: AdOutcome,
        revenue: float,
        truth: np.ndarray,
        values: np.ndarray,
    ) -> None:
        self.ts[i] = page.ts
        self.user_key.append(page.user.key)
        self.placement.append(request.placement.key)
        self.chosen[i] = chosen.creative_id
        self.propensity[i] = choice.pmf[choice.index]
        self.pmf.append(choice.pmf)
        self.explored[i] = choice.explored
        self.clicked[i] = outcome.clicked
        self.converted[i] = outcome.converted
        self.revenue[i] = revenue
        self.chosen_p[i] = truth[choice.index]
        self.oracle_p[i] = truth.max()
        self.uniform_p[i] = truth.mean()
        self.expected_revenue[i] = values[choice.index]
        self.oracle_revenue[i] = values.max()
        self.n_candidates[i] = len(truth)

    def results(
        self, n: int, scorer_version: str, policy_version: str, elapsed: float, pages: int
    ) -> SimResults:
        return SimResults(
            scorer_version=scorer_version,
            policy_version=policy_version,
            ts=self.ts[:n],
            user_key=self.user_key,
            placement=self.placement,
            chosen_creative_id=self.chosen[:n],
            propensity=self.propensity[:n],
            pmf=self.pmf,
            explored=self.explored[:n],
            clicked=self.clicked[:n],
            converted=self.converted[:n],
            revenue=self.revenue[:n],
            chosen_p=self.chosen_p[:n],
            oracle_p=self.oracle_p[:n],
            uniform_p=self.uniform_p[:n],
            expected_revenue=self.expected_revenue[:n],
            oracle_revenue=self.oracle_revenue[:n],
            n_candidates=self.n_candidates[:n],
            elapsed_s=elapsed,
            pages=pages,
        )


# ---- reference scorers and policies -----------------------------------------------------------


class ConstantScorer:
    """The same P(click) for everything: the trivial scorer for uniform baselines and benchmarks."""

    def __init__(self, click_probability: float = 0.01) -> None:
        self.click_probability = click_probability
        self.version = f"constant-{click_probability:g}"

    def score(self, context: DecisionContext, candidates: list[Candidate]) -> np.ndarray:
        return np.full(len(candidates), self.click_probability)


class OracleScorer:
    """The world's true P(click). For benchmarks and tests only: no real scorer can know it."""

    version = "oracle"

    def __init__(self, world: World, oracle: Oracle | None = None) -> None:
        self.world = world
        self.oracle = oracle or Oracle(world)

    def score(self, context: DecisionContext, candidates: list[Candidate]) -> np.ndarray:
        if context.user_key is None:
            raise ValueError("the oracle needs the simulated user's key in the context")
        user = self.world.user_by_key[context.user_key]
        placement = self.world.placement_by_key[context.placement]
        ids = [c.creative_id for c in candidates]
        return self.oracle.click_probabilities(user, ids, placement, context.now)


class UniformRandomPolicy:
    """Every candidate with the same probability: the floor any learner must beat."""

    version = "uniform"

    def choose(
        self,
        context: DecisionContext,
        candidates: list[Candidate],
        click_probabilities: np.ndarray,
        rng: np.random.Generator,
        scorer_version: str | None = None,
    ) -> Choice:
        n = len(candidates)
        return Choice(pmf=(1.0 / n,) * n, index=int(rng.integers(n)), explored=True)


class GreedyPolicy:
    """Always the best-scored candidate, by P(click) or by expected revenue; no exploration."""

    def __init__(self, objective: Objective = "ctr") -> None:
        self.objective: Literal["ctr", "revenue"] = objective
        self.version = f"greedy-{objective}"

    def choose(
        self,
        context: DecisionContext,
        candidates: list[Candidate],
        click_probabilities: np.ndarray,
        rng: np.random.Generator,
        scorer_version: str | None = None,
    ) -> Choice:
        target = (
            click_probabilities
            if self.objective == "ctr"
            else expected_values(candidates, click_probabilities)
        )
        index = int(np.argmax(target))
        return Choice(pmf=_one_hot(len(candidates), index), index=index)


class OraclePolicy:
    """Picks what the oracle says is best, ignoring the scorer. For benchmarks and tests only."""

    def __init__(self, world: World, oracle: Oracle | None = None, objective: Objective = "ctr") -> None:
        self._scorer = OracleScorer(world, oracle)
        self._greedy = GreedyPolicy(objective)
        self.version = f"oracle-{objective}"

    def choose(
        self,
        context: DecisionContext,
        candidates: list[Candidate],
        click_probabilities: np.ndarray,
        rng: np.random.Generator,
        scorer_version: str | None = None,
    ) -> Choice:
        truth = self._scorer.score(context, candidates)
        return self._greedy.choose(context, candidates, truth, rng, scorer_version=self._scorer.version)


def _one_hot(n: int, index: int) -> tuple[float, ...]:
    pmf = [0.0] * n
    pmf[index] = 1.0
    return tuple(pmf)

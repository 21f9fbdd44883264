from __future__ import annotations

import csv
from collections import defaultdict
from typing import TYPE_CHECKING

import numpy as np
import pytest

from adserve.domain import Candidate, Choice, DecisionContext, Policy, Scorer
from adserve.sim.harness import (
    ConstantScorer,
    GreedyPolicy,
    OraclePolicy,
    OracleScorer,
    SimDecision,
    SimResults,
    UniformRandomPolicy,
    run,
)
from adserve.sim.world import World, WorldConfig

if TYPE_CHECKING:
    from pathlib import Path

    from adserve.sim.traffic import PageView

N = 5_000


@pytest.fixture(scope="module")
def world() -> World:
    return World(WorldConfig(seed=41, n_users=1000))


@pytest.fixture(scope="module")
def uniform(world: World) -> SimResults:
    return run(world, ConstantScorer(), UniformRandomPolicy(), N)


@pytest.fixture(scope="module")
def oracle(world: World) -> SimResults:
    return run(world, ConstantScorer(), OraclePolicy(world), N)


def test_reference_policies_implement_the_protocols(world: World) -> None:
    for policy in (UniformRandomPolicy(), GreedyPolicy(), OraclePolicy(world)):
        assert isinstance(policy, Policy)
    for scorer in (ConstantScorer(), OracleScorer(world)):
        assert isinstance(scorer, Scorer)


def test_runs_are_reproducible(world: World, uniform: SimResults) -> None:
    again = run(world, ConstantScorer(), UniformRandomPolicy(), N)
    for column in ("ts", "chosen_creative_id", "propensity", "clicked", "revenue", "chosen_p", "oracle_p"):
        np.testing.assert_array_equal(getattr(again, column), getattr(uniform, column))
    assert again.user_key == uniform.user_key and again.pmf == uniform.pmf
    other_seed = run(world, ConstantScorer(), UniformRandomPolicy(), N, policy_seed=99)
    assert not np.array_equal(other_seed.chosen_creative_id, uniform.chosen_creative_id)
    np.testing.assert_array_equal(other_seed.oracle_p, uniform.oracle_p)  # same traffic all the same


def test_policies_see_the_same_users_and_requests(uniform: SimResults, oracle: SimResults) -> None:
    assert len(uniform) == len(oracle) == N
    assert uniform.user_key == oracle.user_key and uniform.placement == oracle.placement
    np.testing.assert_array_equal(uniform.ts, oracle.ts)
    np.testing.assert_array_equal(uniform.oracle_p, oracle.oracle_p)
    np.testing.assert_array_equal(uniform.uniform_p, oracle.uniform_p)
    # Common random numbers: where uniform got a click the oracle's better ad got one too.
    assert not (uniform.clicked & ~oracle.clicked).any()
    assert oracle.clicked.sum() > 2 * uniform.clicked.sum()


def test_oracle_and_uniform_results_match_their_expectations(uniform: SimResults, oracle: SimResults) -> None:
    np.testing.assert_array_equal(oracle.chosen_p, oracle.oracle_p)
    assert oracle.regret == 0.0
    assert (oracle.propensity == 1.0).all()
    np.testing.assert_allclose(uniform.propensity, 1.0 / uniform.n_candidates)
    # Realised clicks agree with the oracle's probabilities of what was chosen.
    for results in (uniform, oracle):
        p = results.chosen_p
        assert abs(results.clicked.sum() - p.sum()) < 4 * np.sqrt((p * (1 - p)).sum())
    # A uniform policy's expected CTR is the uniform CTR, up to its own sampling noise.
    assert uniform.expected_ctr == pytest.approx(uniform.uniform_ctr, rel=0.1)
    assert uniform.regret > 0.6 * (uniform.oracle_ctr - uniform.uniform_ctr) * N


def test_greedy_on_true_scores_reaches_the_revenue_optimum(world: World, oracle: SimResults) -> None:
    by_revenue = run(world, OracleScorer(world), GreedyPolicy("revenue"), 2000)
    np.testing.assert_allclose(by_revenue.expected_revenue, by_revenue.oracle_revenue)
    assert by_revenue.oracle_revenue.sum() >= oracle.expected_revenue[:2000].sum()
    cpm = [c for c in world.candidates if c.pricing == "cpm"]
    assert cpm, "the world should have CPM campaigns to make revenue and CTR differ"


def test_windows_cover_the_run_and_regret_accumulates(uniform: SimResults) -> None:
    windows = uniform.windows(10)
    assert [w.start for w in windows[1:]] == [w.end for w in windows[:-1]]
    assert sum(w.decisions for w in windows) == N and sum(w.clicks for w in windows) == uniform.clicked.sum()
    assert windows[-1].cumulative_regret == pytest.approx(uniform.regret)
    assert sum(w.regret for w in windows) == pytest.approx(uniform.regret)
    last = uniform.last(0.2)
    assert (last.start, last.end) == (N - N // 5, N)
    assert last.ctr == pytest.approx(uniform.clicked[-N // 5 :].mean())
    summary = uniform.summary()
    assert summary["decisions"] == N and summary["ctr"] == uniform.ctr


def test_results_write_csv(uniform: SimResults, tmp_path: Path) -> None:
    decisions, windows = tmp_path / "decisions.csv", tmp_path / "windows.csv"
    uniform.to_csv(decisions)
    uniform.windows_to_csv(windows, n_windows=5)
    with decisions.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == N
    assert sum(int(r["clicked"]) for r in rows) == uniform.clicked.sum()
    assert rows[7]["user"] == uniform.user_key[7]
    with windows.open() as f:
        rows = list(csv.DictReader(f))
    assert [r["label"] for r in rows] == ["uniform"] * 5
    assert sum(int(r["decisions"]) for r in rows) == N


def test_hooks_see_every_page_and_outcome(world: World) -> None:
    pages: list[PageView] = []
    outcomes: list[tuple[SimDecision, bool]] = []
    results = run(
        world,
        ConstantScorer(),
        UniformRandomPolicy(),
        1000,
        on_page=[pages.append],
        on_outcome=[lambda decision, clicked: outcomes.append((decision, clicked))],
    )
    assert len(pages) == results.pages and len(outcomes) == 1000
    assert [d.index for d, _ in outcomes] == list(range(1000))
    assert [c for _, c in outcomes] == results.clicked.tolist()
    decision = outcomes[-1][0]
    assert decision.chosen.creative_id == results.chosen_creative_id[-1]
    assert decision.context.user_key == results.user_key[-1]
    assert decision.outcome.clicked == outcomes[-1][1]


class _CategoryEpsilonGreedy:
    """A learner written here, not in the package: empirical CTR per (page category, ad category).

    Optimistic prior (1 click in 20 impressions) so unexplored pairs get tried first.
    """

    version = "test-epsilon-greedy"

    def __init__(self, epsilon: float) -> None:
        self.epsilon = epsilon
        self.impressions: dict[tuple[str | None, str | None], float] = defaultdict(float)
        self.clicks: dict[tuple[str | None, str | None], float] = defaultdict(float)

    def score(self, context: DecisionContext, candidates: list[Candidate]) -> np.ndarray:
        keys = [(context.page_category, c.category) for c in candidates]
        return np.array([(self.clicks[k] + 1.0) / (self.impressions[k] + 20.0) for k in keys])

    def choose(
        self,
        context: DecisionContext,
        candidates: list[Candidate],
        click_probabilities: np.ndarray,
        rng: np.random.Generator,
        scorer_version: str | None = None,
    ) -> Choice:
        n = len(candidates)
        best = int(np.argmax(click_probabilities))
        pmf = [self.epsilon / n] * n
        pmf[best] += 1 - self.epsilon
        index = int(rng.integers(n)) if rng.random() < self.epsilon else best
        return Choice(tuple(pmf), index, explored=index != best)

    def learn(self, decision: SimDecision, clicked: bool) -> None:
        key = (decision.context.page_category, decision.chosen.category)
        self.impressions[key] += 1
        self.clicks[key] += clicked


def test_a_simple_learner_beats_uniform_random() -> None:
    world = World(WorldConfig(seed=7))
    n = 20_000
    learner = _CategoryEpsilonGreedy(epsilon=0.05)
    learned = run(world, learner, learner, n, on_outcome=[learner.learn])
    baseline = run(world, ConstantScorer(), UniformRandomPolicy(), n)
    # Two-proportion z-test on realised clicks, same traffic for both.
    p1, p0 = learned.ctr, baseline.ctr
    z = (p1 - p0) / np.sqrt(p1 * (1 - p1) / n + p0 * (1 - p0) / n)
    assert z > 3, (p1, p0)
    # It learned: its second half is better than its first, and well above uniform.
    first, second = learned.window(0, n // 2), learned.window(n // 2, n)
    assert second.expected_ctr > first.expected_ctr
    assert second.expected_ctr > 1.5 * second.uniform_ctr
    # and it is still far from the oracle, which is what the real models are for.
    assert learned.expected_ctr < 0.8 * learned.oracle_ctr

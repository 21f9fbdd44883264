from __future__ import annotations

import numpy as np
import pytest

from adserve.domain import BehaviourEvent, Candidate, DecisionContext, EventType, Pricing
from adserve.learning.empirical_ctr import CreativeCounts, EmpiricalCTRScorer, HistoryProfile
from adserve.serving.scoring import EpsilonGreedyPolicy


def candidate(creative_id: int, category: str | None = None, products=(), pricing=Pricing.CPC, bid=1.0):
    return Candidate(
        creative_id, creative_id, 1, pricing, bid, category=category, product_ids=tuple(products)
    )


def view(item: str, category: str | None) -> BehaviourEvent:
    return BehaviourEvent(EventType.PRODUCT_VIEW, 0.0, item_id=item, category=category)


def test_affinity_counts_category_and_linked_products_once() -> None:
    profile = HistoryProfile(
        (view("a", "shoes"), view("b", "shoes"), view("tent-1", "camping"), view("c", None))
    )
    assert profile.affinity(candidate(1, "shoes")) == pytest.approx(2 / 4)
    # the linked product is in another category: it adds, the shoes views still count
    assert profile.affinity(candidate(2, "shoes", ["tent-1"])) == pytest.approx(3 / 4)
    # a linked product in the same category is not counted twice
    assert profile.affinity(candidate(3, "shoes", ["a"])) == pytest.approx(2 / 4)
    assert profile.affinity(candidate(4, "audio")) == 0.0
    assert HistoryProfile(()).affinity(candidate(5, "shoes")) == 0.0


def test_empirical_ctr_is_smoothed_and_lifted_by_history() -> None:
    scorer = EmpiricalCTRScorer(prior_clicks=1, prior_impressions=100, history_lift=1.0)
    scorer.update(CreativeCounts(impressions={1: 900}, clicks={1: 99}))
    cold = DecisionContext(placement="p", now=0.0)
    scores = scorer.score(cold, [candidate(1, "shoes"), candidate(2, "audio")])
    assert scores == pytest.approx([100 / 1000, 1 / 100])
    warm = DecisionContext(placement="p", now=0.0, history=(view("x", "audio"), view("y", "shoes")))
    lifted = scorer.score(warm, [candidate(1, "shoes"), candidate(2, "audio")])
    assert lifted == pytest.approx([0.1 * 1.5, 0.01 * 1.5])


def test_empirical_scores_kept_between_decisions_follow_counts_histories_and_lists() -> None:
    scorer = EmpiricalCTRScorer(prior_clicks=1, prior_impressions=100, history_lift=1.0)
    scorer.update(CreativeCounts(impressions={1: 900}, clicks={1: 99}))
    served = (candidate(1, "shoes"), candidate(2, "audio"))  # a slot's tuple: kept by identity
    history = (view("x", "audio"), view("y", "shoes"))
    user = DecisionContext(placement="p", now=0.0, user_key="u", history=history)
    assert scorer.score(user, served) == pytest.approx([0.15, 0.015])
    assert scorer.score(user, served) == pytest.approx([0.15, 0.015])
    anonymous = scorer.score(DecisionContext(placement="p", now=0.0), served)
    assert anonymous == pytest.approx([0.1, 0.01])
    with pytest.raises(ValueError):
        anonymous[0] = 1.0  # shared with later decisions: read-only
    # new counts: new smoothed CTRs for the same tuple
    scorer.update(CreativeCounts(impressions={2: 900}, clicks={2: 99}))
    assert scorer.score(user, served) == pytest.approx([0.015, 0.15])
    # the user's behaviour changed: a new history tuple, its own profile
    moved = DecisionContext(placement="p", now=0.0, user_key="u", history=(*history, view("z", "audio")))
    assert scorer.score(moved, served) == pytest.approx([0.01 * (1 + 1 / 3), 0.1 * (1 + 2 / 3)])
    # a list changed in place keeps its identity: its scores follow its content
    changing = [candidate(1, "shoes"), candidate(2, "audio")]
    assert scorer.score(user, changing) == pytest.approx([0.015, 0.15])
    changing.reverse()
    assert scorer.score(user, changing) == pytest.approx([0.15, 0.015])


def test_epsilon_greedy_pmf_and_propensity() -> None:
    policy = EpsilonGreedyPolicy(0.2)
    candidates = [candidate(1, bid=1.0), candidate(2, bid=3.0), candidate(3, pricing=Pricing.CPM, bid=1.0)]
    rng = np.random.default_rng(0)
    choices = [
        policy.choose(DecisionContext("p", 0.0), candidates, np.array([0.1, 0.1, 0.5]), rng)
        for _ in range(4000)
    ]
    assert choices[0].pmf == pytest.approx((0.2 / 3, 0.8 + 0.2 / 3, 0.2 / 3))  # bid 3 × 0.1 is the best
    assert all(c.propensity == c.pmf[c.index] for c in choices)
    assert all(c.explored == (c.index != 1) for c in choices)
    share = np.bincount([c.index for c in choices], minlength=3) / len(choices)
    assert share == pytest.approx(choices[0].pmf, abs=0.03)

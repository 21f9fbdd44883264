from __future__ import annotations

from itertools import islice

import numpy as np
import pytest

from adserve.domain import BehaviourEvent, EventType, expected_value
from adserve.sim.oracle import ClickModel, Oracle
from adserve.sim.traffic import Traffic
from adserve.sim.world import World, WorldConfig


@pytest.fixture(scope="module")
def world() -> World:
    return World(WorldConfig(seed=31, n_users=800))


@pytest.fixture(scope="module")
def served(world: World) -> dict[str, np.ndarray]:
    """Oracle probabilities of every eligible creative on 10,000 real ad requests."""
    oracle = Oracle(world)
    best, mean, every = [], [], []
    requests = 0
    for page in Traffic(world, oracle):
        for request in page.ad_requests:
            candidates = world.eligible_candidates(request.placement, page.user.device, page.user.geo)
            p = oracle.click_probabilities(
                page.user, [c.creative_id for c in candidates], request.placement, page.ts
            )
            expected = oracle.expected_ctr(page.user, candidates, request.placement, page.ts)
            assert expected.oracle == p.max() and expected.uniform == pytest.approx(p.mean())
            best.append(p.max())
            mean.append(p.mean())
            every.append(p)
            requests += 1
        if requests >= 10_000:
            break
    return {"best": np.array(best), "uniform": np.array(mean), "all": np.concatenate(every)}


def test_click_rates_are_those_of_display_ads(served: dict[str, np.ndarray]) -> None:
    everything = served["all"]
    assert ((everything > 0) & (everything < 1)).all()
    assert 0.005 < served["uniform"].mean() < 0.03  # a random ad: 0.5–3%
    assert 0.03 < served["best"].mean() < 0.1
    assert 0.08 < np.quantile(served["best"], 0.9) < 0.2  # the best matches: 10–15%
    assert np.quantile(everything, 0.999) < 0.35


def test_oracle_beats_uniform_by_a_wide_margin(served: dict[str, np.ndarray]) -> None:
    assert (served["best"] >= served["uniform"]).all()
    assert served["best"].mean() > 2.5 * served["uniform"].mean()


def _fresh_user(world: World, index: int = 0):
    world.start_traffic()  # empty behaviour logs
    return world.users[index]


def test_recent_behaviour_raises_click_probability(world: World) -> None:
    oracle = Oracle(world)
    user = _fresh_user(world)
    creative = world.creatives[0]
    placement = world.placements[0]
    now = world.config.start_ts + 3600
    linked = world.products[world.product_index[creative.product_ids[0]]]
    same_category = next(
        p for p in world.products if p.category == creative.category and p.key not in creative.product_ids
    )
    other_category = next(p for p in world.products if p.category != creative.category)

    def p_after(*events: BehaviourEvent) -> float:
        user.events[:] = list(events)
        return oracle.click_probability(user, creative, placement, now)

    def view(product, ago: float, kind: EventType = EventType.PRODUCT_VIEW) -> BehaviourEvent:
        return BehaviourEvent(kind, now - ago, product.key, product.category, product.price)

    baseline = p_after()
    assert p_after(view(other_category, 60)) == pytest.approx(baseline)
    category_view = p_after(view(same_category, 60))
    linked_view = p_after(view(linked, 60))
    assert baseline < category_view < linked_view
    assert linked_view > 1.5 * baseline
    assert baseline < p_after(view(same_category, 1800)) < category_view  # fades with time
    assert p_after(view(same_category, 3 * 3600)) == pytest.approx(baseline)  # and is gone after hours
    assert p_after(view(same_category, -60)) == pytest.approx(baseline)  # the future does not count
    assert p_after(view(linked, 60, EventType.PURCHASE)) < baseline  # already bought


def test_interest_brand_and_position_matter(world: World) -> None:
    oracle = Oracle(world)
    world.start_traffic()
    now = world.config.start_ts
    interests = world.interests_at(now)
    placement = next(p for p in world.placements if p.position == 0)
    lower = next(p for p in world.placements if p.position == 2)
    ids = np.arange(1, len(world.creatives) + 1)
    p = np.array([oracle.click_probabilities(u, ids, placement, now) for u in world.users])
    # Across users, P(click) on a creative rises with interest in its category.
    k = 0
    correlation = np.corrcoef(interests[:, world.creative_category[k]], p[:, k])[0, 1]
    assert correlation > 0.5
    # Liked brands are clicked more, other things equal (same creative, users with and without).
    affinity = world.brand_affinity[:, world.creative_brand[k]] > 0
    same_interest = np.abs(interests[:, world.creative_category[k]] - 0.05) < 0.05
    assert p[affinity & same_interest, k].mean() > p[~affinity & same_interest, k].mean()
    # Position bias scales every probability by the same factor.
    user = world.users[3]
    ratio = oracle.click_probabilities(user, ids, lower, now) / oracle.click_probabilities(
        user, ids, placement, now
    )
    np.testing.assert_allclose(ratio, oracle.model.position_bias[2] / oracle.model.position_bias[0])


def test_best_choice_maximises_ctr_or_revenue(world: World) -> None:
    oracle = Oracle(world)
    traffic = Traffic(world, oracle)
    checked = 0
    for page in islice(traffic, 400):
        for request in page.ad_requests:
            candidates = world.eligible_candidates(request.placement, page.user.device, page.user.geo)
            singles = [
                oracle.click_probability(page.user, c.creative_id, request.placement, page.ts)
                for c in candidates
            ]
            by_ctr = oracle.best_choice(page.user, candidates, request.placement, page.ts, "ctr")
            by_revenue = oracle.best_choice(page.user, candidates, request.placement, page.ts, "revenue")
            assert by_ctr.click_probability == pytest.approx(max(singles))
            assert candidates[by_ctr.index].creative_id == by_ctr.creative_id
            values = [expected_value(c, p) for c, p in zip(candidates, singles, strict=True)]
            assert by_revenue.expected_revenue == pytest.approx(max(values))
            assert by_revenue.click_probability == pytest.approx(singles[by_revenue.index])
            checked += 1
    assert checked > 300
    with pytest.raises(ValueError):
        oracle.best_choice(world.users[0], [], world.placements[0], world.config.start_ts)


def test_a_different_click_model_changes_the_truth(world: World) -> None:
    world.start_traffic()
    user, placement, now = world.users[1], world.placements[0], world.config.start_ts
    ids = [c.id for c in world.creatives]
    default = Oracle(world).click_probabilities(user, ids, placement, now)
    flat = Oracle(world, ClickModel(interest_weight=0.0)).click_probabilities(user, ids, placement, now)
    assert not np.allclose(default, flat)

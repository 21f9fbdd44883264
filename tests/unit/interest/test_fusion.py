"""The fusion regression: bounded weights, the click head weighed out of sample, steady on few clicks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from adserve.interest.evaluation import click_metrics
from adserve.interest.fusion import (
    FEATURES,
    NON_NEGATIVE,
    PRIOR_IMPRESSIONS,
    ClickFusion,
    creative_priors,
    fit_logistic,
    leave_one_out_priors,
)

COLUMN = {name: i for i, name in enumerate(FEATURES)}


def impressions(rng: np.random.Generator, n: int, memorised: bool) -> tuple[np.ndarray, np.ndarray]:
    """Feature rows of a shop where only the user's recent interest in the creative's category
    moves P(click) (about 3 %): every other feature is noise. `memorised`: the click head's
    logit on impressions it trained on, where it has learned the labels by heart."""
    x = np.zeros((n, len(FEATURES)))
    x[:, COLUMN["intercept"]] = 1.0
    interest = rng.uniform(0.0, 1.0, n)
    x[:, COLUMN["category_recent"]] = interest
    x[:, COLUMN["product_affinity"]] = rng.normal(-8.0, 2.0, n)
    x[:, COLUMN["brand_affinity"]] = x[:, COLUMN["product_affinity"]]
    x[:, COLUMN["category_affinity"]] = rng.normal(-3.0, 1.0, n)
    x[:, COLUMN["category_share"]] = rng.uniform(0.0, 1.0, n)
    x[:, COLUMN["product_recent"]] = rng.uniform(0.0, 0.3, n)
    x[:, COLUMN["creative_prior"]] = rng.normal(0.0, 0.2, n)
    clicked = rng.random(n) < 1.0 / (1.0 + np.exp(-(-5.4 + 3.0 * interest)))
    x[:, COLUMN["click_logit"]] = rng.normal(-4.0, 1.0, n) + (4.0 * clicked if memorised else 0.0)
    return x, clicked.astype(np.float64)


def test_a_bounded_weight_stays_at_zero_where_the_unbounded_fit_turns_negative() -> None:
    rng = np.random.default_rng(0)
    x = np.column_stack([np.ones(4_000), rng.normal(size=4_000)])
    y = (rng.random(4_000) < 1.0 / (1.0 + np.exp(-(-1.0 - 1.5 * x[:, 1])))).astype(np.float64)
    start, penalty = np.array([-1.0, 0.0]), np.array([1e-6, 1.0])
    free = fit_logistic(x, y, start=start, penalty=penalty, non_negative=np.array([False, False]))
    bounded = fit_logistic(x, y, start=start, penalty=penalty, non_negative=np.array([False, True]))
    assert free[1] == pytest.approx(-1.5, abs=0.15)
    assert bounded[1] == 0.0
    # with the slope at zero the intercept is the base rate's log-odds
    assert 1.0 / (1.0 + np.exp(-bounded[0])) == pytest.approx(y.mean(), abs=1e-3)


def test_an_unbounded_fit_is_plain_maximum_likelihood() -> None:
    rng = np.random.default_rng(1)
    x = np.column_stack([np.ones(20_000), rng.normal(size=20_000), rng.normal(size=20_000)])
    y = (rng.random(20_000) < 1.0 / (1.0 + np.exp(-(-2.0 + 0.8 * x[:, 1] - 0.5 * x[:, 2])))).astype(float)
    w = fit_logistic(
        x, y, start=np.zeros(3), penalty=np.full(3, 1e-6), non_negative=np.array([False, True, False])
    )
    assert w == pytest.approx([-2.0, 0.8, -0.5], abs=0.08)


def test_a_training_impressions_prior_leaves_its_own_click_out() -> None:
    creatives = [1, 1, 1, 2, 2, 3]
    clicked = [True, False, False, False, True, False]
    rate = 2 / 6

    def shrunk(clicks: int, shown: int) -> float:
        p = (clicks + PRIOR_IMPRESSIONS * rate) / (shown + PRIOR_IMPRESSIONS)
        return math.log(p / (1 - p)) - math.log(rate / (1 - rate))

    loo = leave_one_out_priors(creatives, clicked)
    expected = [shrunk(0, 2), shrunk(1, 2), shrunk(1, 2), shrunk(1, 1), shrunk(0, 1), 0.0]
    assert loo == pytest.approx(expected)
    assert creative_priors(creatives, clicked)[1] == pytest.approx(shrunk(1, 3))
    # a clicked impression's prior does not count its own click, an unclicked one's its own miss
    assert loo[0] < creative_priors(creatives, clicked)[1] < loo[1]


def test_the_click_heads_weight_comes_from_impressions_it_did_not_train_on() -> None:
    """On its training impressions the head has memorised the clicks; it has learned nothing that
    holds elsewhere. Weighed on those rows it would take over the ranking."""
    rng = np.random.default_rng(2)
    x_train, y_train = impressions(rng, 14_000, memorised=True)
    x_val, y_val = impressions(rng, 3_000, memorised=False)
    x = np.vstack([x_train, x_val])
    y = np.concatenate([y_train, y_val])
    held_out = np.arange(len(y)) >= len(y_train)
    fusion = ClickFusion.fit(x, y, held_out)
    in_sample = ClickFusion.fit(x, y, np.ones(len(y), dtype=bool))
    weights, leaked = (
        dict(zip(FEATURES, fusion.weights, strict=True)),
        dict(zip(FEATURES, in_sample.weights, strict=True)),
    )
    assert weights["click_logit"] < 0.1 < leaked["click_logit"]
    assert weights["category_recent"] == pytest.approx(3.0, abs=0.5)
    x_fresh, y_fresh = impressions(rng, 50_000, memorised=False)
    # calibrated on fresh impressions: the click weight was centred, not left to shift the base rate
    assert fusion(x_fresh).sum() / y_fresh.sum() == pytest.approx(1.0, abs=0.1)


def test_a_fit_on_a_few_dozen_clicks_never_ranks_worse_than_chance() -> None:
    """The first model a shop trains sees ~2,000 impressions and a few dozen clicks, under ten of
    them in the validation part. Twenty such draws: each fusion ranks fresh impressions better than chance,
    and none turns a signal around."""
    rng = np.random.default_rng(3)
    x_fresh, y_fresh = impressions(rng, 30_000, memorised=False)
    aucs = []
    for _ in range(20):
        x_train, y_train = impressions(rng, 1_700, memorised=True)
        x_val, y_val = impressions(rng, 300, memorised=False)
        x = np.vstack([x_train, x_val])
        held_out = np.arange(len(x)) >= len(x_train)
        fusion = ClickFusion.fit(x, np.concatenate([y_train, y_val]), held_out)
        assert all(w >= 0.0 for name, w in zip(FEATURES, fusion.weights, strict=True) if name in NON_NEGATIVE)
        aucs.append(click_metrics(fusion(x_fresh), y_fresh)["auc"])
    assert min(aucs) > 0.62, aucs  # the true model ranks them at 0.72

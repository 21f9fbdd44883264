from __future__ import annotations

import pytest

from adserve.bandit.rewards import (
    DEFAULT_REWARD_WINDOW_S,
    ClickEvent,
    ConversionEvent,
    ServedDecision,
    decision_revenue,
    join_rewards,
)
from adserve.domain import Pricing

T0 = 1_700_000_000.0
W = DEFAULT_REWARD_WINDOW_S


def cpc(decision_id: str, at: float = T0, bid: float = 0.8) -> ServedDecision:
    return ServedDecision(decision_id, at, creative_id=1, pricing=Pricing.CPC, bid=bid)


def by_id(rewards: list) -> dict:
    return {r.decision_id: r for r in rewards}


def test_default_window_is_thirty_minutes() -> None:
    assert W == 1800.0


def test_valid_click_inside_window_is_rewarded_at_once() -> None:
    [reward] = join_rewards([cpc("d")], [ClickEvent("d", T0 + 60, valid=True)], now=T0 + 61)
    assert reward.clicked and reward.revenue == 0.8
    assert reward.labelled_at == T0 + 60


def test_click_exactly_at_window_end_counts() -> None:
    [reward] = join_rewards([cpc("d")], [ClickEvent("d", T0 + W, valid=True)], now=T0 + W)
    assert reward.clicked and reward.revenue == 0.8


def test_late_click_does_not_count_and_decision_gets_default_reward() -> None:
    clicks = [ClickEvent("d", T0 + W + 0.001, valid=True)]
    [reward] = join_rewards([cpc("d")], clicks, now=T0 + 2 * W)
    assert not reward.clicked and reward.revenue == 0.0
    assert reward.labelled_at == T0 + W


def test_invalid_click_never_counts() -> None:
    clicks = [ClickEvent("d", T0 + 10, valid=False)]
    assert join_rewards([cpc("d")], clicks, now=T0 + 20) == []  # window still open: unlabelled
    [reward] = join_rewards([cpc("d")], clicks, now=T0 + W + 1)
    assert not reward.clicked and reward.revenue == 0.0


def test_duplicate_clicks_count_once_from_the_earliest() -> None:
    clicks = [ClickEvent("d", T0 + 30, True), ClickEvent("d", T0 + 10, True), ClickEvent("d", T0 + 10, True)]
    rewards = join_rewards([cpc("d")], clicks, now=T0 + W + 1)
    assert len(rewards) == 1
    assert rewards[0].revenue == 0.8  # one bid, not three
    assert rewards[0].labelled_at == T0 + 10


def test_open_window_without_click_is_not_labelled_until_it_closes() -> None:
    decision = cpc("d")
    assert join_rewards([decision], [], now=T0 + W - 1) == []
    assert join_rewards([decision], [], now=T0 + W) == []  # a click at exactly W could still come
    [reward] = join_rewards([decision], [], now=T0 + W + 0.5)
    assert reward.clicked is False


def test_click_after_now_is_ignored() -> None:
    assert join_rewards([cpc("d")], [ClickEvent("d", T0 + 100, True)], now=T0 + 50) == []


def test_click_before_the_decision_does_not_count() -> None:
    [reward] = join_rewards([cpc("d")], [ClickEvent("d", T0 - 1, True)], now=T0 + W + 1)
    assert not reward.clicked


def test_clicks_belong_to_their_own_decision() -> None:
    decisions = [cpc("a"), cpc("b", bid=1.5)]
    rewards = by_id(join_rewards(decisions, [ClickEvent("b", T0 + 5, True)], now=T0 + W + 1))
    assert not rewards["a"].clicked and rewards["b"].clicked and rewards["b"].revenue == 1.5


def test_results_are_ordered_by_decision_time() -> None:
    decisions = [cpc("late", at=T0 + 100), cpc("early", at=T0)]
    rewards = join_rewards(decisions, [], now=T0 + 10 * W)
    assert [r.decision_id for r in rewards] == ["early", "late"]


def test_cpm_earns_per_impression_not_per_click() -> None:
    shown = ServedDecision("m", T0, creative_id=2, pricing=Pricing.CPM, bid=5.0)
    not_shown = ServedDecision("n", T0, creative_id=2, pricing=Pricing.CPM, bid=5.0, impressed=False)
    rewards = by_id(join_rewards([shown, not_shown], [], now=T0 + W + 1))
    assert rewards["m"].revenue == pytest.approx(0.005)
    assert rewards["n"].revenue == 0.0


def test_revenue_rules() -> None:
    assert decision_revenue(Pricing.CPC, 0.7, clicked=True) == 0.7
    assert decision_revenue(Pricing.CPC, 0.7, clicked=False) == 0.0
    assert decision_revenue(Pricing.CPM, 3.0, clicked=False) == pytest.approx(0.003)
    # a click proves the ad was shown even when the impression beacon was lost
    assert decision_revenue(Pricing.CPM, 3.0, clicked=True, impressed=False) == pytest.approx(0.003)


def test_conversions_count_only_with_a_counted_click_and_sum() -> None:
    decisions = [cpc("clicked"), cpc("unclicked")]
    clicks = [ClickEvent("clicked", T0 + 5, True)]
    conversions = [
        ConversionEvent("clicked", 20.0),
        ConversionEvent("clicked", 5.0),
        ConversionEvent("unclicked", 99.0),
    ]
    rewards = by_id(join_rewards(decisions, clicks, now=T0 + W + 1, conversions=conversions))
    assert rewards["clicked"].conversion_value == 25.0
    assert rewards["unclicked"].conversion_value == 0.0


def test_custom_window_and_negative_window_rejected() -> None:
    [reward] = join_rewards([cpc("d")], [ClickEvent("d", T0 + 90, True)], now=T0 + 200, reward_window_s=60)
    assert not reward.clicked
    with pytest.raises(ValueError, match="reward_window_s"):
        join_rewards([cpc("d")], [], now=T0, reward_window_s=-1)

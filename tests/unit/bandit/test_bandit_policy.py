from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING

import numpy as np
import pytest

from adserve.bandit.features import COLD_START_FAMILY
from adserve.bandit.policy import (
    CostConfig,
    Exploration,
    PolicyConfig,
    VWPolicy,
    cost_of,
    list_versions,
    model_values,
    plausible,
    sample,
    top_k_indices,
)
from adserve.bandit.records import LoggedDecision
from adserve.domain import Candidate, DecisionContext, Policy, Pricing

if TYPE_CHECKING:
    from pathlib import Path

CONTEXT = DecisionContext(placement="homepage-top", now=1_700_000_000.0, device="mobile", hour=9)


def cpc(creative_id: int, bid: float) -> Candidate:
    return Candidate(creative_id, campaign_id=creative_id, advertiser_id=1, pricing=Pricing.CPC, bid=bid)


def paid_click(candidates: list[Candidate], chosen: int, now: float) -> LoggedDecision:
    """A uniformly logged decision whose chosen ad was clicked and paid 1."""
    return LoggedDecision(
        context=DecisionContext(placement="homepage-top", now=now, device="mobile", hour=9),
        candidates=tuple(candidates),
        click_probabilities=(0.05,) * len(candidates),
        pmf=(1 / len(candidates),) * len(candidates),
        chosen=chosen,
        clicked=True,
        revenue=1.0,
    )


def trained_policy(
    config: PolicyConfig | None = None, n: int = 300, scorer_version: str | None = None
) -> tuple[VWPolicy, list[Candidate]]:
    """A policy that has learned creative 2 pays and the others do not (non-uniform pmf), from
    decisions served with `scorer_version`'s scores."""
    policy = VWPolicy(config)
    candidates = [cpc(i, 1.0) for i in range(5)]
    rng = np.random.default_rng(0)
    records = []
    for t in range(n):
        chosen = int(rng.integers(5))
        clicked = chosen == 2
        records.append(
            LoggedDecision(
                context=DecisionContext(
                    placement="homepage-top", now=CONTEXT.now + t, device="mobile", hour=9
                ),
                candidates=tuple(candidates),
                click_probabilities=(0.05,) * 5,
                pmf=(0.2,) * 5,
                chosen=chosen,
                clicked=clicked,
                revenue=1.0 if clicked else 0.0,
                scorer_version=scorer_version,
            )
        )
    assert policy.learn(records) == n
    return policy, candidates


def test_implements_the_domain_policy_protocol() -> None:
    assert isinstance(VWPolicy(), Policy)


def test_untrained_policy_is_the_models_ranking_with_light_exploration() -> None:
    candidates = [cpc(i, bid=float(i + 1)) for i in range(6)]  # ev = 0.1 × bid grows with i
    policy = VWPolicy(PolicyConfig(top_k=4, gamma_initial=1000.0))
    pmf = policy.pmf(CONTEXT, candidates, np.full(6, 0.1))
    assert pmf.shape == (6,)
    assert pmf[0] == pmf[1] == 0.0  # outside the top-K: never chosen
    # inverse-gap weighting over the model's costs: 1 / (K + gamma × gap) off the best
    np.testing.assert_allclose(pmf[2:5], [1 / (4 + 1000 * 0.3), 1 / (4 + 1000 * 0.2), 1 / (4 + 1000 * 0.1)])
    assert int(np.argmax(pmf)) == 5 and pmf[5] > 0.98 and sum(pmf) == pytest.approx(1.0, abs=1e-12)


def test_exploration_never_costs_more_than_k_over_gamma() -> None:
    rng = np.random.default_rng(11)
    candidates = [cpc(i, bid=1.0) for i in range(10)]
    policy = VWPolicy(PolicyConfig(top_k=10, gamma_initial=2000.0))
    for _ in range(50):
        scores = rng.uniform(0.0, 0.1, 10)
        pmf = policy.pmf(CONTEXT, candidates, scores)
        assert scores.max() - pmf @ scores <= 9 / 2000 + 1e-12


def test_only_candidates_the_model_finds_plausible_are_explored() -> None:
    candidates = [cpc(i, bid=1.0) for i in range(4)]
    scores = np.array([0.10, 0.06, 0.049, 0.01])  # values: the best, 0.6, 0.49 and 0.1 of it
    explores_a_lot = {"top_k": 4, "gamma_initial": 10.0, "gamma_scale": 0.0}
    pmf = VWPolicy(PolicyConfig(**explores_a_lot)).pmf(CONTEXT, candidates, scores)
    assert pmf[2] == pmf[3] == 0.0  # below half the best value: never served
    # inverse-gap weighting over the two plausible ones (K = 2)
    assert pmf[1] == pytest.approx(1 / (2 + 10 * 0.04)) and pmf[0] == pytest.approx(1 - pmf[1])
    everywhere = VWPolicy(PolicyConfig(**explores_a_lot, plausible_share=0.0))
    assert np.all(everywhere.pmf(CONTEXT, candidates, scores) > 0)


def test_the_greedy_candidate_is_explored_from_even_below_the_plausible_share() -> None:
    values = [0.10, 0.06, 0.02, 0.049]
    assert plausible(values, greedy=0, share=0.5) == [0, 1]
    # VW's correction made the third the cheapest: it is served, though the model values it low
    assert plausible(values, greedy=2, share=0.5) == [0, 1, 2]
    assert plausible(values, greedy=0, share=0.0) == [0, 1, 2, 3]
    assert plausible([0.0, 0.0, 0.0], greedy=1, share=0.5) == [0, 1, 2]  # nothing to tell apart


def test_sampling_the_non_zero_entries_draws_what_numpy_draws_from_the_whole_pmf() -> None:
    generator = np.random.default_rng(3)
    for _ in range(500):
        pmf = np.zeros(40)
        indices = np.sort(generator.choice(40, size=int(generator.integers(1, 11)), replace=False))
        pmf[indices] = generator.dirichlet(np.ones(len(indices)))
        seed = int(generator.integers(1 << 30))
        ours = sample(indices.tolist(), pmf[indices].tolist(), np.random.default_rng(seed))
        theirs = np.random.default_rng(seed).choice(40, p=pmf)
        assert ours == theirs


def test_top_k_by_expected_value_mixes_cpc_and_cpm() -> None:
    candidates = [
        cpc(0, 1.0),  # ev 0.01
        Candidate(1, 1, 1, Pricing.CPM, bid=30.0),  # ev 0.03
        cpc(2, 5.0),  # ev 0.05
        Candidate(3, 3, 1, Pricing.CPM, bid=2.0),  # ev 0.002
    ]
    assert top_k_indices(candidates, [0.01] * 4, 2).tolist() == [1, 2]
    # ties keep the earlier candidate so learning rebuilds the same set
    assert top_k_indices([cpc(i, 1.0) for i in range(4)], [0.1] * 4, 2).tolist() == [0, 1]


def test_choice_pmf_is_the_sampled_pmf_and_propensity_matches_frequency() -> None:
    policy, candidates = trained_policy()
    scores = np.full(5, 0.05)
    expected = policy.pmf(CONTEXT, candidates, scores)
    assert expected.max() > 0.5  # learned: not uniform
    rng = np.random.default_rng(1)
    draws = 20_000
    counts = np.zeros(5)
    for _ in range(draws):
        choice = policy.choose(CONTEXT, candidates, scores, rng)
        assert choice.pmf == tuple(expected)  # the logged pmf is exactly the one sampled from
        assert choice.propensity == expected[choice.index]
        counts[choice.index] += 1
    assert sum(choice.pmf) == pytest.approx(1.0, abs=1e-12)
    # every action's empirical frequency is within 4 binomial standard errors of its propensity
    se = np.sqrt(expected * (1 - expected) / draws)
    assert np.all(np.abs(counts / draws - expected) <= 4 * se + 1e-12)


def test_propensity_is_over_the_masked_candidates_the_caller_gave() -> None:
    policy, candidates = trained_policy()
    # budget/caps removed creatives 0 and 3: the policy only sees three
    masked = [candidates[1], candidates[2], candidates[4]]
    rng = np.random.default_rng(2)
    counts = np.zeros(3)
    for _ in range(5000):
        choice = policy.choose(CONTEXT, masked, np.full(3, 0.05), rng)
        assert len(choice.pmf) == 3
        assert masked[choice.index].creative_id in {1, 2, 4}
        counts[choice.index] += 1
    pmf = np.array(choice.pmf)
    assert sum(pmf) == pytest.approx(1.0, abs=1e-12)
    assert pmf[1] > 0.5  # creative 2 is still the favourite among what is left
    se = np.sqrt(pmf * (1 - pmf) / 5000)
    assert np.all(np.abs(counts / 5000 - pmf) <= 4 * se + 1e-12)


def test_candidates_outside_top_k_are_never_chosen() -> None:
    policy = VWPolicy(PolicyConfig(top_k=2, gamma_initial=10.0, gamma_scale=0.0))  # explores a lot
    candidates = [cpc(0, 0.1), cpc(1, 2.0), cpc(2, 0.2), cpc(3, 3.0)]
    rng = np.random.default_rng(3)
    chosen = {policy.choose(CONTEXT, candidates, np.full(4, 0.1), rng).index for _ in range(300)}
    assert chosen == {1, 3}


def test_explored_means_not_the_greedy_action() -> None:
    policy, candidates = trained_policy(PolicyConfig(gamma_initial=5.0, gamma_scale=0.0))
    rng = np.random.default_rng(4)
    choices = [policy.choose(CONTEXT, candidates, np.full(5, 0.05), rng) for _ in range(500)]
    greedy = int(np.argmax(choices[0].pmf))
    assert greedy == 2
    assert all(c.explored == (c.index != greedy) for c in choices)
    assert any(c.explored for c in choices) and not all(c.explored for c in choices)


def test_epsilon_zero_serves_the_greedy_candidate_with_propensity_one() -> None:
    policy = VWPolicy(PolicyConfig(exploration=Exploration.EPSILON_GREEDY, epsilon=0.0, plausible_share=0.0))
    candidates = [cpc(i, bid) for i, bid in enumerate([1.0, 2.0, 1.5, 0.5])]
    rng = np.random.default_rng(9)
    choices = [policy.choose(CONTEXT, candidates, np.full(4, 0.05), rng) for _ in range(300)]
    assert {(c.index, c.propensity, c.explored) for c in choices} == {(1, 1.0, False)}


@pytest.mark.parametrize("exploration", list(Exploration))
def test_every_exploration_learns_the_paying_creative(exploration: Exploration) -> None:
    policy, candidates = trained_policy(PolicyConfig(exploration=exploration))
    pmf = policy.pmf(CONTEXT, candidates, np.full(5, 0.05))
    assert int(np.argmax(pmf)) == 2
    assert np.all(pmf > 0)  # every top-K action keeps support, so OPE can evaluate any policy


def test_learning_maximises_revenue_not_click_through_rate() -> None:
    """Creative 0: bid 2.0, CTR 0.1 (0.20 per decision); creative 1: bid 0.5, CTR 0.2 (0.10)."""
    candidates = [cpc(0, 2.0), cpc(1, 0.5)]
    true_ctr = [0.1, 0.2]
    rng = np.random.default_rng(5)
    records = []
    for t in range(4000):
        chosen = int(rng.integers(2))
        clicked = bool(rng.random() < true_ctr[chosen])
        records.append(
            LoggedDecision(
                context=DecisionContext(placement="p", now=float(t)),
                candidates=tuple(candidates),
                # the interest model gives both the same score: only learning can separate them
                click_probabilities=(0.15, 0.15),
                pmf=(0.5, 0.5),
                chosen=chosen,
                clicked=clicked,
                revenue=candidates[chosen].bid if clicked else 0.0,
            )
        )
    policy = VWPolicy(PolicyConfig(cost=CostConfig(revenue_scale=2.0)))
    policy.learn(records)
    pmf = policy.pmf(DecisionContext(placement="p", now=5000.0), candidates, [0.15, 0.15])
    assert pmf[0] > pmf[1]


def test_corrections_learned_against_the_cold_start_do_not_bend_a_trained_models_ranking() -> None:
    """VW learns, against the empirical scorer, that creative 2 pays and the rest do not; the first
    trained model's scores start from a zero residual (its own ranking), and the cold start's
    corrections are still there when it serves again."""
    cold_start = "empirical-ctr:1/100+lift10"
    untrained = VWPolicy().pmf(CONTEXT, [cpc(i, 1.0) for i in range(5)], np.full(5, 0.05), "20261130T191208Z")
    policy, candidates = trained_policy(scorer_version=cold_start)
    rng = np.random.default_rng(0)
    assert int(np.argmax(policy.pmf(CONTEXT, candidates, np.full(5, 0.05), cold_start))) == 2
    model_scores = np.array([0.05, 0.05, 0.05, 0.05, 0.06])
    trained_model = policy.pmf(CONTEXT, candidates, model_scores, "20261130T191208Z")
    assert int(np.argmax(trained_model)) == 4  # the model's own best, not the cold start's
    # the context's own weights are shared, but they shift every action alike: no ad is corrected
    assert np.ptp(policy.residuals(CONTEXT, candidates)) < 1e-9
    assert np.ptp(policy.residuals(CONTEXT, candidates, COLD_START_FAMILY)) > 0.05
    # for the model family the policy is still the untrained one
    assert (
        policy.pmf(CONTEXT, candidates, np.full(5, 0.05), "20261130T191208Z").tolist() == untrained.tolist()
    )
    choice = policy.choose(CONTEXT, candidates, np.full(5, 0.05), rng, scorer_version=cold_start)
    assert choice.pmf == tuple(policy.pmf(CONTEXT, candidates, np.full(5, 0.05), cold_start).tolist())


def test_a_trained_models_correction_is_added_at_its_configured_share() -> None:
    """model_residual_weight scales VW's correction to a trained model's costs before the pmf;
    the cold start's correction is added whole whatever it is."""
    model_version, cold_start = "20261130T191208Z", "empirical-ctr:1/100+lift1"
    scores = np.full(5, 0.05)
    pmfs = {}
    for weight in (1.0, 0.25, 0.0):
        config = PolicyConfig(model_residual_weight=weight)
        model_taught, candidates = trained_policy(config, scorer_version=model_version)
        # what VW learned does not depend on the share: only what is added to the costs
        assert np.ptp(model_taught.residuals(CONTEXT, candidates)) > 0.05
        pmfs[weight] = model_taught.pmf(CONTEXT, candidates, scores, model_version)
        cold_taught, _ = trained_policy(config, scorer_version=cold_start)
        assert int(np.argmax(cold_taught.pmf(CONTEXT, candidates, scores, cold_start))) == 2
    untrained = VWPolicy().pmf(CONTEXT, candidates, scores, model_version)
    assert pmfs[0.0].tolist() == untrained.tolist()  # the model's own ranking, explored alike
    assert int(np.argmax(pmfs[1.0])) == int(np.argmax(pmfs[0.25])) == 2
    # inverse-gap weighting: a quarter of the gap leaves the best action less of the mass
    assert pmfs[0.0][2] < pmfs[0.25][2] < pmfs[1.0][2]
    with pytest.raises(ValueError, match="model_residual_weight"):
        PolicyConfig(model_residual_weight=1.5)


def test_cost_is_minus_scaled_clipped_revenue() -> None:
    unit = CostConfig()
    assert cost_of(0.5, 0.0, unit) == -0.5
    assert cost_of(0.0, 0.0, unit) == 0.0
    assert cost_of(3.0, 0.0, unit) == -1.0  # clipped
    assert cost_of(0.005, 0.0, unit) == pytest.approx(-0.005)  # a CPM impression at 5.00
    assert cost_of(1.0, 0.0, CostConfig(revenue_scale=4.0)) == -0.25
    assert cost_of(0.5, 10.0, CostConfig(revenue_scale=20.0, conversion_weight=1.0)) == pytest.approx(-0.525)
    with pytest.raises(ValueError, match="revenue_scale"):
        CostConfig(revenue_scale=0)


def test_config_from_settings_and_vw_arguments() -> None:
    config = PolicyConfig.from_dict(
        {"exploration": "epsilon_greedy", "epsilon": 0.2, "cost": {"revenue_scale": 2, "objective": "clicks"}}
    )
    assert config.exploration is Exploration.EPSILON_GREEDY and config.cost.revenue_scale == 2
    assert config.cost.objective == "clicks"
    # VW is the residual regressor; exploration is computed outside it
    assert "--cb_adf" in config.vw_args() and "--cb_type=mtr" in config.vw_args()
    assert not any("explore" in a or "squarecb" in a for a in PolicyConfig().vw_args())
    assert PolicyConfig(gamma_initial=100, gamma_scale=10, gamma_exponent=0.5).gamma(400) == 300
    assert PolicyConfig.from_dict(PolicyConfig().to_dict()) == PolicyConfig()
    with pytest.raises(ValueError, match="unknown bandit policy settings"):
        PolicyConfig.from_dict({"explorer": "squarecb"})
    with pytest.raises(ValueError):
        PolicyConfig(exploration="greedy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="top_k"):
        PolicyConfig(top_k=0)


def test_rejects_mismatched_inputs() -> None:
    policy = VWPolicy()
    with pytest.raises(ValueError, match="zero candidates"):
        policy.pmf(CONTEXT, [], [])
    with pytest.raises(ValueError, match="click probabilities"):
        policy.pmf(CONTEXT, [cpc(0, 1.0)], [0.1, 0.2])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        policy.pmf(CONTEXT, [cpc(0, 1.0), cpc(1, 1.0)], [0.1, float("nan")])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        policy.pmf(CONTEXT, [cpc(0, 1.0)], [1.5])


def test_save_load_round_trip_gives_identical_pmf(tmp_path: Path) -> None:
    config = PolicyConfig(top_k=4, gamma_scale=20.0)
    policy, candidates = trained_policy(config)
    directory = policy.save(tmp_path, version="v1")
    assert directory == tmp_path / "bandit" / "v1"
    assert sorted(p.name for p in directory.iterdir()) == ["model.vw", "policy.json"]
    metadata = json.loads((directory / "policy.json").read_text())
    assert metadata["version"] == "v1" and metadata["examples_learned"] == 300
    assert metadata["data_window"] == [CONTEXT.now, CONTEXT.now + 299]
    assert metadata["config"]["gamma_scale"] == 20.0

    loaded = VWPolicy.load(directory)
    assert loaded.version == "v1" and loaded.config == config and loaded.examples_learned == 300
    for scores in (np.full(5, 0.05), np.array([0.01, 0.2, 0.05, 0.3, 0.02])):
        np.testing.assert_array_equal(
            loaded.pmf(CONTEXT, candidates, scores), policy.pmf(CONTEXT, candidates, scores)
        )
    a = policy.choose(CONTEXT, candidates, np.full(5, 0.05), np.random.default_rng(9))
    b = loaded.choose(CONTEXT, candidates, np.full(5, 0.05), np.random.default_rng(9))
    assert a == b


def test_loaded_policy_resumes_learning_like_the_original(tmp_path: Path) -> None:
    policy, candidates = trained_policy()
    loaded = VWPolicy.load(policy.save(tmp_path, version="v1"))
    extra = [paid_click(candidates, 4, CONTEXT.now + 1000 + t) for t in range(50)]
    policy.learn(extra)
    loaded.learn(extra)
    np.testing.assert_allclose(
        loaded.pmf(CONTEXT, candidates, np.full(5, 0.05)),
        policy.pmf(CONTEXT, candidates, np.full(5, 0.05)),
        atol=1e-6,
    )
    assert loaded.examples_learned == 350 and loaded.data_window == (CONTEXT.now, CONTEXT.now + 1049)


def test_save_refuses_to_overwrite_and_load_needs_both_files(tmp_path: Path) -> None:
    policy = VWPolicy()
    policy.save(tmp_path, version="v1")
    with pytest.raises(FileExistsError):
        policy.save(tmp_path, version="v1")
    with pytest.raises(FileNotFoundError, match="not a saved bandit policy"):
        VWPolicy.load(tmp_path / "bandit" / "missing")
    assert list_versions(tmp_path) == ["v1"]
    assert not any(p.name.startswith(".") for p in (tmp_path / "bandit").iterdir())  # no staging left


def test_generated_versions_sort_in_save_order(tmp_path: Path) -> None:
    policy = VWPolicy()
    first = policy.save(tmp_path).name
    second = policy.save(tmp_path).name
    assert list_versions(tmp_path) == [first, second]
    assert policy.version == second


def test_reload_swaps_to_the_new_version(tmp_path: Path) -> None:
    trained, candidates = trained_policy()
    directory = trained.save(tmp_path, version="v2")
    serving = VWPolicy()
    assert serving.pmf(CONTEXT, candidates, np.full(5, 0.05)).max() == pytest.approx(0.2)
    serving.reload(directory)
    assert serving.version == "v2"
    np.testing.assert_array_equal(
        serving.pmf(CONTEXT, candidates, np.full(5, 0.05)), trained.pmf(CONTEXT, candidates, np.full(5, 0.05))
    )


def test_concurrent_choose_during_reloads_is_safe(tmp_path: Path) -> None:
    trained, candidates = trained_policy()
    directory = trained.save(tmp_path, version="v1")
    serving = VWPolicy.load(directory)
    errors: list[BaseException] = []
    pmfs: list[tuple[float, ...]] = []

    def serve(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for _ in range(300):
                choice = serving.choose(CONTEXT, candidates, np.full(5, 0.05), rng)
                pmfs.append(choice.pmf)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    def reload() -> None:
        try:
            for _ in range(10):
                serving.reload(directory)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=serve, args=(s,)) for s in range(4)] + [
        threading.Thread(target=reload)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(pmfs) == 1200
    expected = tuple(trained.pmf(CONTEXT, candidates, np.full(5, 0.05)))
    assert all(p == expected for p in pmfs)  # same version reloaded: every answer identical


def _uncached_residuals(
    policy: VWPolicy, context: DecisionContext, candidates: list[Candidate]
) -> np.ndarray:
    from adserve.bandit.features import example_lines

    workspace = policy._workspace
    examples = workspace.parse(example_lines(context, candidates))
    try:
        return np.asarray(workspace.predict(examples), dtype=np.float64)
    finally:
        workspace.finish_example(examples)


def test_cached_residuals_are_vws_own_for_any_subset_order_and_context() -> None:
    policy, candidates = trained_policy(PolicyConfig(interactions=("SA", "VA")))
    evening = DecisionContext(placement="homepage-top", now=CONTEXT.now, device="desktop", hour=21)
    for context in (CONTEXT, evening):
        full = policy.residuals(context, candidates)
        np.testing.assert_allclose(full, _uncached_residuals(policy, context, candidates), rtol=1e-6)
        subset = [candidates[3], candidates[0], candidates[2]]
        np.testing.assert_allclose(policy.residuals(context, subset), full[[3, 0, 2]], rtol=1e-6)
    # the slot x ad interaction makes the contexts differ: the cache must not mix them up
    assert not np.allclose(policy.residuals(CONTEXT, candidates), policy.residuals(evening, candidates))


def test_learning_invalidates_cached_residuals() -> None:
    policy, candidates = trained_policy(n=50)
    before = policy.residuals(CONTEXT, candidates)
    policy.learn([paid_click(candidates, 2, CONTEXT.now)] * 20)
    after = policy.residuals(CONTEXT, candidates)
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, _uncached_residuals(policy, CONTEXT, candidates), rtol=1e-6)


def test_model_values_follow_a_candidate_list_changed_in_place() -> None:
    cpm = Candidate(9, campaign_id=9, advertiser_id=1, pricing=Pricing.CPM, bid=2000.0)
    served = (cpc(1, 1.0), cpm)
    p = np.array([0.5, 0.5])
    assert model_values(served, p, CostConfig()).tolist() == [0.5, 2.0]
    assert model_values(served, p, CostConfig()).tolist() == [0.5, 2.0]  # known by its identity
    changing = [cpc(1, 1.0), cpm]
    assert model_values(changing, p, CostConfig()).tolist() == [0.5, 2.0]
    changing[0] = cpc(2, 3.0)  # the same list object: its values follow its content
    assert model_values(changing, p, CostConfig()).tolist() == [1.5, 2.0]

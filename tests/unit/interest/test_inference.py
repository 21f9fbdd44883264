"""The numpy decision-time path (inference.py) computes the torch network's features exactly."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from adserve.domain import BehaviourEvent, DecisionContext, EventType
from adserve.interest.inference import _attention
from adserve.interest.scorer import DEFAULT_SHORTLIST, InterestScorer
from adserve.settings import ServingSettings


def _contexts(tiny_world) -> list[DecisionContext]:
    sequences, _, _ = tiny_world
    users = sorted(sequences)[:12]
    contexts = [
        DecisionContext(
            placement=f"slot-{i % 3}",
            now=sequences[user][-1].ts + 30 + 4_000 * i,
            device=("mobile", "desktop", None)[i % 3],
            geo="FR" if i % 2 else None,
            hour=i % 24,
            page_category="shoes" if i % 4 == 0 else None,
            keywords=("sale", "Running") if i % 5 == 0 else (),
            user_key=user if i % 2 else None,  # uncached encodings too
            history=tuple(sequences[user]),
        )
        for i, user in enumerate(users)
    ]
    purchase = BehaviourEvent(EventType.PURCHASE, contexts[0].now - 10, item_id="unknown-item", category="x")
    contexts.append(dataclasses.replace(contexts[0], history=(*contexts[0].history, purchase)))
    contexts.append(DecisionContext(placement="slot-0", now=1e9, device="mobile"))  # no history
    return contexts


def test_numpy_features_equal_the_torch_networks(tiny_checkpoint, tiny_world) -> None:
    _, creatives, _ = tiny_world
    scorer = InterestScorer(tiny_checkpoint)
    assert scorer._kernel is not None and scorer.click_trained
    unknown = dataclasses.replace(creatives[0], creative_id=10_000, product_ids=("not-in-vocab",), brand=None)
    candidate_lists = [creatives, creatives[3:7], [unknown, *creatives[:2]]]
    for context in _contexts(tiny_world):
        for candidates in candidate_lists:
            fast = scorer.fusion_features(context, candidates)
            (reference,) = scorer.click_features_many([(context, candidates)])
            assert fast.shape == reference.shape
            np.testing.assert_allclose(fast, reference, rtol=1e-4, atol=1e-4)
            assert np.unique(fast[:, 1]).size > 1  # the click logit varies: the test can fail


def test_served_scores_use_the_numpy_path_and_its_caches(tiny_checkpoint, tiny_world) -> None:
    _, creatives, _ = tiny_world
    scorer = InterestScorer(tiny_checkpoint)
    context = _contexts(tiny_world)[1]
    first = scorer.score(context, creatives)
    assert scorer.encoding(context).view is not None  # the user's summary is kept with the encoding
    np.testing.assert_allclose(scorer.score(context, creatives), first)
    np.testing.assert_allclose(
        first, scorer.fusion(scorer.click_features_many([(context, creatives)])[0]), atol=1e-5
    )


def test_a_later_request_of_the_same_user_reuses_cached_parts_exactly(tiny_checkpoint, tiny_world) -> None:
    _, creatives, _ = tiny_world
    scorer = InterestScorer(tiny_checkpoint)
    context = _contexts(tiny_world)[1]
    scorer.fusion_features(context, creatives)
    view = scorer.user_view(context)
    cached = view.pair
    for later in (10.0, 2_000.0, 90_000.0):  # gap buckets move; the decay moves
        moved = dataclasses.replace(context, now=context.now + later)
        fast = scorer.fusion_features(moved, creatives)
        assert view.pair is cached
        np.testing.assert_allclose(
            fast, scorer.click_features_many([(moved, creatives)])[0], rtol=1e-4, atol=1e-4
        )


def test_a_user_prepared_at_event_time_is_scored_without_a_forward_pass(tiny_checkpoint, tiny_world) -> None:
    _, creatives, _ = tiny_world
    scorer = InterestScorer(tiny_checkpoint)
    context = _contexts(tiny_world)[1]
    assert context.user_key is not None
    scorer.score(context, creatives)  # the candidate list and the context are prepared
    assert scorer.prepared(context, creatives)
    viewed = BehaviourEvent(EventType.PRODUCT_VIEW, context.now, item_id="sku-new", category="c1")
    later = dataclasses.replace(context, now=context.now + 1, history=(*context.history, viewed))
    assert not scorer.prepared(later, creatives)  # a new event: the encoder must run
    scorer.prepare_user(later.user_key, later.history)
    assert scorer.prepared(later, creatives)


def test_users_encoded_together_score_as_when_encoded_alone(tiny_checkpoint, tiny_world) -> None:
    _, creatives, _ = tiny_world
    contexts = [c for c in _contexts(tiny_world) if c.user_key is not None and c.history]
    assert len({len(c.history) for c in contexts}) > 1  # different lengths: left padding is exercised
    together = InterestScorer(tiny_checkpoint).score_many([(c, creatives) for c in contexts])
    alone = InterestScorer(tiny_checkpoint)
    for context, scores in zip(contexts, together, strict=True):
        np.testing.assert_allclose(scores, alone.score(context, creatives), rtol=1e-5, atol=1e-6)


def test_a_catalogue_refresh_with_equal_candidates_reuses_the_prepared_block(
    tiny_checkpoint, tiny_world
) -> None:
    _, creatives, _ = tiny_world
    scorer = InterestScorer(tiny_checkpoint)
    context = _contexts(tiny_world)[1]
    first = scorer.fusion_features(context, creatives)
    pair = scorer.user_view(context).pair
    refreshed = [dataclasses.replace(c) for c in creatives]  # equal content, new objects
    assert all(a is not b and a == b for a, b in zip(creatives, refreshed, strict=True))
    np.testing.assert_allclose(scorer.fusion_features(context, refreshed), first)
    assert scorer.user_view(context).pair is pair  # the same block: the user's pair cache held
    assert scorer.prepared(context, refreshed)
    rebid = [dataclasses.replace(c, bid=c.bid + 1.0) for c in creatives]
    scorer.fusion_features(context, rebid)
    assert scorer.user_view(context).pair is not pair  # different content: a new block


def test_a_candidate_list_is_known_by_identity_only_while_it_cannot_change(
    tiny_checkpoint, tiny_world
) -> None:
    _, creatives, _ = tiny_world
    scorer = InterestScorer(tiny_checkpoint)
    kernel = scorer._kernel
    context = _contexts(tiny_world)[1]
    served = tuple(creatives)
    first = scorer.fusion_features(context, served)
    assert kernel.block(served, context, {}, {}) is kernel.block(tuple(list(served)), context, {}, {})
    np.testing.assert_allclose(scorer.fusion_features(context, served), first)
    # a list changed in place keeps its identity: its block follows its content
    changing = list(creatives)
    scorer.fusion_features(context, changing)
    changing.reverse()
    np.testing.assert_allclose(scorer.fusion_features(context, changing), first[::-1])
    # a change of the category rows forgets every prepared list, the last one too
    held = kernel.block(served, context, {}, {})
    scorer.set_item_categories({})
    assert not scorer.prepared(context, served)
    assert kernel.block(served, context, {}, {}) is not held


def test_attention_with_one_shift_per_block_equals_a_per_row_softmax() -> None:
    """One shift for the whole block, and rows it would underflow (their maximum hundreds below
    the block's) recomputed with their own: the same weights as a row-wise softmax."""
    rng = np.random.default_rng(3)
    scores = rng.normal(0.0, 3.0, (6, 9)).astype(np.float32)
    scores[1] -= 300.0  # exp underflows to 0 in float32 under the block's shift
    scores[4] += 60.0  # sets the block's maximum
    values = rng.normal(0.0, 1.0, (9, 5)).astype(np.float32)
    shifted = scores.astype(np.float64) - scores.max(axis=1, keepdims=True)
    weights = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    attended = _attention(scores.copy(), values)
    assert np.isfinite(attended).all()
    np.testing.assert_allclose(attended, weights @ values, rtol=1e-5, atol=1e-6)


def test_the_click_head_scores_only_the_candidates_the_fusion_ranks_highest_without_it(
    tiny_checkpoint, tiny_world
) -> None:
    _, creatives, _ = tiny_world
    scorer = InterestScorer(tiny_checkpoint)
    size = len(creatives) // 3
    assert 2 <= size < len(creatives)
    for context in _contexts(tiny_world):
        every = scorer.fusion_features(context, creatives, shortlist=0)
        short = scorer.fusion_features(context, creatives, shortlist=size)
        other_columns = [i for i in range(every.shape[1]) if i != 1]
        np.testing.assert_array_equal(short[:, other_columns], every[:, other_columns])
        without_click = every.copy()
        without_click[:, 1] = 0.0
        ranked = np.argsort(-(without_click @ np.asarray(scorer.fusion.weights)), kind="stable")
        shortlist, rest = ranked[:size], ranked[size:]
        np.testing.assert_allclose(short[shortlist, 1], every[shortlist, 1], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(short[rest, 1], every[shortlist, 1].mean(), rtol=1e-5, atol=1e-6)
        assert not np.allclose(short[rest, 1], every[rest, 1])  # the rest were not scored: can fail
    assert scorer.shortlist == DEFAULT_SHORTLIST == ServingSettings().click_head_shortlist
    with pytest.raises(ValueError, match="shortlist"):
        InterestScorer(tiny_checkpoint, shortlist=-1)


def test_a_fusion_without_weight_on_the_click_head_serves_the_same_scores_without_running_it(
    tiny_checkpoint, tiny_world, monkeypatch
) -> None:
    from adserve.interest.fusion import FEATURES

    _, creatives, _ = tiny_world
    scorer = InterestScorer(tiny_checkpoint)
    weights = list(scorer.fusion.weights)
    weights[FEATURES.index("click_logit")] = 0.0  # as a first model's fit often leaves it
    scorer.fusion = dataclasses.replace(scorer.fusion, weights=tuple(weights))
    assert not scorer.click_weighed
    contexts = _contexts(tiny_world)
    with_head = [
        scorer.fusion(scorer.fusion_features(context, creatives, shortlist=0)) for context in contexts
    ]
    assert any(np.unique(scorer.fusion_features(c, creatives, shortlist=0)[:, 1]).size > 1 for c in contexts)

    def no_click_head(*args, **kwargs):
        raise AssertionError("the click head ran for a fusion that does not weigh it")

    monkeypatch.setattr(scorer._kernel, "logits", no_click_head)
    for context, expected in zip(contexts, with_head, strict=True):
        np.testing.assert_allclose(scorer.score(context, creatives), expected, rtol=1e-12)

from __future__ import annotations

import asyncio
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from adserve.domain import BehaviourEvent, DecisionContext, EventType, Scorer
from adserve.interest.checkpoint import CheckpointError
from adserve.interest.data import click_inputs, encode_history, stack_histories
from adserve.interest.scorer import InterestScorer, InterestScorerHolder, MicroBatcher


def _context(tiny_world, user: str = "user-1", n: int | None = None) -> DecisionContext:
    sequences, _, _ = tiny_world
    history = tuple(sequences[user][:n] if n else sequences[user])
    return DecisionContext(
        placement="homepage-top", now=history[-1].ts + 60, device="mobile", user_key=user, history=history
    )


def test_scores_are_calibrated_probabilities_in_one_batch(tiny_checkpoint, tiny_world) -> None:
    scorer = InterestScorer(tiny_checkpoint)
    assert isinstance(scorer, Scorer) and scorer.version == "v1"
    _, creatives, _ = tiny_world
    scores = scorer.score(_context(tiny_world), creatives)
    assert scores.shape == (len(creatives),) and scores.dtype == np.float64
    assert np.all((scores >= 0) & (scores <= 1)) and np.unique(scores).size > 1
    assert scorer.score(_context(tiny_world), []).shape == (0,)


def test_encoding_cache_hits_until_the_next_event(tiny_checkpoint, tiny_world) -> None:
    scorer = InterestScorer(tiny_checkpoint, cache_size=2)
    _, creatives, _ = tiny_world
    context = _context(tiny_world, n=6)
    first = scorer.encoding(context)
    assert scorer.encoding(context) is first and scorer.cache_len == 1
    next_event = _context(tiny_world, n=7)
    assert scorer.encoding(next_event) is not first and scorer.cache_len == 2
    uncached = InterestScorer(tiny_checkpoint, cache_size=2)
    assert np.allclose(scorer.score(next_event, creatives), uncached.score(next_event, creatives))
    scorer.encoding(_context(tiny_world, user="user-2"))
    assert scorer.cache_len == 2  # bounded


def test_no_history_is_scored_from_creative_and_context(tiny_checkpoint, tiny_world) -> None:
    scorer = InterestScorer(tiny_checkpoint)
    _, creatives, _ = tiny_world
    anonymous = DecisionContext(placement="homepage-top", now=1e9, device="mobile")
    scores = scorer.score(anonymous, creatives)
    assert np.all(np.isfinite(scores)) and np.unique(scores).size > 1
    assert scorer.cache_len == 0


def test_batched_requests_equal_single_requests(tiny_checkpoint, tiny_world) -> None:
    scorer = InterestScorer(tiny_checkpoint)
    _, creatives, _ = tiny_world
    requests = [
        (_context(tiny_world, "user-1"), creatives[:5]),
        (DecisionContext(placement="product-side", now=1e9), creatives[2:9]),
        (_context(tiny_world, "user-3", n=3), creatives[:1]),
    ]
    batched = scorer.score_many(requests)
    for (context, candidates), scores in zip(requests, batched, strict=True):
        assert np.allclose(scores, scorer.score(context, list(candidates)), atol=1e-6)


def test_recommend_excludes_purchases(tiny_checkpoint, tiny_world) -> None:
    scorer = InterestScorer(tiny_checkpoint)
    history = list(_context(tiny_world).history)
    top = scorer.recommend(history, k=5, exclude_purchased=False)
    assert len(top) == 5 and all(p > 0 for _, p in top)
    assert [p for _, p in top] == sorted((p for _, p in top), reverse=True)
    bought = BehaviourEvent(EventType.PURCHASE, history[-1].ts + 1, item_id=top[0][0])
    after = scorer.recommend([*history, bought], k=5)
    assert top[0][0] not in [item for item, _ in after]
    assert len(scorer.recommend([], k=3)) == 3  # cold start: the learned item prior


def test_attribution_covers_every_event(tiny_checkpoint, tiny_world) -> None:
    scorer = InterestScorer(tiny_checkpoint)
    _, creatives, _ = tiny_world
    context = _context(tiny_world, n=8)
    parts = scorer.attribution(context, creatives[0])
    assert [p.event for p in parts] == list(context.history)
    assert all(np.isfinite(p.gradient_x_input) for p in parts)
    assert any(p.gradient_x_input != 0 for p in parts)
    assert 0 < sum(p.attention for p in parts) <= 1.0 + 1e-6
    assert scorer.attribution(DecisionContext(placement="p", now=0.0), creatives[0]) == []


def test_int8_path_stays_close_to_fp32(tiny_checkpoint, tiny_world) -> None:
    fp32 = InterestScorer(tiny_checkpoint, precision="fp32")
    int8 = InterestScorer(tiny_checkpoint, precision="int8")
    assert "DynamicQuantizedLinear" in repr(int8.model) and "DynamicQuantizedLinear" not in repr(fp32.model)
    _, creatives, _ = tiny_world
    context = _context(tiny_world)
    assert np.max(np.abs(int8.score(context, creatives) - fp32.score(context, creatives))) < 0.02
    with pytest.raises(ValueError, match="unknown precision"):
        InterestScorer(tiny_checkpoint, precision="fp8")


def test_hot_swap_keeps_serving_through_corrupt_and_missing_artifacts(
    tiny_checkpoint, tiny_world, tmp_path: Path
) -> None:
    _, creatives, _ = tiny_world
    v2 = tmp_path / "interest" / "v2"
    shutil.copytree(tiny_checkpoint, v2)
    corrupt = tmp_path / "interest" / "broken"
    corrupt.mkdir(parents=True)
    (corrupt / "model.pt").write_bytes((tiny_checkpoint / "model.pt").read_bytes()[:2000])
    holder = InterestScorerHolder(tiny_checkpoint)
    assert isinstance(holder, Scorer) and holder.version == "v1"
    context = _context(tiny_world)
    errors: list[BaseException] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            try:
                assert holder.score(context, creatives).shape == (len(creatives),)
            except BaseException as error:  # any failed request fails the test
                errors.append(error)

    workers = [threading.Thread(target=hammer) for _ in range(3)]
    for worker in workers:
        worker.start()
    try:
        with pytest.raises(CheckpointError, match="cannot read"):
            holder.load(corrupt)
        assert holder.version == "v1" and "broken" in (holder.status()["last_error"] or "")
        with pytest.raises(CheckpointError, match="no interest model"):
            holder.load(tmp_path / "interest" / "missing")
        assert holder.version == "v1"
        holder.load(v2)
        assert holder.version == "v2" and holder.status() == {
            "ready": True,
            "version": "v2",
            "path": str(v2),
            "precision": "fp32",
            "click_trained": True,
            "click_weighed": holder.current.click_weighed,
            "scores_ads": True,
            "last_error": None,
        }
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    assert errors == []


def test_micro_batcher_groups_concurrent_requests(tiny_checkpoint, tiny_world) -> None:
    scorer = InterestScorer(tiny_checkpoint)
    _, creatives, _ = tiny_world
    contexts = [_context(tiny_world, f"user-{i}") for i in range(12)]

    async def run() -> tuple[list[np.ndarray], int]:
        batcher = MicroBatcher(scorer, max_wait_s=0.05)
        results = await asyncio.gather(*(batcher.score(c, creatives[:4]) for c in contexts))
        await batcher.close()
        return list(results), batcher.batches

    results, batches = asyncio.run(run())
    assert batches < len(contexts)
    for context, result in zip(contexts, results, strict=True):
        assert np.allclose(result, scorer.score(context, creatives[:4]), atol=1e-6)


def test_serving_path_matches_the_training_path(tiny_checkpoint, tiny_world) -> None:
    """No train/serve skew: grouped serving logits equal the per-row training computation."""
    scorer = InterestScorer(tiny_checkpoint)
    _, creatives, _ = tiny_world
    context = _context(tiny_world, n=9)
    served = scorer.click_logits_many([(context, creatives)])[0]
    history = encode_history(context.history, scorer.config, scorer.vocab)
    events = stack_histories([history] * len(creatives), scorer.config.max_len)
    inputs = click_inputs(
        [(context, c) for c in creatives], scorer.config, [history.ts] * len(creatives), events.items.shape[1]
    )
    with torch.inference_mode():
        trained = scorer.model.click_logits(events, inputs).double().numpy()
    assert np.allclose(served, trained, atol=1e-5)

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from adserve.interest.checkpoint import load_checkpoint
from adserve.interest.data import ItemVocabulary, encode_history, stack_histories
from adserve.interest.synthetic import generate_behaviour
from adserve.interest.training import (
    TrainConfig,
    _length_bucketed,
    _warm_start,
    default_model_config,
    evaluate_checkpoint,
    train_interest,
)

from .conftest import FAST, TINY


def test_report_has_the_documented_shape(tiny_result) -> None:
    report = tiny_result.report
    assert set(report) == {"next_item", "next_item_exclude_seen", "click"}
    for section in ("next_item", "next_item_exclude_seen"):
        assert set(report[section]) == {"interest", "most_popular", "markov"}
        for values in report[section].values():
            assert set(values) == {"hr@10", "ndcg@10", "mrr@10"}
            assert all(0.0 <= v <= 1.0 for v in values.values())
    assert set(report["click"]["interest"]) == {"auc", "logloss", "ne", "calibration"}
    assert tiny_result.calibration is not None
    assert tiny_result.metrics["training"]["sequences_per_second"] > 0


def test_same_seed_same_weights_and_metrics(tiny_world) -> None:
    sequences, _, clicks = tiny_world
    config = replace(FAST, max_epochs=2)
    first = train_interest(sequences, clicks[:200], model_config=TINY, train_config=config)
    second = train_interest(sequences, clicks[:200], model_config=TINY, train_config=config)
    for (name, a), (_, b) in zip(
        first.model.state_dict().items(), second.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert first.report == second.report
    other = train_interest(sequences, clicks[:200], model_config=TINY, train_config=replace(config, seed=1))
    assert not torch.equal(first.model.encoder.blocks[0].qkv.weight, other.model.encoder.blocks[0].qkv.weight)


def test_checkpoint_round_trip_gives_identical_scores(tiny_result, tiny_checkpoint, tiny_world) -> None:
    sequences, _, _ = tiny_world
    assert (tiny_checkpoint / "model.pt").is_file()
    assert tiny_checkpoint.parent.name == "interest" and tiny_checkpoint.name == "v1"
    saved_metrics = json.loads((tiny_checkpoint / "metrics.json").read_text())
    assert (
        saved_metrics["metrics"]["next_item"]["interest"]["ndcg@10"]
        == tiny_result.report["next_item"]["interest"]["ndcg@10"]
    )
    loaded = load_checkpoint(tiny_checkpoint)
    assert loaded.config == tiny_result.model.cfg and loaded.vocab.item_ids == tiny_result.vocab.item_ids
    assert loaded.data_window["n_users"] == len(sequences)
    histories = [encode_history(sequences[u], loaded.config, loaded.vocab) for u in sorted(sequences)[:5]]
    events = stack_histories(histories, loaded.config.max_len)
    with torch.inference_mode():
        assert torch.equal(loaded.model.next_item_logits(events), tiny_result.model.next_item_logits(events))
    x = np.array([-2.0, 0.0, 1.5])
    assert np.array_equal(loaded.calibration(x), tiny_result.calibration(x))


def test_evaluate_checkpoint_matches_training_report(tiny_result, tiny_checkpoint, tiny_world) -> None:
    sequences, _, clicks = tiny_world
    report = evaluate_checkpoint(tiny_checkpoint, sequences, clicks)
    assert report["next_item"] == tiny_result.report["next_item"]
    # the click figures are those of the serving scorer itself on the newest impressions
    from adserve.interest.evaluation import click_metrics
    from adserve.interest.scorer import InterestScorer
    from adserve.interest.training import split_click_examples

    test = split_click_examples(sorted(clicks, key=lambda e: e.context.now))[2]
    scorer = InterestScorer(tiny_checkpoint, device="cpu")
    served = np.array([scorer.score(e.context, [e.candidate])[0] for e in test])
    expected = click_metrics(served, np.array([float(e.clicked) for e in test]))
    assert report["click"]["interest"]["auc"] == pytest.approx(expected["auc"], abs=1e-9)
    assert report["click"]["interest"]["logloss"] == pytest.approx(expected["logloss"], rel=1e-6)


def test_warm_start_carries_weights_and_moves_biases_with_item_ids(tiny_result, tiny_checkpoint) -> None:
    old_vocab = tiny_result.vocab
    new_vocab = ItemVocabulary(["brand-new", *reversed(old_vocab.item_ids)])
    model = type(tiny_result.model)(replace(tiny_result.model.cfg, n_items=len(new_vocab)))
    _warm_start(model, new_vocab, tiny_checkpoint)
    old_bias = tiny_result.model.next_item.bias
    for item in old_vocab.item_ids[:5]:
        assert model.next_item.bias[new_vocab.index[item]] == old_bias[old_vocab.index[item]]
    assert model.next_item.bias[new_vocab.index["brand-new"]] == 0.0
    assert torch.equal(model.encoder.events.item.weight, tiny_result.model.encoder.events.item.weight)


def test_a_warm_started_retrain_never_returns_a_version_worse_than_its_parent(
    tiny_result, tiny_checkpoint, tiny_world
) -> None:
    # learning rates this large wreck both stages within an epoch; the retrain must notice on
    # validation and hand back its parent's weights rather than the best of its wrecked epochs
    sequences, _, clicks = tiny_world
    wrecking = replace(FAST, lr=5.0, click_lr=50.0)
    retrained = train_interest(sequences, clicks, train_config=wrecking, warm_start=tiny_checkpoint)
    stats = retrained.metrics["training"]
    assert stats["best_epoch"] == 0 and stats["click_best_epoch"] == 0, stats
    assert stats["val_ndcg@10"] == pytest.approx(tiny_result.metrics["training"]["val_ndcg@10"])
    parent = tiny_result.model.state_dict()
    for name, tensor in retrained.model.state_dict().items():
        assert torch.equal(tensor, parent[name]), name
    # the same wrecking rates from scratch have no parent to fall back on: their epochs are kept
    scratch = train_interest(sequences, clicks, model_config=TINY, train_config=wrecking)
    assert scratch.metrics["training"]["best_epoch"] >= 1


def test_model_learns_sequences_better_than_popularity() -> None:
    # only user_id, item_id, timestamp: no category or type, as in a public interaction log
    sequences, _ = generate_behaviour(
        n_users=300, n_items=60, n_categories=6, mean_length=20, seed=3, with_features=False
    )
    config = replace(TINY, hidden=32, dropout=0.1, max_len=20)
    result = train_interest(
        sequences,
        model_config=config,
        train_config=TrainConfig(max_epochs=12, patience=3, progress=False, lr=3e-3),
    )
    ndcg = {name: m["ndcg@10"] for name, m in result.report["next_item"].items()}
    assert ndcg["interest"] > 1.5 * ndcg["most_popular"], ndcg


def test_default_dropout_follows_data_density() -> None:
    vocab = ItemVocabulary([f"i{i}" for i in range(100)])
    assert default_model_config(vocab, mean_length=150.0).dropout == 0.2
    assert default_model_config(vocab, mean_length=8.0).dropout == 0.5
    assert default_model_config(vocab, mean_length=8.0, dropout=0.3).dropout == 0.3
    assert default_model_config(vocab).item_buckets == 1024 and default_model_config(vocab).n_items == 101


def test_length_bucketed_batches_cover_every_window_once() -> None:
    lengths = np.random.default_rng(0).integers(1, 200, 1000)
    order = np.random.default_rng(1).permutation(1000)
    batches = _length_bucketed(order, lengths, 32, np.random.default_rng(2), pool=4)
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    assert all(len(b) <= 32 for b in batches)
    spread = np.mean([lengths[b].max() - lengths[b].min() for b in batches])
    assert spread < 60  # random batches of 32 from 1..200 would spread ~180


def test_click_training_leaves_next_item_quality_unchanged(tiny_result, tiny_world) -> None:
    """The click head trains with the encoder frozen and the fusion is fitted after the network:
    the same seed with and without impressions gives the same next-item figures."""
    from adserve.interest.fusion import FEATURES
    from tests.unit.interest.conftest import FAST, TINY

    sequences, _, _ = tiny_world
    without_clicks = train_interest(sequences, (), model_config=TINY, train_config=FAST)
    assert without_clicks.fusion is None and tiny_result.fusion is not None
    assert without_clicks.report["next_item"] == tiny_result.report["next_item"]
    # what serves ads is calibrated on held-out impressions and reported with the version
    served = tiny_result.report["click"]["interest"]
    assert set(served) == {"auc", "logloss", "ne", "calibration"}
    assert tiny_result.metrics["fusion"].keys() == set(FEATURES)

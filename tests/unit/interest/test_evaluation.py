from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from adserve.domain import BehaviourEvent, EventType
from adserve.interest.data import ItemVocabulary, encode_history
from adserve.interest.evaluation import (
    MarkovChain,
    MostPopular,
    click_metrics,
    evaluate_next_item,
    format_report,
    leave_one_out,
    ranking_metrics,
    target_ranks,
)

from .conftest import TINY


def test_ranks_are_full_and_ties_count_against_the_target() -> None:
    scores = torch.tensor([[9.0, 0.1, 0.5, 0.3, 0.3], [9.0, 0.2, 0.2, 0.2, 0.2]])
    ranks = target_ranks(scores, torch.tensor([3, 1]))
    assert ranks.tolist() == [2, 3]  # column 0 (padding) never competes; a 4-way tie ranks last
    seen = [np.array([2]), np.array([1])]
    assert target_ranks(scores, torch.tensor([3, 1]), seen).tolist() == [1, 5]  # seen target = miss


def test_metrics_by_hand() -> None:
    metrics = ranking_metrics(torch.tensor([0, 1, 9, 10]))
    assert metrics["hr@10"] == pytest.approx(0.75)
    assert metrics["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(11)) / 4)
    assert metrics["mrr@10"] == pytest.approx((1 + 0.5 + 0.1) / 4)


def test_click_metrics_by_hand() -> None:
    p = np.array([0.1, 0.4, 0.35, 0.8])
    y = np.array([0, 0, 1, 1])
    metrics = click_metrics(p, y)
    assert metrics["auc"] == pytest.approx(0.75)
    assert metrics["logloss"] == pytest.approx(-np.mean(np.log([0.9, 0.6, 0.35, 0.8])))
    assert metrics["calibration"] == pytest.approx(1.65 / 2)
    assert click_metrics(np.array([0.5, 0.5]), np.array([0, 1]))["auc"] == pytest.approx(0.5)  # ties
    base = click_metrics(np.full(4, 0.25), np.array([0, 0, 0, 1]))
    assert base["ne"] == pytest.approx(1.0) and base["calibration"] == pytest.approx(1.0)


def _histories(sequences: list[list[str]]):
    events = [
        [BehaviourEvent(EventType.PRODUCT_VIEW, float(t), item_id=i) for t, i in enumerate(s)]
        for s in sequences
    ]
    vocab = ItemVocabulary.from_sequences(events)
    return [encode_history(e, TINY, vocab) for e in events], vocab


def test_leave_one_out_by_time() -> None:
    histories, vocab = _histories([["a", "b", "c", "d"], ["a", "b"]])
    split = leave_one_out(histories)
    assert [len(h) for h in split.train] == [2, 2]  # short users keep all their events for training
    assert split.val_targets.tolist() == [vocab.index["c"]]
    assert split.test_targets.tolist() == [vocab.index["d"]]
    assert len(split.val_inputs[0]) == 2 and len(split.test_inputs[0]) == 3


def test_baselines_by_hand() -> None:
    histories, vocab = _histories([["a", "b", "a", "b", "a", "c"], ["c", "c", "d"]])
    pop = MostPopular(histories, len(vocab))
    assert pop.counts.tolist() == [0.0, 3.0, 2.0, 3.0, 1.0]
    markov = MarkovChain(histories, len(vocab))
    scores = markov.scores([histories[1].head(1)])[0]  # last item c → c (1 of 2) or d (1 of 2)
    assert scores[vocab.index["c"]] > 0.5 and scores[vocab.index["d"]] > 0.5
    assert scores[vocab.index["a"]] < 0.01
    plain, new = evaluate_next_item([pop, markov], [histories[0].head(5)], np.array([vocab.index["c"]]))
    assert plain["markov"]["hr@10"] == 1.0 and plain["markov"]["mrr@10"] == pytest.approx(
        0.5
    )  # a→b beats a→c
    assert new["markov"]["mrr@10"] == 1.0  # with a, b masked as seen, c is first
    text = format_report({"next_item": plain, "next_item_exclude_seen": new, "click": {}})
    assert "markov" in text and "ndcg@10" in text and "next_item_exclude_seen" in text

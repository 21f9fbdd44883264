"""Offline evaluation: next item by leave-one-out full ranking, click model on a time-split holdout.

Next item: for each user with at least three item events, the last one is the test target and
the second-to-last the validation target; the model sees only the events before the target and
ranks EVERY catalogue item (no sampled negatives, whose numbers are much higher and not
comparable). Ties count against the target (rank = items scoring >= it, itself excluded), so a
model that gives everything the same score ranks nothing. "exclude seen" masks every item already
in the user's input history; a target the user had already interacted with is then a miss.

Report shape (also written as JSON):
    {"next_item": {"<model>": {"hr@10", "ndcg@10", "mrr@10"}, …},
     "next_item_exclude_seen": {same models, seen items masked},
     "click": {"<model>": {"auc", "logloss", "ne", "calibration"}, …}}
The model's own entries are named "interest".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from adserve.interest.calibration import calibration_ratio
from adserve.interest.data import EncodedHistory, stack_histories

if TYPE_CHECKING:
    from adserve.interest.network import InterestModel

__all__ = [
    "InterestRanker",
    "LeaveOneOut",
    "MarkovChain",
    "MostPopular",
    "NextItemRanker",
    "click_metrics",
    "evaluate_next_item",
    "format_report",
    "leave_one_out",
    "ranking_metrics",
    "target_ranks",
]

K = 10


class NextItemRanker(Protocol):
    """Anything that scores every vocabulary item for a batch of input histories."""

    name: str

    def scores(self, histories: Sequence[EncodedHistory]) -> torch.Tensor:
        """(B, V) float scores; column 0 (padding) is ignored."""
        ...


@dataclass(frozen=True, slots=True)
class LeaveOneOut:
    """Per-user split by time. `train` holds every user's training events (users with fewer than
    three item events keep all of theirs); validation/test rows are for users with at least three.
    """

    train: list[EncodedHistory]
    val_inputs: list[EncodedHistory]
    val_targets: np.ndarray
    test_inputs: list[EncodedHistory]
    test_targets: np.ndarray


def leave_one_out(histories: Sequence[EncodedHistory]) -> LeaveOneOut:
    """Split encoded histories (targets filled from the vocabulary) by time, per user."""
    train, val_inputs, test_inputs = [], [], []
    val_targets, test_targets = [], []
    for history in histories:
        item_positions = np.flatnonzero(history.targets > 0)
        if len(item_positions) < 3:
            train.append(history)
            continue
        val_at, test_at = int(item_positions[-2]), int(item_positions[-1])
        train.append(history.head(val_at))
        val_inputs.append(history.head(val_at))
        val_targets.append(history.targets[val_at])
        test_inputs.append(history.head(test_at))
        test_targets.append(history.targets[test_at])
    return LeaveOneOut(
        train,
        val_inputs,
        np.array(val_targets, dtype=np.int64),
        test_inputs,
        np.array(test_targets, dtype=np.int64),
    )


def target_ranks(
    scores: torch.Tensor, targets: torch.Tensor, seen: Sequence[np.ndarray] | None = None
) -> torch.Tensor:
    """0-based rank of each target among all items. scores: (B, V); targets: (B,) int64.

    Padding (column 0) never competes. With `seen` (one array of vocabulary rows per user), those
    items are removed from the ranking; a target among them gets rank V (a miss).
    """
    scores = scores.float().clone()
    scores[:, 0] = float("-inf")
    rows = torch.arange(len(targets))
    if seen is not None:
        for row, items in enumerate(seen):
            if len(items):
                scores[row, torch.from_numpy(np.asarray(items, dtype=np.int64))] = float("-inf")
    target_scores = scores[rows, targets]
    ranks = (scores >= target_scores[:, None]).sum(dim=1) - 1
    missing = torch.isinf(target_scores) | (targets == 0)
    return torch.where(missing, torch.full_like(ranks, scores.shape[1]), ranks)


def ranking_metrics(ranks: torch.Tensor | np.ndarray, k: int = K) -> dict[str, float]:
    """HR@k, NDCG@k and MRR@k of 0-based ranks (one relevant item per user)."""
    ranks = torch.as_tensor(ranks, dtype=torch.float64)
    if ranks.numel() == 0:
        return {f"hr@{k}": float("nan"), f"ndcg@{k}": float("nan"), f"mrr@{k}": float("nan")}
    hit = ranks < k
    return {
        f"hr@{k}": float(hit.double().mean()),
        f"ndcg@{k}": float(torch.where(hit, 1.0 / torch.log2(ranks + 2.0), 0.0).mean()),
        f"mrr@{k}": float(torch.where(hit, 1.0 / (ranks + 1.0), 0.0).mean()),
    }


def _seen_items(history: EncodedHistory) -> np.ndarray:
    return np.unique(history.targets[history.targets > 0])


def evaluate_next_item(
    rankers: Sequence[NextItemRanker],
    inputs: Sequence[EncodedHistory],
    targets: np.ndarray,
    k: int = K,
    batch_size: int = 512,
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """(all items, seen excluded) metrics per ranker name, full ranking over the vocabulary."""
    plain: dict[str, dict[str, float]] = {}
    excluded: dict[str, dict[str, float]] = {}
    for ranker in rankers:
        ranks_all, ranks_new = [], []
        for start in range(0, len(inputs), batch_size):
            chunk = inputs[start : start + batch_size]
            scores = ranker.scores(chunk).cpu()
            chunk_targets = torch.from_numpy(targets[start : start + batch_size])
            ranks_all.append(target_ranks(scores, chunk_targets))
            ranks_new.append(target_ranks(scores, chunk_targets, [_seen_items(h) for h in chunk]))
        plain[ranker.name] = ranking_metrics(torch.cat(ranks_all) if ranks_all else torch.zeros(0), k)
        excluded[ranker.name] = ranking_metrics(torch.cat(ranks_new) if ranks_new else torch.zeros(0), k)
    return plain, excluded


class InterestRanker:
    """The interest model's next-item head as a ranker."""

    name = "interest"

    def __init__(self, model: InterestModel, device: torch.device | str = "cpu") -> None:
        self.model = model
        self.device = torch.device(device)

    def scores(self, histories: Sequence[EncodedHistory]) -> torch.Tensor:
        was_training = self.model.training
        self.model.eval()
        with torch.inference_mode():
            events = stack_histories(histories, self.model.cfg.max_len).to(self.device)
            scores = self.model.next_item_logits(events)
        self.model.train(was_training)
        return scores


class MostPopular:
    """Items ranked by how often they occur in the training events."""

    name = "most_popular"

    def __init__(self, train: Sequence[EncodedHistory], n_items: int) -> None:
        counts = np.zeros(n_items, dtype=np.float64)
        for history in train:
            np.add.at(counts, history.targets[history.targets > 0], 1.0)
        self.counts = torch.from_numpy(counts)

    def scores(self, histories: Sequence[EncodedHistory]) -> torch.Tensor:
        return self.counts.expand(len(histories), -1)


class MarkovChain:
    """First-order Markov chain: P(next | last item) from consecutive training pairs, backed off
    to popularity so that every item gets a score and ties are broken by popularity."""

    name = "markov"

    def __init__(self, train: Sequence[EncodedHistory], n_items: int, backoff: float = 1e-3) -> None:
        sources, destinations = [], []
        popularity = np.zeros(n_items, dtype=np.float64)
        for history in train:
            items = history.targets[history.targets > 0]
            np.add.at(popularity, items, 1.0)
            sources.append(items[:-1])
            destinations.append(items[1:])
        pairs = np.stack(
            [
                np.concatenate(sources or [np.zeros(0, np.int64)]),
                np.concatenate(destinations or [np.zeros(0, np.int64)]),
            ]
        )
        keys, counts = np.unique(pairs[0] * n_items + pairs[1], return_counts=True)
        source, destination = keys // n_items, keys % n_items
        out_degree = np.bincount(source, weights=counts, minlength=n_items)
        self.indptr = np.concatenate([[0], np.cumsum(np.bincount(source, minlength=n_items))])
        self.indices = destination
        self.probabilities = counts / np.maximum(out_degree[source], 1.0)
        self.backoff = torch.from_numpy(backoff * popularity / max(popularity.sum(), 1.0))

    def scores(self, histories: Sequence[EncodedHistory]) -> torch.Tensor:
        scores = self.backoff.expand(len(histories), -1).clone()
        for row, history in enumerate(histories):
            items = history.targets[history.targets > 0]
            if len(items):
                last = items[-1]
                lo, hi = self.indptr[last], self.indptr[last + 1]
                scores[row, torch.from_numpy(self.indices[lo:hi])] += torch.from_numpy(
                    self.probabilities[lo:hi]
                )
        return scores


def _auc(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mann–Whitney AUC with average ranks for ties; nan without both classes."""
    y = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(probabilities, kind="mergesort")
    sorted_p = np.asarray(probabilities)[order]
    ranks = np.empty(len(sorted_p), dtype=np.float64)
    boundaries = np.flatnonzero(np.diff(sorted_p)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(sorted_p)]])
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2.0  # average of 1-based ranks start+1..end
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def click_metrics(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """AUC, log loss, normalised entropy (log loss / entropy of the base rate) and calibration ratio."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(labels, dtype=np.float64)
    logloss = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))) if len(y) else float("nan")
    rate = float(y.mean()) if len(y) else float("nan")
    if 0 < rate < 1:
        entropy = -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))
        ne = logloss / entropy
    else:
        ne = float("nan")
    return {"auc": _auc(p, y), "logloss": logloss, "ne": ne, "calibration": calibration_ratio(p, y)}


def format_report(report: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """The evaluation report as aligned text tables, one per section."""
    lines: list[str] = []
    for section, models in report.items():
        if not isinstance(models, Mapping) or not models:
            continue
        rows = [(name, values) for name, values in models.items() if isinstance(values, Mapping)]
        if not rows:
            continue
        columns = list(rows[0][1])
        width = max(12, *(len(name) for name, _ in rows))
        lines.append(section)
        lines.append("  " + "model".ljust(width) + "".join(c.rjust(10) for c in columns))
        for name, values in rows:
            cells = "".join(f"{values.get(c, float('nan')):10.4f}" for c in columns)
            lines.append("  " + name.ljust(width) + cells)
        lines.append("")
    return "\n".join(lines)

"""Training from plain rows: next-item pretraining, then the click head, calibration and evaluation.

Entry point: `train_interest(sequences, click_examples)`, with sequences a mapping user → events
(oldest first) and click examples built point-in-time by `data.make_click_example`. The same
function runs in one process or under `torchrun` (DistributedDataParallel; see `train_ddp`).

Stage 1 trains the encoder and next-item head with cross-entropy at every position on the
leave-one-out training part, early-stopped on validation NDCG@10 (full ranking). Stage 2 trains
the click head on the oldest 70% of impressions with the encoder frozen (the next-item head is
what the promotion gate measures; a few thousand clicks would only blur it), early-stopped on
the next 15%, which also fits the head's own calibration and its weight in the fusion (the
fusion's other weights are fitted on the oldest 85%); the newest 15% is the reported holdout.

One module, past 450 lines, on purpose: both training stages, the fusion fit and the report share
one split of the data; keeping them together keeps that split the same everywhere.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from adserve.domain import BehaviourEvent
from adserve.interest.calibration import (
    Calibrator,
    calibrator_from_dict,
    fit_calibrator,
    reliability_by_decile,
)
from adserve.interest.checkpoint import LoadedCheckpoint, config_from_dict, load_checkpoint, save_checkpoint
from adserve.interest.data import (
    ClickExample,
    EncodedHistory,
    ItemVocabulary,
    click_inputs,
    collate_windows,
    encode_history,
    next_item_windows,
    stack_histories,
)
from adserve.interest.evaluation import (
    InterestRanker,
    LeaveOneOut,
    MarkovChain,
    MostPopular,
    click_metrics,
    evaluate_next_item,
    leave_one_out,
    target_ranks,
)
from adserve.interest.fusion import (
    FEATURES,
    ClickFusion,
    creative_priors,
    item_categories,
    leave_one_out_priors,
)
from adserve.interest.network import InterestConfig, InterestModel, suggest_item_buckets
from adserve.interest.scorer import InterestScorer, quantize_int8

__all__ = [
    "TrainConfig",
    "TrainResult",
    "default_model_config",
    "evaluate_checkpoint",
    "resolve_device",
    "split_click_examples",
    "train_interest",
]


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """How to train (not what to build: that is InterestConfig)."""

    seed: int = 0
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    max_epochs: int = 200
    patience: int = 10  # epochs without a better validation NDCG@10 before stopping
    max_seconds: float | None = None  # wall-clock cap for stage 1 (benchmarks, smoke runs)
    click_max_epochs: int = 30
    click_patience: int = 3
    click_batch_size: int = 256
    click_lr: float = 1e-3
    click_weight_decay: float = 0.0
    calibration: str = "platt"
    device: str | None = None  # None: CUDA when present, else CPU
    progress: bool = True
    eval_batch_size: int = 512


@dataclass(slots=True)
class TrainResult:
    """A trained model and everything its checkpoint needs."""

    model: InterestModel
    vocab: ItemVocabulary
    calibration: Calibrator | None
    report: dict[str, Any]  # evaluation report, exactly the shape of evaluation.py's docstring
    metrics: dict[str, Any]  # report + validation, training statistics and reliability
    data_window: dict[str, Any]
    train_config: TrainConfig
    fusion: ClickFusion | None = None  # the served P(click); None without impressions

    def save(self, root: str | Path, version: str | None = None) -> Path:
        """Write `<root>/interest/<version>/` (model.pt + metrics.json); returns that directory."""
        return save_checkpoint(
            root,
            self.model,
            self.vocab,
            self.calibration,
            self.metrics,
            self.data_window,
            asdict(self.train_config),
            version,
            self.fusion,
        )


def resolve_device(name: str | None = None) -> torch.device:
    """The requested device; None picks this process's CUDA device when present, else CPU."""
    if name is not None:
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum across processes (identity in one process)."""
    if _world()[1] == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


SPARSE_MEAN_LENGTH = 20.0


def default_model_config(
    vocab: ItemVocabulary, mean_length: float | None = None, **overrides: Any
) -> InterestConfig:
    """SASRec-CE defaults sized to the catalogue: hash table ≥ 4x the items, vocabulary rows.

    Dropout follows the data's density as SASRec's own tuning did: 0.2 for long histories
    (MovieLens-like), 0.5 when users average fewer than 20 events (Amazon-reviews-like), where
    the model otherwise memorises the few sequences it has.
    """
    values: dict[str, Any] = {"item_buckets": suggest_item_buckets(len(vocab))}
    if mean_length is not None and mean_length < SPARSE_MEAN_LENGTH:
        values["dropout"] = 0.5
    values.update(overrides)
    return InterestConfig(n_items=len(vocab), **values)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)  # nothing here uses it, but user code in the same process might


def _data_window(sequences: Mapping[str, Sequence[BehaviourEvent]], clicks: Sequence[ClickExample]) -> dict:
    timestamps = [e.ts for events in sequences.values() for e in (*events[:1], *events[-1:])]
    return {
        "events_from": min(timestamps, default=None),
        "events_to": max(timestamps, default=None),
        "n_users": len(sequences),
        "n_events": sum(len(events) for events in sequences.values()),
        "impressions_from": clicks[0].context.now if clicks else None,
        "impressions_to": clicks[-1].context.now if clicks else None,
        "n_impressions": len(clicks),
        "n_clicks": sum(example.clicked for example in clicks),
    }


def split_click_examples(
    examples: Sequence[ClickExample], val_fraction: float = 0.15, test_fraction: float = 0.15
) -> tuple[list[ClickExample], list[ClickExample], list[ClickExample]]:
    """(train, validation, test) by decision time: test is the newest slice, validation before it."""
    ordered = sorted(examples, key=lambda example: example.context.now)
    n = len(ordered)
    n_test, n_val = int(n * test_fraction), int(n * val_fraction)
    return ordered[: n - n_val - n_test], ordered[n - n_val - n_test : n - n_test], ordered[n - n_test :]


class _NextItemObjective(nn.Module):
    """Holds only what stage 1 trains, so DDP sees no unused parameters."""

    def __init__(self, model: InterestModel) -> None:
        super().__init__()
        self.encoder = model.encoder
        self.head = model.next_item

    def forward(self, events: Any, targets: torch.Tensor) -> torch.Tensor:
        encoded = self.encoder(events)
        return self.head.loss(
            encoded.reshape(-1, encoded.shape[-1]), targets.reshape(-1), self.encoder.events
        )


class _ClickObjective(nn.Module):
    """The click head's BCE over a frozen encoder (kept out of the module tree on purpose)."""

    def __init__(self, model: InterestModel) -> None:
        super().__init__()
        self.head = model.click
        self._model = [model]  # a list hides it from nn.Module registration and from DDP

    def forward(self, events: Any, inputs: Any, labels: torch.Tensor | None = None) -> torch.Tensor:
        encoder = self._model[0].encoder
        with torch.no_grad():
            encoded = encoder(events)
        logits, _ = self.head(encoded, events.padding, inputs, encoder.events)
        if labels is None:
            return logits
        return F.binary_cross_entropy_with_logits(logits, labels)


def _wrap(module: nn.Module, device: torch.device) -> nn.Module:
    if _world()[1] == 1:
        return module
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


def _shard(indices: np.ndarray, rank: int, world: int) -> np.ndarray:
    """This rank's share; padded by wrapping so every rank runs the same number of batches."""
    if world == 1:
        return indices
    total = math.ceil(len(indices) / world) * world
    padded = np.resize(indices, total)
    return padded[rank::world]


def _length_bucketed(
    order: np.ndarray, lengths: np.ndarray, batch_size: int, rng: np.random.Generator, pool: int = 50
) -> list[np.ndarray]:
    """Batches of similar-length windows, in random order.

    A batch is as long as its longest window; with skewed history lengths a random batch is
    mostly padding. Sorting within pools of `pool` batches (not globally) keeps batches random
    while cutting the padding, and the batch count stays the same on every DDP rank.
    """
    batches: list[np.ndarray] = []
    step = batch_size * pool
    for start in range(0, len(order), step):
        chunk = order[start : start + step]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def _validation_ndcg(
    model: InterestModel, split: LeaveOneOut, device: torch.device, batch_size: int, k: int = 10
) -> float:
    rank, world = _world()
    ranker = InterestRanker(model, device)
    total, count = 0.0, 0.0
    mine = range(rank, len(split.val_inputs), world)
    for start in range(0, len(mine), batch_size):
        rows = list(mine[start : start + batch_size])
        scores = ranker.scores([split.val_inputs[i] for i in rows]).cpu()
        ranks = target_ranks(scores, torch.from_numpy(split.val_targets[rows])).double()
        total += float(torch.where(ranks < k, 1.0 / torch.log2(ranks + 2.0), 0.0).sum())
        count += len(rows)
    total, count = _all_sum([total, count], device)
    return total / count if count else float("nan")


def _fit_next_item(
    model: InterestModel,
    split: LeaveOneOut,
    tc: TrainConfig,
    device: torch.device,
    warm_started: bool = False,
) -> dict[str, Any]:
    rank, world = _world()
    cfg = model.cfg
    windows = next_item_windows(split.train, cfg.max_len)
    if not windows:
        raise ValueError("no training sequences: every user needs at least two item events")
    lengths = np.array([w.stop - w.start for w in windows])
    objective = _wrap(_NextItemObjective(model), device)
    optimiser = torch.optim.Adam(
        [p for p in objective.parameters() if p.requires_grad], lr=tc.lr, weight_decay=tc.weight_decay
    )
    order_rng = np.random.default_rng(tc.seed)
    # Epoch 0 is where training starts: a warm start is kept unless an epoch beats it on
    # validation, so a retrain whose first Adam steps overshoot cannot hand the gate a version
    # worse at next item than its parent (a ratchet the gate's tolerance would let through).
    best_ndcg = _validation_ndcg(model, split, device, tc.eval_batch_size) if warm_started else -1.0
    best_epoch, best_state = 0, copy.deepcopy(model.state_dict())
    started = time.perf_counter()
    trained_sequences, train_seconds, epoch = 0, 0.0, 0
    history: list[dict[str, float]] = []
    for epoch in range(1, tc.max_epochs + 1):
        model.train()
        mine = _shard(order_rng.permutation(len(windows)), rank, world)
        batches = _length_bucketed(mine, lengths, tc.batch_size, order_rng)
        bar = tqdm(
            batches, desc=f"next-item epoch {epoch}", disable=not tc.progress or rank != 0, leave=False
        )
        epoch_started, loss_sum = time.perf_counter(), 0.0
        for batch in bar:
            chosen = [windows[i] for i in batch]
            events, targets = collate_windows(split.train, chosen, cfg.max_len)
            loss = objective(events.to(device), targets.to(device))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            loss_sum += float(loss.detach())
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
        train_seconds += time.perf_counter() - epoch_started
        trained_sequences += len(mine) * world
        ndcg = _validation_ndcg(model, split, device, tc.eval_batch_size)
        history.append({"epoch": epoch, "loss": loss_sum / max(len(batches), 1), "val_ndcg@10": ndcg})
        if rank == 0 and tc.progress:
            tqdm.write(f"epoch {epoch}: loss {history[-1]['loss']:.4f}  val NDCG@10 {ndcg:.4f}")
        if ndcg > best_ndcg:
            best_ndcg, best_epoch, best_state = ndcg, epoch, copy.deepcopy(model.state_dict())
        elapsed = time.perf_counter() - started
        # every rank computed the same all-reduced ndcg, so they all stop at the same epoch
        if epoch - best_epoch >= tc.patience or (tc.max_seconds is not None and elapsed > tc.max_seconds):
            break
    model.load_state_dict(best_state)
    return {
        "epochs": epoch,
        "best_epoch": best_epoch,
        "val_ndcg@10": best_ndcg,
        "sequences_per_second": trained_sequences / max(train_seconds, 1e-9),
        "seconds": time.perf_counter() - started,
        "n_windows": len(windows),
        "history": history,
    }


@dataclass(slots=True)
class _ClickTable:
    """Click examples with their encoded histories, ready to batch."""

    examples: list[ClickExample]
    histories: list[EncodedHistory]

    @classmethod
    def build(cls, examples: Sequence[ClickExample], cfg: InterestConfig) -> _ClickTable:
        return cls(list(examples), [encode_history(e.context.history[-cfg.max_len :], cfg) for e in examples])

    def batch(
        self, rows: Sequence[int], cfg: InterestConfig, device: torch.device
    ) -> tuple[Any, Any, torch.Tensor]:
        histories = [self.histories[i] for i in rows]
        events = stack_histories(histories, cfg.max_len)
        inputs = click_inputs(
            [(self.examples[i].context, self.examples[i].candidate) for i in rows],
            cfg,
            [h.ts for h in histories],
            events.items.shape[1],
        )
        labels = torch.tensor([float(self.examples[i].clicked) for i in rows])
        return events.to(device), inputs.to(device), labels.to(device)


def _click_logits(
    objective: _ClickObjective, table: _ClickTable, cfg: InterestConfig, device: torch.device
) -> np.ndarray:
    objective.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(table.examples), 1024):
            events, inputs, _ = table.batch(range(start, min(start + 1024, len(table.examples))), cfg, device)
            out.append(objective(events, inputs).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def _bce(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.logaddexp(0.0, logits) - labels * logits)) if len(labels) else float("nan")


def _fit_click(
    model: InterestModel,
    train: _ClickTable,
    val: _ClickTable,
    tc: TrainConfig,
    device: torch.device,
    warm_started: bool = False,
) -> dict[str, Any]:
    rank, world = _world()
    cfg = model.cfg
    for parameter in model.encoder.parameters():
        parameter.requires_grad_(False)
    model.encoder.eval()
    local = _ClickObjective(model)
    objective = _wrap(local, device)
    optimiser = torch.optim.AdamW(local.head.parameters(), lr=tc.click_lr, weight_decay=tc.click_weight_decay)
    order_rng = np.random.default_rng(tc.seed + 1)
    val_labels = np.array([float(e.clicked) for e in val.examples])
    # a warm-started head (epoch 0) stays unless an epoch beats it on validation
    best_loss = _bce(_click_logits(local, val, cfg, device), val_labels) if warm_started else math.inf
    best_epoch, best_state = 0, copy.deepcopy(local.head.state_dict())
    epoch = 0
    for epoch in range(1, tc.click_max_epochs + 1):
        local.head.train()
        mine = _shard(order_rng.permutation(len(train.examples)), rank, world)
        bar = tqdm(
            range(0, len(mine), tc.click_batch_size),
            desc=f"click epoch {epoch}",
            disable=not tc.progress or rank != 0,
            leave=False,
        )
        for start in bar:
            events, inputs, labels = train.batch(mine[start : start + tc.click_batch_size], cfg, device)
            loss = objective(events, inputs, labels)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
        val_loss = _bce(_click_logits(local, val, cfg, device), val_labels)
        if rank == 0 and tc.progress:
            tqdm.write(f"click epoch {epoch}: val log loss {val_loss:.4f}")
        if val_loss < best_loss:
            best_loss, best_epoch, best_state = val_loss, epoch, copy.deepcopy(local.head.state_dict())
        if epoch - best_epoch >= tc.click_patience:
            break
    local.head.load_state_dict(best_state)
    for parameter in model.encoder.parameters():
        parameter.requires_grad_(True)
    return {"click_epochs": epoch, "click_best_epoch": best_epoch, "click_val_logloss": best_loss}


def _warm_start(model: InterestModel, vocab: ItemVocabulary, path: str | Path) -> None:
    """Copy a previous checkpoint's weights; output biases follow their item ids into the new
    vocabulary (input embeddings are hashed, so they carry over unchanged)."""
    previous = load_checkpoint(path)
    state = model.state_dict()
    for name, tensor in previous.model.state_dict().items():
        if name in ("next_item.vocab_hash", "next_item.bias"):
            continue
        if name in state and state[name].shape == tensor.shape:
            state[name] = tensor.clone()
    bias = state["next_item.bias"].clone()
    old_bias = previous.model.state_dict()["next_item.bias"]
    for item, row in vocab.index.items():
        old_row = previous.vocab.index.get(item)
        if old_row is not None:
            bias[row] = old_bias[old_row]
    state["next_item.bias"] = bias
    model.load_state_dict(state)


def _click_report(
    model: InterestModel,
    tables: tuple[_ClickTable, _ClickTable, _ClickTable],
    tc: TrainConfig,
    device: torch.device,
) -> tuple[Calibrator, dict[str, dict[str, float]]]:
    """The click head's own calibration (fitted on validation) and held-out figures."""
    train, val, test = tables
    local = _ClickObjective(model)
    val_logits = _click_logits(local, val, model.cfg, device)
    val_labels = np.array([float(e.clicked) for e in val.examples])
    calibration = fit_calibrator(val_logits, val_labels, tc.calibration)
    test_logits = _click_logits(local, test, model.cfg, device)
    test_labels = np.array([float(e.clicked) for e in test.examples])
    base_rate = float(np.mean([e.clicked for e in train.examples]))
    report = {
        "click_head": click_metrics(calibration(test_logits), test_labels),
        # sigmoid as exp(-log(1 + e^-z)): a logit below -709 overflows 1 / (1 + exp(-z))
        "click_head_uncalibrated": click_metrics(np.exp(-np.logaddexp(0.0, -test_logits)), test_labels),
        "base_rate": click_metrics(np.full(len(test_labels), base_rate), test_labels),
    }
    return calibration, report


def _training_scorer(
    model: InterestModel, vocab: ItemVocabulary, calibration: Calibrator | None, device: torch.device
) -> InterestScorer:
    """The runtime scorer over the model being trained, to compute exactly the served features."""
    loaded = LoadedCheckpoint(
        model=model,
        config=model.cfg,
        vocab=vocab,
        calibration=calibrator_from_dict(calibration.to_dict() if calibration else None),
        click_trained=calibration is not None,
        fusion=None,
        metrics={},
        data_window={},
        version="training",
        path=Path("."),
    )
    return InterestScorer(loaded, device=device, cache_size=50_000)


def _fusion_features(scorer: InterestScorer, examples: Sequence[ClickExample]) -> np.ndarray:
    rows = []
    for start in range(0, len(examples), 1024):
        chunk = examples[start : start + 1024]
        rows += scorer.click_features_many([(e.context, [e.candidate]) for e in chunk])
    return np.vstack(rows) if rows else np.zeros((0, len(FEATURES)))


@dataclass(frozen=True, slots=True)
class FusionRows:
    """What `ClickFusion.fit` is fitted on: the training then the validation impressions' feature
    rows (a training row's creative prior without its own click), their labels, and which rows the
    click head never trained on."""

    x: np.ndarray
    labels: np.ndarray
    click_held_out: np.ndarray
    creative_priors: dict[int, float]  # what serves: counted on the training impressions


def fusion_rows(
    scorer: InterestScorer,
    categories: dict[str, str],
    train: Sequence[ClickExample],
    val: Sequence[ClickExample],
) -> FusionRows:
    """The fit's rows for a network trained on `train`; sets the scorer's creative priors and
    item categories to those the version will serve."""
    creatives, clicked = [e.candidate.creative_id for e in train], [e.clicked for e in train]
    priors = creative_priors(creatives, clicked)
    scorer.creative_priors = priors
    scorer.set_item_categories(categories)
    x_train, x_val = _fusion_features(scorer, train), _fusion_features(scorer, val)
    x_train[:, FEATURES.index("creative_prior")] = leave_one_out_priors(creatives, clicked)
    labels = np.array([float(e.clicked) for e in (*train, *val)])
    return FusionRows(np.vstack([x_train, x_val]), labels, np.arange(len(labels)) >= len(train), priors)


def _fit_fusion(
    scorer: InterestScorer,
    categories: dict[str, str],
    train: Sequence[ClickExample],
    val: Sequence[ClickExample],
    test: Sequence[ClickExample],
) -> tuple[ClickFusion, dict[str, float], list[dict[str, float]]]:
    """Creative priors from the training impressions; the regression fitted on the training and
    validation impressions (`ClickFusion.fit`: the click head's weight on validation alone, a
    training impression's prior without its own click) and reported on test. The version serves
    that same fit: the gate judges it on the test impressions (the newest), so a fusion refitted
    on them would be judged on its own training data and win the gate by its in-sample advantage.
    Returns the served fusion, its held-out figures and decile reliability."""
    rows = fusion_rows(scorer, categories, train, val)
    fusion = ClickFusion.fit(rows.x, rows.labels, rows.click_held_out, rows.creative_priors, categories)
    y_test = np.array([float(e.clicked) for e in test])
    probabilities = fusion(_fusion_features(scorer, test))
    return fusion, click_metrics(probabilities, y_test), reliability_by_decile(probabilities, y_test)


def train_interest(
    sequences: Mapping[str, Sequence[BehaviourEvent]],
    click_examples: Sequence[ClickExample] = (),
    model_config: InterestConfig | None = None,
    train_config: TrainConfig | None = None,
    warm_start: str | Path | None = None,
) -> TrainResult:
    """Train, evaluate and calibrate an interest model from plain rows.

    sequences: user key → behaviour events, oldest first (only events with an item_id in the
    vocabulary are next-item targets; all events are inputs). click_examples: logged impressions
    from `make_click_example`; with fewer than 100 or without both outcomes the click head stays
    untrained and no calibration is fitted. warm_start: a previous version directory whose
    weights (and architecture) start this run.
    """
    tc = train_config or TrainConfig()
    rank, _ = _world()
    device = resolve_device(tc.device)
    _seed_everything(tc.seed)
    users = sorted(sequences)
    vocab = ItemVocabulary.from_sequences(sequences[u] for u in users)
    if len(vocab) < 2:
        raise ValueError("no item ids in the behaviour events")
    if warm_start is not None:
        cfg = replace(config_from_dict(asdict(load_checkpoint(warm_start).config)), n_items=len(vocab))
    elif model_config is not None:
        cfg = replace(model_config, n_items=len(vocab))
    else:
        cfg = default_model_config(vocab, sum(len(sequences[u]) for u in users) / len(users))
    histories = [encode_history(sequences[u], cfg, vocab) for u in users]
    split = leave_one_out(histories)
    model = InterestModel(cfg)
    with torch.no_grad():
        model.next_item.vocab_hash.copy_(vocab.hash_rows(cfg.item_buckets))
    if warm_start is not None:
        _warm_start(model, vocab, warm_start)
    model.to(device)

    stats = _fit_next_item(model, split, tc, device, warm_started=warm_start is not None)
    rankers = [
        InterestRanker(model, device),
        MostPopular(split.train, len(vocab)),
        MarkovChain(split.train, len(vocab)),
    ]
    next_item, next_item_new = evaluate_next_item(rankers, split.test_inputs, split.test_targets)
    report: dict[str, Any] = {"next_item": next_item, "next_item_exclude_seen": next_item_new, "click": {}}
    metrics: dict[str, Any] = {}

    clicks = sorted(click_examples, key=lambda example: example.context.now)
    calibration: Calibrator | None = None
    fusion: ClickFusion | None = None
    labels = {example.clicked for example in clicks}
    if len(clicks) >= 100 and labels == {True, False}:
        parts = split_click_examples(clicks)
        tables = tuple(_ClickTable.build(part, cfg) for part in parts)
        stats |= _fit_click(model, tables[0], tables[1], tc, device, warm_started=warm_start is not None)
        model.eval()
        calibration, head_report = _click_report(model, tables, tc, device)
        scorer = _training_scorer(model, vocab, calibration, device)
        categories = item_categories(sequences[u] for u in users)
        fusion, fused, metrics["click_reliability"] = _fit_fusion(scorer, categories, *parts)
        # "interest" is what serves: the fused, calibrated P(click)
        report["click"] = {"interest": fused, **head_report}
        metrics["fusion"] = dict(zip(FEATURES, fusion.weights, strict=True))
    elif rank == 0 and clicks:
        tqdm.write(f"click head not trained: {len(clicks)} impressions, outcomes {sorted(labels)}")

    model.eval()
    model.cpu()
    metrics = {**report, **metrics, "training": stats}
    return TrainResult(
        model, vocab, calibration, report, metrics, _data_window(sequences, clicks), tc, fusion
    )


def evaluate_checkpoint(
    path: str | Path,
    sequences: Mapping[str, Sequence[BehaviourEvent]],
    click_examples: Sequence[ClickExample] = (),
    device: str | None = None,
    precision: str = "fp32",
) -> dict[str, Any]:
    """The evaluation report of a saved version on new data, with baselines fitted on the same
    training part (leave-one-out for next item; the newest 15% of impressions for clicks).
    precision="int8" evaluates the dynamically quantised serving path (CPU)."""
    loaded = load_checkpoint(path)
    target = resolve_device("cpu" if precision == "int8" else device)
    model = quantize_int8(loaded.model) if precision == "int8" else loaded.model.to(target)
    users = sorted(sequences)
    histories = [encode_history(sequences[u], loaded.config, loaded.vocab) for u in users]
    split = leave_one_out(histories)
    rankers = [
        InterestRanker(model, target),
        MostPopular(split.train, len(loaded.vocab)),
        MarkovChain(split.train, len(loaded.vocab)),
    ]
    next_item, next_item_new = evaluate_next_item(rankers, split.test_inputs, split.test_targets)
    report: dict[str, Any] = {
        "next_item": next_item,
        "next_item_exclude_seen": next_item_new,
        "next_item_users": len(split.test_targets),
        "click": {},
    }
    clicks = sorted(click_examples, key=lambda example: example.context.now)
    if clicks:
        train, _, test = split_click_examples(clicks)
        labels = np.array([float(e.clicked) for e in test])
        base_rate = float(np.mean([e.clicked for e in train])) if train else float(labels.mean())
        # the serving object itself scores the held-out impressions
        scorer = InterestScorer(loaded, precision=precision, device=target)
        probabilities = np.concatenate(
            [p for start in range(0, len(test), 1024)
             for p in scorer.score_many([(e.context, [e.candidate]) for e in test[start : start + 1024]])]
        ) if test else np.zeros(0)  # fmt: skip
        report["click"] = {
            "interest": click_metrics(probabilities, labels),
            "base_rate": click_metrics(np.full(len(labels), base_rate), labels),
        }
    model.cpu()
    return report

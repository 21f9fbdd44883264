"""Runtime scorer: calibrated P(click) for a request's candidates, recommendations, attributions.

`InterestScorer.score` is the one production P(click): the click head's logit, the next-item
head's affinity for the creative's products and the user's recent behaviour, combined by the
checkpoint's `ClickFusion` (`fusion.py`), which is also its calibration. A checkpoint trained
without impressions has no fusion and does not score ads (`scores_ads` is False).

`InterestScorer` serves one loaded version; `InterestScorerHolder` is what the app keeps: its
`load(path)` builds a new scorer completely (read, rebuild, quantise, warm up) off to the side and
then replaces one reference, so requests in flight finish on the old model and none fail or wait;
a missing or corrupt artifact raises CheckpointError and the current model keeps serving.
`MicroBatcher` groups concurrent async requests into one forward pass (worth it on CUDA).

User encodings are cached in a bounded LRU keyed by (user_key, number of events, last event
time), so the next event a user makes is a new key and the stale encoding ages out; the encoder
output does not depend on the clock (time to the request enters in the click head), so a cached
encoding stays exact while the request time moves.

Past 450 lines: the scorer, its hot-swap holder and the micro-batcher share the encoding cache and
its lock; the numpy decision-time path itself lives in `inference.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from adserve.domain import BehaviourEvent, Candidate, DecisionContext, EventType, Pricing
from adserve.interest.checkpoint import CheckpointError, LoadedCheckpoint, load_checkpoint
from adserve.interest.data import click_inputs, encode_history, request_gaps, stack_histories
from adserve.interest.fusion import FEATURES, MIN_AFFINITY, behaviour_features
from adserve.interest.inference import ClickKernel, UserView, log_mass
from adserve.interest.network import InterestModel

__all__ = [
    "DEFAULT_SHORTLIST",
    "PRECISIONS",
    "EventAttribution",
    "InterestScorer",
    "InterestScorerHolder",
    "MicroBatcher",
    "quantize_int8",
]

_CLICK_LOGIT = FEATURES.index("click_logit")

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "int8")
# How many of a request's candidates the click head scores on the numpy path: those the fusion
# ranks highest from its other features (`fusion_features`). The click head is most of a
# decision's scoring CPU (3.1 M multiply-adds for 100 candidates) and the policy explores only its
# top `bandit.top_k` (10) by expected value. `serving.click_head_shortlist`; 0: every candidate.
DEFAULT_SHORTLIST = 32


def quantize_int8(model: InterestModel) -> nn.Module:
    """A copy of `model` with every nn.Linear dynamically quantised to int8 (CPU inference only).

    Embeddings stay fp32: they are lookups, not matmuls, and hold most of the accuracy.
    """
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        # torch 2.13 flags the quantized tensor constructors as deprecated in favour of torchao,
        # which is not a dependency; the eager dynamic path still works and is what we measure
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


@dataclass(frozen=True, slots=True)
class EventAttribution:
    """How much one history event contributed to a click score.

    gradient_x_input: d(logit)/d(token) · token, summed over the embedding (positive = pushed the
    score up); attention: the creative's target-attention weight on the event.
    """

    event: BehaviourEvent
    gradient_x_input: float
    attention: float


@dataclass(slots=True)
class _Encoding:
    encoded: torch.Tensor  # (L, D) encoder output, L >= 1
    padding: torch.Tensor  # (L,) bool
    ts: np.ndarray  # (n,) timestamps of the encoded events
    next_item_logp: np.ndarray | None = None  # (V,) log P(next item), computed on first use
    view: UserView | None = None  # the decision-time summary (numpy scoring), built on first use


class InterestScorer:
    """Implements `adserve.domain.Scorer` for one checkpoint version."""

    def __init__(
        self,
        path: str | Path | LoadedCheckpoint,
        precision: str = "fp32",
        device: str | torch.device | None = None,
        cache_size: int = 10_000,
        shortlist: int = DEFAULT_SHORTLIST,
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
        loaded = path if isinstance(path, LoadedCheckpoint) else load_checkpoint(path)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if precision == "int8" and self.device.type != "cpu":
            raise ValueError("int8 dynamic quantisation runs on CPU only; use fp32 on CUDA")
        self.version: str = loaded.version
        self.path = loaded.path
        self.precision = precision
        self.config = loaded.config
        self.vocab = loaded.vocab
        self.calibration = loaded.calibration
        self.fusion = loaded.fusion
        self.metrics = loaded.metrics
        self.click_trained = loaded.click_trained
        if shortlist < 0:
            raise ValueError(f"shortlist must be 0 (every candidate) or positive, got {shortlist}")
        self.shortlist = shortlist
        self._fp32 = loaded.model.to(self.device).eval()  # attribution needs gradients
        self.model: Any = quantize_int8(self._fp32) if precision == "int8" else self._fp32
        self._cache: OrderedDict[tuple[str, int, float], _Encoding] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._product_rows: dict[tuple[str, ...], np.ndarray] = {}
        self.creative_priors: dict[int, float] = self.fusion.creative_priors if self.fusion else {}
        # numpy decision-time scoring on CPU (inference.py); int8 and CUDA keep the torch path
        self._kernel = (
            ClickKernel(self._fp32, self.config, self.vocab.index)
            if precision == "fp32" and self.device.type == "cpu" and self.fusion is not None
            else None
        )
        self.set_item_categories(self.fusion.item_categories if self.fusion else {})
        with torch.inference_mode():
            prior = self._fp32.next_item.bias.detach().float().clone()
            prior[0] = float("-inf")
            self._prior_logp = torch.log_softmax(prior, dim=-1).cpu().numpy()
        self._prior_logp_padded = np.append(self._prior_logp, -np.inf).astype(np.float64)
        with torch.inference_mode():  # the next-item head's (V, D) output matrix depends on weights only
            self._item_matrix = self.model.next_item.item_matrix(self.model.encoder.events).detach()

    @property
    def click_weighed(self) -> bool:
        """Whether the served fusion gives the click head's logit any weight. A first model's
        fit often leaves it at its bound of zero (few validation clicks); then serving skips the
        click head, which is most of a decision's scoring, and the scores are the same."""
        return self.fusion is not None and self.fusion.weights[_CLICK_LOGIT] != 0.0

    @property
    def scores_ads(self) -> bool:
        """Whether `score` means something: the model was fitted on logged impressions."""
        return self.fusion is not None

    # --- encoding -------------------------------------------------------------------------------

    def _encode(self, history: Sequence[BehaviourEvent]) -> _Encoding:
        encoded_history = encode_history(history[-self.config.max_len :], self.config, self.vocab)
        events = stack_histories([encoded_history], self.config.max_len).to(self.device)
        with torch.inference_mode():
            encoded = self.model.encoder(events)[0]
        return _Encoding(encoded, events.padding[0], encoded_history.ts)

    def _encode_missing(self, contexts: Sequence[DecisionContext]) -> None:
        """Encodes the consented users among `contexts` whose encoding is not cached in one
        encoder pass (left-padded: each event keeps the position it has alone, padding is masked,
        so each row equals its own pass)."""
        missing: dict[tuple[str, int, float], DecisionContext] = {}
        for context in contexts:
            if context.history and context.user_key is not None:
                key = self._cache_key(context)
                with self._lock:
                    cached = key in self._cache
                if not cached:
                    missing[key] = context
        if len(missing) < 2:
            return  # one miss: encoding() does it the usual way
        histories = [
            encode_history(context.history[-self.config.max_len :], self.config, self.vocab)
            for context in missing.values()
        ]
        events = stack_histories(histories, self.config.max_len).to(self.device)
        with torch.inference_mode():
            encoded = self.model.encoder(events)
        length = encoded.shape[1]
        with self._lock:
            for row, (key, history) in enumerate(zip(missing, histories, strict=True)):
                start = length - len(history.ts)
                self._cache[key] = _Encoding(
                    encoded[row, start:].clone(), events.padding[row, start:].clone(), history.ts
                )
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    @staticmethod
    def _cache_key(context: DecisionContext) -> tuple[str, int, float]:
        history = context.history
        return (context.user_key or "", len(history), history[-1].ts)

    def encoding(self, context: DecisionContext) -> _Encoding | None:
        """The user's cached encoding, computed on a miss; None without history (or consent)."""
        history = context.history
        if not history:
            return None
        if context.user_key is None:
            return self._encode(history)
        key = self._cache_key(context)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        encoding = self._encode(history)
        with self._lock:
            self._cache[key] = encoding
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return encoding

    @property
    def cache_len(self) -> int:
        return len(self._cache)

    # --- click scores ---------------------------------------------------------------------------

    def _batch(
        self, requests: Sequence[tuple[DecisionContext, Sequence[Candidate]]]
    ) -> tuple[torch.Tensor, torch.Tensor, Any, list[int]]:
        """One history row per request (H = requests), candidate rows grouped by request."""
        encodings = [self.encoding(context) for context, _ in requests]
        length = max([1] + [e.encoded.shape[0] for e in encodings if e is not None])
        encoded_rows, padding_rows, gap_rows = [], [], []
        rows: list[tuple[DecisionContext, Candidate]] = []
        for (context, candidates), encoding in zip(requests, encodings, strict=True):
            if encoding is None:
                encoded_rows.append(torch.zeros(length, self.config.hidden, device=self.device))
                padding_rows.append(torch.ones(length, dtype=torch.bool, device=self.device))
                gap_rows.append(np.zeros(length, dtype=np.int64))
            else:
                missing = length - encoding.encoded.shape[0]  # left-pad to the batch's length
                encoded_rows.append(nn.functional.pad(encoding.encoded, (0, 0, missing, 0)))
                padding_rows.append(
                    torch.cat([torch.ones(missing, dtype=torch.bool, device=self.device), encoding.padding])
                )
                gap_rows.append(request_gaps(context.now, encoding.ts, length))
            rows += [(context, candidate) for candidate in candidates]
        inputs = click_inputs(rows, self.config, [np.zeros(0)] * len(rows), 0)
        inputs.request_gaps = torch.from_numpy(np.stack(gap_rows))
        sizes = [len(candidates) for _, candidates in requests]
        return torch.stack(encoded_rows), torch.stack(padding_rows), inputs.to(self.device), sizes

    def click_logits_many(
        self, requests: Sequence[tuple[DecisionContext, Sequence[Candidate]]]
    ) -> list[np.ndarray]:
        """Raw click logits for several requests in one forward pass."""
        requests = [(context, candidates) for context, candidates in requests]
        sizes = [len(candidates) for _, candidates in requests]
        if sum(sizes) == 0:
            return [np.zeros(0) for _ in requests]
        encoded, padding, inputs, groups = self._batch(requests)
        with torch.inference_mode():
            logits, _ = self.model.click(encoded, padding, inputs, self.model.encoder.events, groups)
        flat = logits.double().cpu().numpy()
        return list(np.split(flat, np.cumsum(sizes)[:-1]))

    def _next_item_logp(self, context: DecisionContext) -> np.ndarray:
        """(V,) log-probability of each vocabulary item being the user's next (the item prior
        without history); cached with the user's encoding."""
        encoding = self.encoding(context)
        if encoding is None:
            return self._prior_logp
        if encoding.next_item_logp is None:
            with torch.inference_mode():
                logits = self._next_item_logits(encoding.encoded[-1:])
                encoding.next_item_logp = torch.log_softmax(logits[0].float(), dim=-1).cpu().numpy()
        return encoding.next_item_logp

    def _next_item_logits(self, user: torch.Tensor) -> torch.Tensor:
        """NextItemHead.logits over the item matrix computed once at load."""
        scores = user @ self._item_matrix.T + self.model.next_item.bias
        scores[:, 0] = float("-inf")
        return scores

    def _rows_of(self, product_ids: tuple[str, ...]) -> np.ndarray:
        rows = self._product_rows.get(product_ids)
        if rows is None:
            index = self.vocab.index
            rows = np.array([index[p] for p in product_ids if p in index], dtype=np.int64)
            if len(self._product_rows) < 100_000:
                self._product_rows[product_ids] = rows
        return rows

    def set_item_categories(self, item_categories: dict[str, str]) -> None:
        """Which vocabulary rows belong to each category (for `category_affinity`)."""
        rows: dict[str, list[int]] = {}
        for item, category in item_categories.items():
            row = self.vocab.index.get(item)
            if row is not None:
                rows.setdefault(category, []).append(row)
        self._category_rows = {c: np.array(r, dtype=np.int64) for c, r in rows.items()}
        if self._kernel is not None:
            self._kernel.clear()

    def affinities(self, context: DecisionContext, candidates: Sequence[Candidate]) -> np.ndarray:
        """(N, 3) log P(the user's next item is one of: the candidate's linked products, its
        category's items, the linked products of this request's candidates of its brand)."""
        logp = self._next_item_logp(context)
        brand_rows: dict[str, list[np.ndarray]] = {}
        for candidate in candidates:
            if candidate.brand:
                brand_rows.setdefault(candidate.brand, []).append(self._rows_of(candidate.product_ids))
        brand_mass = {b: log_mass(logp, np.unique(np.concatenate(r))) for b, r in brand_rows.items()}
        category_mass: dict[str | None, float] = {}
        out = np.full((len(candidates), 3), MIN_AFFINITY)
        for i, candidate in enumerate(candidates):
            out[i, 0] = log_mass(logp, self._rows_of(candidate.product_ids))
            category = candidate.category
            if category not in category_mass:
                rows = self._category_rows.get(category) if category else None
                category_mass[category] = log_mass(logp, rows) if rows is not None else MIN_AFFINITY
            out[i, 1] = category_mass[category]
            if candidate.brand:
                out[i, 2] = brand_mass[candidate.brand]
        return out

    def click_features_many(
        self, requests: Sequence[tuple[DecisionContext, Sequence[Candidate]]]
    ) -> list[np.ndarray]:
        """(N_i, F) fusion feature rows per request, the click head run once for all of them."""
        logits = self.click_logits_many(requests) if self.click_trained else None
        rows = []
        for i, (context, candidates) in enumerate(requests):
            n = len(candidates)
            click = logits[i] if logits is not None else np.zeros(n)
            priors = np.fromiter(
                (self.creative_priors.get(c.creative_id, 0.0) for c in candidates), np.float64, n
            )
            rows.append(
                np.column_stack(
                    [
                        np.ones(n),
                        click,
                        self.affinities(context, candidates),
                        behaviour_features(context.history, context.now, candidates),
                        priors,
                    ]
                )
            )
        return rows

    def prepared(self, context: DecisionContext, candidates: Sequence[Candidate]) -> bool:
        """Whether scoring these candidates for this user is numpy work on cached state only (no
        encoder pass, no creative tower pass); the pipeline scores in a worker thread otherwise."""
        kernel = self._kernel
        if kernel is None or self.fusion is None:
            return False
        if context.history:
            if context.user_key is None:
                return False  # not cached without consent: encoded on every request
            with self._lock:
                encoding = self._cache.get(self._cache_key(context))
            if encoding is None or encoding.view is None:
                return False
        needs_context = self.click_trained and self.click_weighed  # the click head's context vector
        return kernel.has_block(candidates) and (not needs_context or kernel.has_context(context))

    def prepare_user(self, user_key: str, history: Sequence[BehaviourEvent]) -> None:
        """Encodes a consented user's history ahead of their next decision (at event time)."""
        if self._kernel is not None and history:
            self.user_view(
                DecisionContext(placement="", now=history[-1].ts, user_key=user_key, history=tuple(history))
            )

    def user_view(self, context: DecisionContext) -> UserView | None:
        """The user's decision-time summary, cached with their encoding; None without history."""
        encoding = self.encoding(context)
        if encoding is None:
            return None
        if encoding.view is None:
            logp = self._next_item_logp(context)
            encoded = encoding.encoded.detach().float().cpu().numpy()
            encoding.view = UserView.build(context.history, encoded, encoding.ts, logp)
        return encoding.view

    def fusion_features(
        self,
        context: DecisionContext,
        candidates: Sequence[Candidate],
        shortlist: int | None = None,
        click_head: bool = True,
    ) -> np.ndarray:
        """(N, F) fusion rows by the numpy kernel: the same features as click_features_many.

        The click head runs on the `shortlist` (default: the scorer's `shortlist`; 0: every
        candidate) candidates that the fusion ranks highest without it. The others take the mean
        of the shortlist's logits, so the fusion's estimate for them rests on everything else the
        model knows about the pair. See `DEFAULT_SHORTLIST`. `click_head=False` leaves its column
        at 0: serving passes it when the fusion gives the head no weight (`click_weighed`)."""
        kernel = self._kernel
        assert kernel is not None
        block = kernel.block(candidates, context, self._category_rows, self.creative_priors)
        user = self.user_view(context)
        n = len(candidates)
        features = kernel.features(block, user, self._prior_logp_padded, context.now)
        if not (self.click_trained and click_head):
            return features
        size = self.shortlist if shortlist is None else shortlist
        if size <= 0 or n <= size:
            features[:, 1] = kernel.logits(block, user, context)
            return features
        assert self.fusion is not None
        without_click = features @ np.asarray(self.fusion.weights)  # the click column is still 0
        rows = np.sort(np.argpartition(-without_click, size - 1)[:size])
        logits = kernel.logits(block, user, context, rows)
        features[:, 1] = logits.mean()
        features[rows, 1] = logits
        return features

    def score_many(self, requests: Sequence[tuple[DecisionContext, Sequence[Candidate]]]) -> list[np.ndarray]:
        """Calibrated P(click) for several requests (one forward pass on the torch path)."""
        if self._kernel is not None and self.fusion is not None:
            fusion, click_head = self.fusion, self.click_weighed
            self._encode_missing([context for context, _ in requests])
            return [
                fusion(self.fusion_features(context, candidates, click_head=click_head))
                if candidates
                else np.zeros(0)
                for context, candidates in requests
            ]
        if self.fusion is None:
            return [self.calibration(logits) for logits in self.click_logits_many(requests)]
        return [self.fusion(rows) for rows in self.click_features_many(requests)]

    def score(self, context: DecisionContext, candidates: Sequence[Candidate]) -> np.ndarray:
        """(N,) float64 calibrated click probabilities, all candidates in one batch."""
        return self.score_many([(context, candidates)])[0]

    # --- recommendations and explanations -------------------------------------------------------

    def recommend(
        self,
        history: Sequence[BehaviourEvent],
        k: int = 10,
        exclude_purchased: bool = True,
        user_key: str | None = None,
    ) -> list[tuple[str, float]]:
        """Top-k (item id, probability) for the user's next item, from the next-item head.

        Items the user already purchased are left out unless exclude_purchased=False. Without
        history the ranking is the learned item prior (output bias).
        """
        context = DecisionContext(placement="", now=0.0, user_key=user_key, history=tuple(history))
        encoding = self.encoding(context)
        head = self.model.next_item
        with torch.inference_mode():
            if encoding is None:
                scores = head.bias.detach().clone()
                scores[0] = float("-inf")
            else:
                scores = self._next_item_logits(encoding.encoded[-1:])[0]
            if exclude_purchased:
                bought = {e.item_id for e in history if e.event_type == EventType.PURCHASE and e.item_id}
                rows = [self.vocab.index[item] for item in bought if item in self.vocab.index]
                if rows:
                    scores[torch.tensor(rows, device=scores.device)] = float("-inf")
            probabilities = scores.float().softmax(dim=-1)
            top = torch.topk(probabilities, min(k, len(self.vocab) - 1))
        return [
            (self.vocab.id_of(int(row)), float(p))
            for p, row in zip(top.values.tolist(), top.indices.tolist(), strict=True)
            if p > 0.0
        ]

    def attribution(self, context: DecisionContext, candidate: Candidate) -> list[EventAttribution]:
        """Per-event contribution to this candidate's click logit, oldest event first ("why this
        ad?"). Uses the fp32 model (gradients) even when serving int8; [] without history."""
        history = context.history[-self.config.max_len :]
        if not history:
            return []
        model = self._fp32
        encoded_history = encode_history(history, self.config, self.vocab)
        events = stack_histories([encoded_history], self.config.max_len).to(self.device)
        inputs = click_inputs([(context, candidate)], self.config, [encoded_history.ts], len(history))
        with torch.enable_grad():
            tokens = model.encoder.events.token_vectors(events).detach().requires_grad_(True)
            encoded = model.encoder(events, tokens)
            logits, weights = model.click(
                encoded, events.padding, inputs.to(self.device), model.encoder.events
            )
            (gradient,) = torch.autograd.grad(logits.sum(), tokens)
        scores = (gradient * tokens).sum(-1)[0].detach().cpu().tolist()
        attention = weights[0, 1:].detach().cpu().tolist()  # slot 0 is the null slot
        return [
            EventAttribution(event, float(score), float(weight))
            for event, score, weight in zip(history, scores, attention, strict=True)
        ]

    def warm_up(self) -> None:
        """One full request, so the first real one does not pay for lazy initialisation."""
        event = BehaviourEvent(
            EventType.PRODUCT_VIEW, 0.0, item_id=self.vocab.item_ids[0] if self.vocab.item_ids else None
        )
        context = DecisionContext(placement="warm-up", now=1.0, history=(event,))
        candidate = Candidate(creative_id=0, campaign_id=0, advertiser_id=0, pricing=Pricing.CPC, bid=0.0)
        self.score(context, [candidate])


class InterestScorerHolder:
    """The serving process's scorer: delegates to the current version and hot-swaps atomically.

    Build it at start-up with the champion's path (a failure there raises: fail at start-up, not
    per request). `status()` feeds the /ready detail.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        precision: str = "fp32",
        device: str | torch.device | None = None,
        cache_size: int = 10_000,
        shortlist: int = DEFAULT_SHORTLIST,
    ) -> None:
        self._options: dict[str, Any] = {
            "precision": precision,
            "device": device,
            "cache_size": cache_size,
            "shortlist": shortlist,
        }
        self._current: InterestScorer | None = None
        self._swap_lock = threading.Lock()  # one load at a time; scoring never takes it
        self.last_error: str | None = None
        if path is not None:
            self.load(path)

    @property
    def current(self) -> InterestScorer:
        scorer = self._current
        if scorer is None:
            raise RuntimeError("no interest model loaded")
        return scorer

    @property
    def version(self) -> str:  # type: ignore[override]
        return self.current.version

    def load(self, path: str | Path) -> InterestScorer:
        """Build the version at `path` off to the side, warm it up, then swap it in.

        Raises CheckpointError (and records it in `last_error`) when the artifact is missing or
        corrupt; the model that was serving keeps serving.
        """
        with self._swap_lock:
            try:
                candidate = InterestScorer(path, **self._options)
                candidate.warm_up()
            except Exception as error:
                self.last_error = f"{path}: {error}"
                serving = self._current.version if self._current else None
                log.error("interest model %s not loaded, still serving %s: %s", path, serving, error)
                if isinstance(error, CheckpointError):
                    raise
                raise CheckpointError(f"interest model {path} failed to load: {error}") from error
            self._current = candidate  # one reference assignment: requests see old or new, never half
            self.last_error = None
            log.info("interest model %s serving (%s)", candidate.version, candidate.precision)
            return candidate

    def score(self, context: DecisionContext, candidates: Sequence[Candidate]) -> np.ndarray:
        return self.current.score(context, candidates)

    def prepared(self, context: DecisionContext, candidates: Sequence[Candidate]) -> bool:
        return self.current.prepared(context, candidates)

    def prepare_user(self, user_key: str, history: Sequence[BehaviourEvent]) -> None:
        self.current.prepare_user(user_key, history)

    def score_many(self, requests: Sequence[tuple[DecisionContext, Sequence[Candidate]]]) -> list[np.ndarray]:
        return self.current.score_many(requests)

    def recommend(
        self,
        history: Sequence[BehaviourEvent],
        k: int = 10,
        exclude_purchased: bool = True,
        user_key: str | None = None,
    ) -> list[tuple[str, float]]:
        return self.current.recommend(history, k, exclude_purchased, user_key)

    def attribution(self, context: DecisionContext, candidate: Candidate) -> list[EventAttribution]:
        return self.current.attribution(context, candidate)

    def status(self) -> dict[str, Any]:
        """For /ready: what is serving and the last load failure, if any."""
        scorer = self._current
        return {
            "ready": scorer is not None,
            "version": scorer.version if scorer else None,
            "path": str(scorer.path) if scorer else None,
            "precision": scorer.precision if scorer else self._options["precision"],
            "click_trained": scorer.click_trained if scorer else None,
            "click_weighed": scorer.click_weighed if scorer else None,
            "scores_ads": scorer.scores_ads if scorer else None,
            "last_error": self.last_error,
        }


class MicroBatcher:
    """Groups concurrent `await score(...)` calls into one `score_many` forward pass.

    The first request of a batch waits at most `max_wait_s` for company; the batch runs in a
    worker thread so the event loop keeps accepting requests. Meant for CUDA, where one pass over
    many requests costs about as much as one; on CPU scoring directly is as fast.
    """

    def __init__(
        self, scorer: InterestScorer | InterestScorerHolder, max_requests: int = 64, max_wait_s: float = 0.002
    ) -> None:
        self.scorer = scorer
        self.max_requests = max_requests
        self.max_wait_s = max_wait_s
        self._queue: (
            asyncio.Queue[tuple[DecisionContext, list[Candidate], asyncio.Future[np.ndarray]]] | None
        ) = None
        self._worker: asyncio.Task[None] | None = None
        self.batches = 0

    async def score(self, context: DecisionContext, candidates: Sequence[Candidate]) -> np.ndarray:
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._run())
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        await self._queue.put((context, candidates, future))
        return await future

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_requests and not self._queue.empty():
                batch.append(self._queue.get_nowait())  # everything already waiting joins
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_requests:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            requests = [(context, candidates) for context, candidates, _ in batch]
            try:
                results = await asyncio.to_thread(self.scorer.score_many, requests)
            except Exception as error:  # every waiting request gets the error, the worker lives on
                for *_, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            self.batches += 1
            for (*_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker, self._queue = None, None

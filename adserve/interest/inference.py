"""Decision-time scoring in numpy: candidates against a cached user state and cached creatives.

A decision scores ~100 creatives for one user. Run through torch, that is a few hundred small
operator calls (≈ 10 µs of dispatch each) and a rebuild of every creative's features: about
10 ms of CPU per decision. Most of that work does not change between decisions:

- a creative's tower output, its attention query and its share of the click MLP's first layer
  change only with the model version and the creative (`CandidateBlock`, cached per list of
  catalogue candidates, which is stable between catalogue refreshes);
- a user's encoder output, next-item log-probabilities and behaviour summary change only when
  the user's behaviour does (`UserView`, cached with the user's encoding);
- a context's tower output changes only with placement, device, geo, hour, page and keywords.

What remains per decision is the target attention of the candidates over the user's events and
the rest of the click MLP: a few matrix products that numpy runs in about 100 µs. The result is
the torch click head's logit to float32 rounding (tests/unit/interest/test_inference.py), so the
trained network, not an approximation of it, serves.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from adserve.interest.data import click_inputs
from adserve.interest.fusion import FEATURES, MIN_AFFINITY, PURCHASE_TAU_S, RECENT_TAU_S, BehaviourProfile
from adserve.interest.network import N_GAP_BUCKETS

if TYPE_CHECKING:
    from collections.abc import Sequence

    from adserve.domain import BehaviourEvent, Candidate, DecisionContext
    from adserve.interest.network import InterestConfig, InterestModel

__all__ = ["CandidateBlock", "ClickKernel", "UserView", "log_mass"]

CONTEXT_CACHE = 4_096
# where `fusion.FEATURES` puts each group; the two sums that decay at the recent rate are a
# strided view (category_recent, product_recent), so a request decays both in one pass
_AFFINITY_COLUMNS = slice(FEATURES.index("product_affinity"), FEATURES.index("brand_affinity") + 1)
_BEHAVIOUR_COLUMNS = slice(FEATURES.index("category_recent"), FEATURES.index("purchased_recent") + 1)
_RECENT_COLUMNS = slice(FEATURES.index("category_recent"), FEATURES.index("product_recent") + 1, 2)
_PURCHASED_COLUMN = FEATURES.index("purchased_recent")
_PRIOR_COLUMN = FEATURES.index("creative_prior")
BLOCK_CACHE = 256


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().float().cpu().numpy().astype(np.float32, copy=True)


def _transposed(weight: torch.Tensor) -> np.ndarray:
    """A Linear's (out, in) weight as a C-ordered (in, out) matrix: x @ W^T without a copy."""
    return np.ascontiguousarray(_numpy(weight).T)


def log_mass(logp: np.ndarray, rows: np.ndarray) -> float:
    """log Σ exp(logp[rows]), floored at MIN_AFFINITY (no rows: the floor)."""
    if not rows.size:
        return MIN_AFFINITY
    values = logp[rows]
    top = values.max()
    if not np.isfinite(top):
        return MIN_AFFINITY
    return max(float(top + math.log(np.exp(values - top).sum())), MIN_AFFINITY)


@dataclass(slots=True)
class UserView:
    """Everything about one user's behaviour that a decision needs, computed once per change of
    that behaviour (the encoder pass is the expensive part)."""

    encoded: np.ndarray  # (n, D) float32 encoder output of the last n events
    ts: np.ndarray  # (n,) event times of those events
    logp: np.ndarray  # (V + 1,) log P(next item) per vocabulary row, -inf appended (padding row)
    length: int  # events in the visible history (behaviour features use all of them)
    reference: float  # decayed sums below are as of this time (the newest event)
    category_recent: dict[str, float]
    category_count: dict[str, int]
    product_recent: dict[str, float]
    purchased: dict[str, float]
    category_mass: dict[str | None, float] = field(default_factory=dict)
    # the last candidate list scored for this user: (block, its fusion rows before decay)
    pair: tuple[CandidateBlock, np.ndarray] | None = None
    # attention keys and values for the last request-gap buckets seen: (buckets, keys, values)
    memory: tuple[bytes, np.ndarray, np.ndarray, np.ndarray] | None = None  # + the last event

    @classmethod
    def build(
        cls,
        history: Sequence[BehaviourEvent],
        encoded: np.ndarray,
        ts: np.ndarray,
        logp: np.ndarray,
    ) -> UserView:
        reference = max((event.ts for event in history), default=0.0)
        # the sums the fusion features are built from (fusion.BehaviourProfile), as of the newest
        # event; a request scales them by its own decay
        profile = BehaviourProfile(history, reference)
        return cls(
            encoded=encoded,
            ts=ts,
            logp=np.append(logp, -np.inf).astype(np.float64),
            length=len(history),
            reference=reference,
            category_recent=dict(profile.category_recent),
            category_count=dict(profile.category_count),
            product_recent=dict(profile.product_recent),
            purchased=dict(profile.purchased),
        )


class CandidateBlock:
    """One list of candidates, prepared for scoring: creative vectors and their first-layer
    terms, next-item rows of linked products, categories, brands and priors."""

    def __init__(
        self,
        candidates: Sequence[Candidate],
        creative: np.ndarray,
        query: np.ndarray,
        first_layer: np.ndarray,
        product_rows: np.ndarray,
        padding_row: int,
        category_rows: dict[str, np.ndarray],
        priors: np.ndarray,
    ) -> None:
        self.candidates = tuple(candidates)  # held so the ids in the cache key stay theirs
        self.creative = creative  # (N, D)
        self.query = query  # (N, D) attention queries, already scaled
        self.first_layer = first_layer  # (N, H1) creative part of the MLP's first layer + bias
        self.product_rows = product_rows  # (N, P) vocabulary rows, padding_row (-inf) where none
        n = len(candidates)
        self.categories = [c.category for c in candidates]
        self.category_rows = category_rows
        self.priors = priors
        brands: dict[str, list[int]] = defaultdict(list)
        for i, candidate in enumerate(candidates):
            if candidate.brand:
                brands[candidate.brand].append(i)
        self.brand_groups = [
            (np.array(members), np.unique(product_rows[members][product_rows[members] != padding_row]))
            for members in brands.values()
        ]
        self.unique_categories = sorted(set(self.categories), key=lambda c: (c is None, c or ""))
        position = {c: i for i, c in enumerate(self.unique_categories)}
        self.category_index = np.array([position[c] for c in self.categories], dtype=np.int64)
        owners: dict[str, list[int]] = defaultdict(list)
        for i, candidate in enumerate(candidates):
            for product in candidate.product_ids:
                owners[product].append(i)
        self.product_owners = {product: np.array(rows) for product, rows in owners.items()}
        self.size = n


class ClickKernel:
    """The click head of one model version as numpy arrays, and the per-decision fusion features.

    Built from the fp32 model; `block` and `context_vector` fill their caches through the torch
    towers (exact), `logits` runs the per-decision part.
    """

    def __init__(self, model: InterestModel, config: InterestConfig, vocab_index: dict[str, int]) -> None:
        head = model.click
        self._model = model
        self._config = config
        self._vocab_index = vocab_index
        self.hidden = config.hidden
        self.request_gap = _numpy(head.request_gap.weight)
        self.no_history = _numpy(head.no_history)
        attention = head.attention
        self.scale = np.float32(attention.scale)
        # numpy's matmul takes BLAS only for contiguous operands: every weight is stored C-ordered
        self.wq, self.bq = _transposed(attention.query.weight), _numpy(attention.query.bias)
        self.wk, self.bk = _transposed(attention.key.weight), _numpy(attention.key.bias)
        self.wv, self.bv = _transposed(attention.value.weight), _numpy(attention.value.bias)
        self.null = _numpy(attention.null).reshape(-1)
        linears = [layer for layer in head.mlp if isinstance(layer, torch.nn.Linear)]
        first = _transposed(linears[0].weight)  # (5D, H1) over [creative, context, attended, last, c*a]
        d = self.hidden
        self.w_creative, self.w_context, self.w_attended, self.w_last, self.w_product = (
            np.ascontiguousarray(first[i * d : (i + 1) * d]) for i in range(5)
        )
        self.b_first = _numpy(linears[0].bias)
        self.rest = [(_transposed(layer.weight), _numpy(layer.bias)) for layer in linears[1:]]
        self._contexts: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._blocks: OrderedDict[tuple[int, ...], tuple[tuple[Candidate, ...], CandidateBlock]] = (
            OrderedDict()
        )
        self._by_content: dict[tuple[Candidate, ...], CandidateBlock] = {}
        # The last candidate list asked for, its key and block: serving passes the catalogue's
        # own tuple decision after decision while eligibility removes nothing, and a key is a
        # tuple of 100 ids to build and hash. Holding the list keeps those ids its members'.
        self._last: tuple[tuple[Candidate, ...], tuple[int, ...], CandidateBlock | None] = ((), (), None)
        self._lock = threading.Lock()  # the caches are shared by the scoring threads

    # --- cached parts -----------------------------------------------------------------------------

    def _context_key(self, context: DecisionContext) -> tuple:
        return (
            context.placement,
            context.device,
            context.geo,
            context.hour,
            min(context.position, 9),
            context.page_category,
            tuple(k.lower() for k in context.keywords[: self._config.max_keywords]),
        )

    def has_context(self, context: DecisionContext) -> bool:
        return self._context_key(context) in self._contexts

    def has_block(self, candidates: Sequence[Candidate]) -> bool:
        last = self._last
        if last[0] is candidates and last[2] is not None:
            return True
        return self._list_key(candidates) in self._blocks

    def _list_key(self, candidates: Sequence[Candidate]) -> tuple[int, ...]:
        last = self._last
        if last[0] is candidates:
            return last[1]
        key = tuple(map(id, candidates))
        if isinstance(candidates, tuple):  # a list could change in place under the same identity
            self._last = (candidates, key, None)
        return key

    def context_vector(self, context: DecisionContext) -> np.ndarray:
        """(H1,) the context's share of the MLP's first layer."""
        key = self._context_key(context)
        with self._lock:
            vector = self._contexts.get(key)
        if vector is None:
            probe = _probe_candidate()
            inputs = click_inputs([(context, probe)], self._config, [np.zeros(0)], 0)
            with torch.inference_mode():
                tower = self._model.click.context(inputs, self._model.encoder.events)
            vector = _numpy(tower)[0] @ self.w_context
            with self._lock:
                self._contexts[key] = vector
                if len(self._contexts) > CONTEXT_CACHE:
                    self._contexts.popitem(last=False)
        return vector

    def block(
        self,
        candidates: Sequence[Candidate],
        context: DecisionContext,
        category_rows: dict[str, np.ndarray],
        creative_priors: dict[int, float],
    ) -> CandidateBlock:
        last = self._last
        if last[0] is candidates and last[2] is not None:
            return last[2]
        key = self._list_key(candidates)
        with self._lock:
            held = self._blocks.get(key)
            if held is not None:
                self._blocks.move_to_end(key)
        if held is not None:
            self._remember_last(candidates, key, held[1])
            return held[1]
        # Equal candidates built apart (a snapshot loaded without its predecessor, at start or in
        # another caller) are new objects: reuse their prepared block (and with it every user's
        # kept rows) instead of running the tower again. A refresh keeps the objects themselves.
        content = tuple(candidates)
        with self._lock:
            block = self._by_content.get(content)
        if block is not None:
            self._remember(key, content, block)
            self._remember_last(candidates, key, block)
            return block
        inputs = click_inputs(
            [(context, c) for c in candidates], self._config, [np.zeros(0)] * len(candidates), 0
        )
        with torch.inference_mode():
            creative = _numpy(self._model.click.creative(inputs, self._model.encoder.events))
        padding = self._config.n_items  # one past the last vocabulary row: the appended -inf
        width = max([1] + [len(c.product_ids) for c in candidates])
        product_rows = np.full((len(candidates), width), padding, dtype=np.int64)
        for i, candidate in enumerate(candidates):
            rows = [self._vocab_index[p] for p in candidate.product_ids if p in self._vocab_index]
            product_rows[i, : len(rows)] = rows
        block = CandidateBlock(
            candidates,
            creative=creative,
            query=((creative @ self.wq + self.bq) * self.scale).astype(np.float32),
            first_layer=(creative @ self.w_creative + self.b_first).astype(np.float32),
            product_rows=product_rows,
            padding_row=padding,
            category_rows=category_rows,
            priors=np.array([creative_priors.get(c.creative_id, 0.0) for c in candidates], dtype=np.float64),
        )
        self._remember(key, content, block)
        self._remember_last(candidates, key, block)
        return block

    def _remember_last(
        self, candidates: Sequence[Candidate], key: tuple[int, ...], block: CandidateBlock
    ) -> None:
        if isinstance(candidates, tuple):
            self._last = (candidates, key, block)

    def _remember(self, key: tuple[int, ...], content: tuple[Candidate, ...], block: CandidateBlock) -> None:
        with self._lock:
            self._blocks[key] = (content, block)  # the candidates are held: their ids stay theirs
            self._by_content[content] = block
            while len(self._blocks) > BLOCK_CACHE:
                _, (old_content, _) = self._blocks.popitem(last=False)
                if not any(held is old_content for held, _ in self._blocks.values()):
                    self._by_content.pop(old_content, None)

    def clear(self) -> None:
        """Forget prepared candidate lists (their category rows or priors changed)."""
        with self._lock:
            self._blocks.clear()
            self._by_content.clear()
            self._last = ((), (), None)

    # --- per decision -----------------------------------------------------------------------------

    def logits(
        self,
        block: CandidateBlock,
        user: UserView | None,
        context: DecisionContext,
        rows: np.ndarray | None = None,
    ) -> np.ndarray:
        """(N,) click logits of the block's candidates for this user and context; with `rows`,
        of those candidates only (len(rows) logits, in that order)."""
        if user is None:
            keys = (self.null @ self.wk + self.bk)[None]
            values = (self.null @ self.wv + self.bv)[None]
            last = self.no_history
        else:
            keys, values, last = self._memory(user, context.now)
        query, creative, first_layer = block.query, block.creative, block.first_layer
        if rows is not None:
            query, creative, first_layer = query[rows], creative[rows], first_layer[rows]
        attended = _attention(query @ keys.T, values)  # (N, D)
        hidden = attended @ self.w_attended  # in place from here: fewer (N, H1) temporaries
        hidden += (creative * attended) @ self.w_product
        hidden += first_layer
        hidden += self.context_vector(context) + last @ self.w_last
        np.maximum(hidden, 0.0, out=hidden)
        for i, (weight, bias) in enumerate(self.rest):
            hidden = hidden @ weight + bias
            if i < len(self.rest) - 1:
                np.maximum(hidden, 0.0, out=hidden)
        return hidden[:, 0].astype(np.float64)

    def _memory(self, user: UserView, now: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Attention keys and values over [null, events] and the last event's vector. The time
        from each event to the request enters in log2 buckets, which move rarely: the projections
        are kept until one does."""
        seconds = np.maximum(now - user.ts, 0.0)
        buckets = 2 + np.minimum(N_GAP_BUCKETS - 3, np.floor(np.log2(1.0 + seconds))).astype(np.int64)
        tag = buckets.tobytes()
        memo = user.memory
        if memo is None or memo[0] != tag:
            events = user.encoded + self.request_gap[buckets]
            memory = np.concatenate([self.null[None], events])
            memo = (tag, memory @ self.wk + self.bk, memory @ self.wv + self.bv, events[-1])
            user.memory = memo
        return memo[1], memo[2], memo[3]

    def features(
        self, block: CandidateBlock, user: UserView | None, prior_logp: np.ndarray, now: float
    ) -> np.ndarray:
        """(N, F) fusion rows (`fusion.FEATURES`) with the click logit's column at 0. What depends
        only on the user and the candidate list (affinities, priors, the behaviour sums as of the
        user's newest event) is kept on the user's view as a template; a request copies it and
        decays the behaviour columns to its own time."""
        if user is None:
            return self._template(block, None, prior_logp)
        pair = user.pair
        if pair is None or pair[0] is not block:
            pair = (block, self._template(block, user, prior_logp))
            user.pair = pair
        features = pair[1].copy()
        age = max(now - user.reference, 0.0)
        _saturate(features[:, _RECENT_COLUMNS], math.exp(-age / RECENT_TAU_S))
        _saturate(features[:, _PURCHASED_COLUMN], math.exp(-age / PURCHASE_TAU_S))
        return features

    def _template(self, block: CandidateBlock, user: UserView | None, prior_logp: np.ndarray) -> np.ndarray:
        """(N, F) the rows before a request's decay: 1, 0 (the click logit), the three affinities,
        the behaviour sums as of the user's newest event (none without a user), the priors."""
        features = np.zeros((block.size, len(FEATURES)))
        features[:, 0] = 1.0
        features[:, _AFFINITY_COLUMNS] = self.affinities(block, user, prior_logp)
        if user is not None:
            features[:, _BEHAVIOUR_COLUMNS] = self._behaviour_sums(block, user)
        features[:, _PRIOR_COLUMN] = block.priors
        return features

    def affinities(self, block: CandidateBlock, user: UserView | None, prior_logp: np.ndarray) -> np.ndarray:
        """(N, 3) product, category and brand affinity (see fusion.FEATURES); `prior_logp` is the
        item prior with the -inf padding row appended (users without history)."""
        logp = user.logp if user is not None else prior_logp
        out = np.full((block.size, 3), MIN_AFFINITY)
        values = logp[block.product_rows]  # (N, P), -inf where padded
        top = values.max(axis=1)
        finite = np.isfinite(top)
        if finite.any():
            mass = top[finite] + np.log(np.exp(values[finite] - top[finite, None]).sum(axis=1))
            out[finite, 0] = np.maximum(mass, MIN_AFFINITY)
        masses = user.category_mass if user is not None else {}
        for category in block.unique_categories:
            if category not in masses:
                rows = block.category_rows.get(category) if category else None
                masses[category] = log_mass(logp, rows) if rows is not None else MIN_AFFINITY
        out[:, 1] = np.array([masses[c] for c in block.unique_categories])[block.category_index]
        for members, rows in block.brand_groups:
            out[members, 2] = log_mass(logp, rows)
        return out

    @staticmethod
    def _behaviour_sums(block: CandidateBlock, user: UserView) -> np.ndarray:
        """(N, 4) the behaviour sums as of the user's newest event: decayed category and product
        views, category share, decayed purchases (before the request's decay and saturation)."""
        out = np.zeros((block.size, 4))
        if not user.length:
            return out
        unique = block.unique_categories
        out[:, 0] = np.array([user.category_recent.get(c, 0.0) if c else 0.0 for c in unique])[
            block.category_index
        ]
        out[:, 1] = np.array([user.category_count.get(c, 0) / user.length if c else 0.0 for c in unique])[
            block.category_index
        ]
        for column, sums in ((2, user.product_recent), (3, user.purchased)):
            for product, value in sums.items():  # the user's few products, not every candidate's
                owners = block.product_owners.get(product)
                if owners is not None:
                    np.add.at(out[:, column], owners, value)  # a product listed twice counts twice
        return out


def _saturate(sums: np.ndarray, decay: float) -> None:
    """In place: 1 − exp(−sum · decay), a decayed sum's saturation (fusion.BehaviourProfile)."""
    sums *= -decay
    np.exp(sums, out=sums)
    np.subtract(1.0, sums, out=sums)


# A row of attention weights whose sum falls below this after the block-wide shift had its own
# maximum far below the block's: it is recomputed with its own shift (float32 underflow).
_UNDERFLOW_SUM = 1e-30


def _attention(scores: np.ndarray, values: np.ndarray) -> np.ndarray:
    """softmax(scores, axis=1) @ values. Softmax is unchanged by a constant per row: one shift
    for the whole block (its maximum) skips a per-row reduction, which at these sizes costs more
    than the products, and the row sums come from a product too. A row the shared shift would
    underflow (its own maximum far below the block's) takes its own shift."""
    weights = np.exp(scores - scores.max())
    sums = weights @ np.ones(weights.shape[1], dtype=weights.dtype)
    if sums.min() < _UNDERFLOW_SUM:
        low = sums < _UNDERFLOW_SUM
        own = scores[low]
        weights[low] = np.exp(own - own.max(axis=1, keepdims=True))
        sums[low] = weights[low].sum(axis=1)
    return (weights @ values) / sums[:, None]


def _probe_candidate() -> Candidate:
    from adserve.domain import Candidate, Pricing

    return Candidate(creative_id=0, campaign_id=0, advertiser_id=0, pricing=Pricing.CPC, bid=0.0)

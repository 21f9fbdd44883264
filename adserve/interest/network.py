"""The interest model: a SASRec-style causal Transformer over a user's behaviour sequence with two heads.

* next item: a score for every catalogue item at every position (recommendation, trained
  self-supervised on all behaviour events);
* P(click): a logit for (user, creative, context), from a creative content tower, a context tower
  and target attention from the creative to the encoded sequence.

Input embeddings are hashed (two salted blake2b buckets per item id, one per category, brand, …),
so ids never seen in training need no new rows. Only the next-item output is tied to a
vocabulary: `vocab_hash` holds the two input buckets of every catalogue item, so its output
embedding is the same hashed input embedding (weight tying, as in SASRec), plus a per-item bias.

Sequences are left-padded: slot `L - 1` is always the most recent event and position embeddings
count back from it, so a batch may be trimmed to its longest sequence without changing any output.
This file reads no files and parses no configs.

One module, past 450 lines, on purpose: the architecture in one place (embeddings, encoder, both
heads), as in the reference implementations it follows.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from adserve.domain import EventType

__all__ = [
    "EVENT_TYPES",
    "NO_ITEM_BUCKET",
    "N_GAP_BUCKETS",
    "N_PRICE_BUCKETS",
    "ClickHead",
    "ClickInputs",
    "ContextTower",
    "CreativeTower",
    "EventEmbedding",
    "EventTensors",
    "InterestConfig",
    "InterestModel",
    "NextItemHead",
    "SequenceEncoder",
    "TargetAttention",
    "TransformerBlock",
    "attention_mask",
    "gap_bucket",
    "gap_bucket_array",
    "item_buckets",
    "price_bucket",
    "stable_hash",
    "suggest_item_buckets",
]

EVENT_TYPES: tuple[EventType, ...] = tuple(EventType)
# log2 buckets of seconds: 0 pad, 1 unknown (first event), 2.. = floor(log2(1 + gap)) up to ~34 years
N_GAP_BUCKETS = 34
N_PRICE_BUCKETS = 24
NO_ITEM_BUCKET = 1  # events without an item (search, category page) share this input bucket


def stable_hash(value: str, buckets: int, salt: str) -> int:
    """Bucket of `value` in [1, buckets - 1], identical across processes and Python versions.

    0 is left for padding / missing. Python's `hash()` is salted per process, so it cannot be used
    for anything that is stored in a checkpoint.
    """
    digest = hashlib.blake2b(value.encode(), digest_size=8, person=salt.encode()[:16]).digest()
    return 1 + int.from_bytes(digest, "little") % (buckets - 1)


def item_buckets(item_id: str | None, buckets: int) -> tuple[int, int]:
    """The two input-embedding rows of an item: two independent hashes into [2, buckets - 1].

    Summing two rows makes a full collision (both rows shared with another item) very unlikely
    even with a table smaller than the catalogue.
    """
    if item_id is None:
        return (NO_ITEM_BUCKET, NO_ITEM_BUCKET)
    first = 1 + stable_hash(item_id, buckets - 1, "item-a")
    second = 1 + stable_hash(item_id, buckets - 1, "item-b")
    return (first, second)


def suggest_item_buckets(n_items: int) -> int:
    """A power of two at least 4x the catalogue, so most items own both of their rows."""
    return int(min(max(1 << math.ceil(math.log2(max(4 * n_items, 2))), 1024), 1 << 19))


def gap_bucket(seconds: float | None) -> int:
    """Log2 bucket of a time gap in seconds: 1 = unknown, 2 + floor(log2(1 + gap)) otherwise."""
    if seconds is None or math.isnan(seconds):
        return 1
    return 2 + min(N_GAP_BUCKETS - 3, int(math.log2(1.0 + max(seconds, 0.0))))


def gap_bucket_array(seconds: np.ndarray) -> np.ndarray:
    """Vectorised gap_bucket for known gaps: (n,) float seconds → (n,) int64 buckets >= 2."""
    gaps = np.maximum(np.nan_to_num(np.asarray(seconds, dtype=np.float64), nan=0.0), 0.0)
    return 2 + np.minimum(N_GAP_BUCKETS - 3, np.floor(np.log2(1.0 + gaps))).astype(np.int64)


def price_bucket(price: float | None) -> int:
    """Log2 bucket of a price: 0 = unknown, 1 + floor(log2(1 + price)) otherwise."""
    if price is None or math.isnan(price) or price < 0:
        return 0
    return 1 + min(N_PRICE_BUCKETS - 2, int(math.log2(1.0 + price)))


@dataclass(frozen=True, slots=True)
class InterestConfig:
    """Architecture of the interest model; stored in every checkpoint as `asdict(cfg)`.

    Defaults are those of a well-tuned SASRec with full cross-entropy (hidden 64, 2 blocks,
    1 head, max_len 200); `n_items` is the next-item vocabulary size including row 0 (padding).
    """

    n_items: int = 2
    item_buckets: int = 1 << 14
    category_buckets: int = 4096
    creative_buckets: int = 1 << 14
    brand_buckets: int = 4096
    context_buckets: int = 4096
    max_len: int = 200
    hidden: int = 64
    n_layers: int = 2
    n_heads: int = 1
    ffn_mult: int = 1
    dropout: float = 0.2
    # full softmax up to this many items, sampled softmax with `n_negatives` shared negatives above
    full_softmax_max_items: int = 200_000
    n_negatives: int = 16_384
    max_products: int = 8
    max_keywords: int = 8
    click_mlp: tuple[int, ...] = (128, 64)
    click_dropout: float = 0.1


@dataclass(slots=True)
class EventTensors:
    """A left-padded batch of behaviour sequences.

    items: (B, L, 2) int64 hashed item rows, 0 = padding
    categories: (B, L) int64 hashed category, 0 = padding or missing
    types: (B, L) int64 event type index + 1, 0 = padding
    gaps: (B, L) int64 gap_bucket of the time since the previous event, 0 = padding
    """

    items: torch.Tensor
    categories: torch.Tensor
    types: torch.Tensor
    gaps: torch.Tensor

    @property
    def padding(self) -> torch.Tensor:
        """(B, L) bool, True where the slot holds no event."""
        return self.items[..., 0] == 0

    def to(self, device: torch.device | str) -> EventTensors:
        return EventTensors(*(t.to(device) for t in (self.items, self.categories, self.types, self.gaps)))


@dataclass(slots=True)
class ClickInputs:
    """Creative and context features of B (user, creative, context) rows.

    creative_ids: (B, 3) int64 hashed creative, campaign and advertiser ids
    creative_category: (B,) int64 hashed category, 0 = missing
    brand: (B,) int64 hashed brand, 0 = missing
    products: (B, P, 2) int64 hashed rows of linked products, 0 = padding
    price: (B,) int64 price_bucket
    context: (B, C) int64 hashed context fields (placement, device, geo, hour, position), 0 = missing
    page_category: (B,) int64 hashed page category, 0 = missing
    keywords: (B, K) int64 hashed keywords, 0 = padding
    request_gaps: (B, L) int64 gap_bucket of (request time - event time) per event, 0 = padding;
        (H, L), one row per history, when the click head is given group_sizes
    """

    creative_ids: torch.Tensor
    creative_category: torch.Tensor
    brand: torch.Tensor
    products: torch.Tensor
    price: torch.Tensor
    context: torch.Tensor
    page_category: torch.Tensor
    keywords: torch.Tensor
    request_gaps: torch.Tensor

    def to(self, device: torch.device | str) -> ClickInputs:
        return ClickInputs(
            *(getattr(self, name).to(device) for name in ClickInputs.__slots__)  # type: ignore[attr-defined]
        )


def attention_mask(padding: torch.Tensor) -> torch.Tensor:
    """(B, 1, L, L) bool, True where query i may attend to key j: j <= i and j is an event.

    Every slot may attend to itself, so an all-padding row still has one key and softmax never
    sees a row of -inf (NaN); real events never attend to padding because padding is on the left
    and the diagonal of a real event is real.
    """
    length = padding.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=padding.device).tril()
    allowed = causal & ~padding[:, None, :]
    allowed = allowed | torch.eye(length, dtype=torch.bool, device=padding.device)
    return allowed[:, None, :, :]


class EventEmbedding(nn.Module):
    """Sum of item (two hashed rows), category, event type, gap and recency-position embeddings."""

    def __init__(self, cfg: InterestConfig) -> None:
        super().__init__()
        self.item = nn.Embedding(cfg.item_buckets, cfg.hidden, padding_idx=0)
        self.category = nn.Embedding(cfg.category_buckets, cfg.hidden, padding_idx=0)
        self.event_type = nn.Embedding(len(EVENT_TYPES) + 1, cfg.hidden, padding_idx=0)
        self.gap = nn.Embedding(N_GAP_BUCKETS, cfg.hidden, padding_idx=0)
        self.position = nn.Embedding(cfg.max_len, cfg.hidden)
        self.scale = math.sqrt(cfg.hidden)  # SASRec scales item embeddings before adding positions
        self.max_len = cfg.max_len
        self.dropout = nn.Dropout(cfg.dropout)

    def item_vectors(self, rows: torch.Tensor) -> torch.Tensor:
        """rows: (..., 2) int64 hashed rows → (..., D) item embedding."""
        return self.item(rows).sum(dim=-2)

    def token_vectors(self, events: EventTensors) -> torch.Tensor:
        """(B, L, D) content part of each token (everything except position), before dropout."""
        return (
            self.item_vectors(events.items) + self.category(events.categories) + self.event_type(events.types)
        ) * self.scale + self.gap(events.gaps)

    def forward(self, events: EventTensors, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L, D) token embeddings; `tokens` may pass precomputed token_vectors (attribution)."""
        length = events.items.shape[1]
        if length > self.max_len:
            raise ValueError(f"sequence of {length} events exceeds max_len {self.max_len}")
        if tokens is None:
            tokens = self.token_vectors(events)
        positions = torch.arange(self.max_len - length, self.max_len, device=tokens.device)
        x = tokens + self.position(positions)[None]
        return self.dropout(x) * (~events.padding)[..., None]


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: x + attn(ln(x)), then x + ffn(ln(x))."""

    def __init__(self, cfg: InterestConfig) -> None:
        super().__init__()
        if cfg.hidden % cfg.n_heads:
            raise ValueError(f"hidden {cfg.hidden} is not divisible by n_heads {cfg.n_heads}")
        self.n_heads = cfg.n_heads
        self.ln_attn = nn.LayerNorm(cfg.hidden)
        self.qkv = nn.Linear(cfg.hidden, 3 * cfg.hidden)
        self.proj = nn.Linear(cfg.hidden, cfg.hidden)
        self.ln_ffn = nn.LayerNorm(cfg.hidden)
        self.ffn = nn.Sequential(
            nn.Linear(cfg.hidden, cfg.ffn_mult * cfg.hidden),
            nn.GELU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.ffn_mult * cfg.hidden, cfg.hidden),
        )
        self.dropout = nn.Dropout(cfg.dropout)
        self.attn_dropout = cfg.dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: (B, L, D); mask: (B, 1, L, L) bool from `attention_mask` → (B, L, D)."""
        batch, length, dim = x.shape
        q, k, v = self.qkv(self.ln_attn(x)).split(dim, dim=-1)
        q, k, v = (t.view(batch, length, self.n_heads, -1).transpose(1, 2) for t in (q, k, v))
        attn = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.attn_dropout if self.training else 0.0
        )
        x = x + self.dropout(self.proj(attn.transpose(1, 2).reshape(batch, length, dim)))
        return x + self.dropout(self.ffn(self.ln_ffn(x)))


class SequenceEncoder(nn.Module):
    """Event embedding + causal pre-LN Transformer blocks + final LayerNorm."""

    def __init__(self, cfg: InterestConfig) -> None:
        super().__init__()
        self.events = EventEmbedding(cfg)
        self.blocks = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.n_layers))
        self.ln_out = nn.LayerNorm(cfg.hidden)

    def forward(self, events: EventTensors, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L, D): output i summarises events 0..i only; padding slots output zeros."""
        mask = attention_mask(events.padding)
        x = self.events(events, tokens)
        for block in self.blocks:
            x = block(x, mask)
        return self.ln_out(x) * (~events.padding)[..., None]


class NextItemHead(nn.Module):
    """Scores catalogue items from a user state, tied to the hashed input item embedding.

    `vocab_hash` (V, 2) holds the input rows of each vocabulary item (row 0 = padding, never
    predicted); logits are user · item_embedding + item_bias.
    """

    def __init__(self, cfg: InterestConfig) -> None:
        super().__init__()
        self.register_buffer("vocab_hash", torch.zeros(cfg.n_items, 2, dtype=torch.long))
        self.bias = nn.Parameter(torch.zeros(cfg.n_items))
        self.full_softmax_max_items = cfg.full_softmax_max_items
        self.n_negatives = cfg.n_negatives

    def item_matrix(self, embedding: EventEmbedding) -> torch.Tensor:
        """(V, D) output embedding of every vocabulary item."""
        return embedding.item_vectors(self.vocab_hash)

    def logits(self, user: torch.Tensor, embedding: EventEmbedding) -> torch.Tensor:
        """user: (N, D) → (N, V) scores; padding row 0 is -inf."""
        scores = user @ self.item_matrix(embedding).T + self.bias
        scores[:, 0] = float("-inf")
        return scores

    def loss(
        self,
        user: torch.Tensor,
        targets: torch.Tensor,
        embedding: EventEmbedding,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Mean cross-entropy of targets. user: (N, D); targets: (N,) vocab ids, 0 = ignored.

        Full softmax over the catalogue, or above `full_softmax_max_items` a sampled softmax with
        `n_negatives` uniform negatives shared by the batch (uniform sampling needs no logQ
        correction; negatives equal to a row's own target are masked).
        """
        keep = targets > 0
        user, targets = user[keep], targets[keep]
        if targets.numel() == 0:
            return user.sum() * 0.0
        n_items = self.vocab_hash.shape[0]
        if n_items <= self.full_softmax_max_items:
            return F.cross_entropy(self.logits(user, embedding), targets)
        negatives = torch.randint(1, n_items, (self.n_negatives,), device=user.device, generator=generator)
        candidates = torch.cat([targets, negatives])
        vectors = embedding.item_vectors(self.vocab_hash[candidates])
        scores = user @ vectors.T + self.bias[candidates]
        n = targets.numel()
        positive = scores[torch.arange(n, device=user.device), torch.arange(n, device=user.device)]
        negative = scores[:, n:].masked_fill(negatives[None, :] == targets[:, None], float("-inf"))
        return F.cross_entropy(
            torch.cat([positive[:, None], negative], dim=1),
            torch.zeros(n, dtype=torch.long, device=user.device),
        )


class CreativeTower(nn.Module):
    """Content vector of a creative: hashed ids, category, brand, pooled linked products, price."""

    def __init__(self, cfg: InterestConfig) -> None:
        super().__init__()
        self.ids = nn.EmbeddingBag(cfg.creative_buckets, cfg.hidden, mode="sum", padding_idx=0)
        self.brand = nn.Embedding(cfg.brand_buckets, cfg.hidden, padding_idx=0)
        self.price = nn.Embedding(N_PRICE_BUCKETS, cfg.hidden, padding_idx=0)
        self.out = nn.Sequential(nn.LayerNorm(cfg.hidden), nn.Linear(cfg.hidden, cfg.hidden))

    def forward(self, inputs: ClickInputs, shared: EventEmbedding) -> torch.Tensor:
        """(B, D). Category and linked products use the sequence's own (shared) embeddings, so a
        new creative about known products lands next to the events that concern them."""
        products = shared.item_vectors(inputs.products)  # (B, P, D)
        present = (inputs.products[..., 0] > 0).float()
        pooled = (products * present[..., None]).sum(1) / present.sum(1, keepdim=True).clamp(min=1.0)
        x = (
            self.ids(inputs.creative_ids)
            + self.brand(inputs.brand)
            + self.price(inputs.price)
            + shared.category(inputs.creative_category) * shared.scale
            + pooled * shared.scale
        )
        return self.out(x)


class ContextTower(nn.Module):
    """Context vector: hashed fields, page category (shared table) and mean-pooled keywords."""

    def __init__(self, cfg: InterestConfig) -> None:
        super().__init__()
        self.fields = nn.EmbeddingBag(cfg.context_buckets, cfg.hidden, mode="sum", padding_idx=0)
        self.keywords = nn.EmbeddingBag(cfg.context_buckets, cfg.hidden, mode="mean", padding_idx=0)
        self.out = nn.Sequential(nn.LayerNorm(cfg.hidden), nn.Linear(cfg.hidden, cfg.hidden))

    def forward(self, inputs: ClickInputs, shared: EventEmbedding) -> torch.Tensor:
        """(B, D)."""
        x = (
            self.fields(inputs.context)
            + self.keywords(inputs.keywords)
            + shared.category(inputs.page_category) * shared.scale
        )
        return self.out(x)


class TargetAttention(nn.Module):
    """Attention from a creative to the user's encoded events, with a learned null slot.

    The null key/value is always present, so a user without history attends to it alone and
    gets a learned default instead of NaN.
    """

    def __init__(self, cfg: InterestConfig) -> None:
        super().__init__()
        self.query = nn.Linear(cfg.hidden, cfg.hidden)
        self.key = nn.Linear(cfg.hidden, cfg.hidden)
        self.value = nn.Linear(cfg.hidden, cfg.hidden)
        self.null = nn.Parameter(torch.zeros(1, 1, cfg.hidden))
        self.scale = 1.0 / math.sqrt(cfg.hidden)

    def forward(
        self,
        creative: torch.Tensor,
        events: torch.Tensor,
        padding: torch.Tensor,
        group_sizes: Sequence[int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """creative: (B, D); events: (H, L, D); padding: (H, L) bool.

        Without group_sizes H == B (one history per row). With group_sizes, rows come in
        contiguous groups sharing one history each (all candidates of one request), so keys and
        values are projected once per history instead of once per candidate.
        Returns the attended vector (B, D) and the weights (B, L + 1), slot 0 being the null.
        """
        memory = torch.cat([self.null.expand(events.shape[0], 1, -1), events], dim=1)
        keys, values = self.key(memory), self.value(memory)
        blocked = torch.cat([torch.zeros_like(padding[:, :1]), padding], dim=1)
        query = self.query(creative)
        if group_sizes is None:
            scores = torch.einsum("bd,bld->bl", query, keys) * self.scale
            weights = scores.masked_fill(blocked, float("-inf")).softmax(dim=-1)
            return torch.einsum("bl,bld->bd", weights, values), weights
        attended, all_weights = [], []
        for h, rows in enumerate(query.split(list(group_sizes))):
            scores = (rows @ keys[h].T) * self.scale
            weights = scores.masked_fill(blocked[h], float("-inf")).softmax(dim=-1)
            attended.append(weights @ values[h])
            all_weights.append(weights)
        return torch.cat(attended), torch.cat(all_weights)


class ClickHead(nn.Module):
    """P(click) logit for (user, creative, context)."""

    def __init__(self, cfg: InterestConfig) -> None:
        super().__init__()
        self.creative = CreativeTower(cfg)
        self.context = ContextTower(cfg)
        # time from each event to the request: the encoder's output does not depend on the clock,
        # so a cached encoding stays valid while this part moves with `now`
        self.request_gap = nn.Embedding(N_GAP_BUCKETS, cfg.hidden, padding_idx=0)
        self.no_history = nn.Parameter(torch.zeros(cfg.hidden))
        self.attention = TargetAttention(cfg)
        layers: list[nn.Module] = []
        width = 5 * cfg.hidden
        for size in cfg.click_mlp:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(cfg.click_dropout)]
            width = size
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(
        self,
        encoded: torch.Tensor,
        padding: torch.Tensor,
        inputs: ClickInputs,
        shared: EventEmbedding,
        group_sizes: Sequence[int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """encoded: (H, L, D) encoder output; padding: (H, L) bool; inputs.request_gaps (H, L).

        H == B without group_sizes; with it, row groups share a history (see TargetAttention).
        Returns logits (B,) and target-attention weights (B, L + 1).
        """
        creative = self.creative(inputs, shared)
        context = self.context(inputs, shared)
        events = encoded + self.request_gap(inputs.request_gaps)
        attended, weights = self.attention(creative, events, padding, group_sizes)
        has_history = (~padding).any(dim=1, keepdim=True)
        last = torch.where(has_history, events[:, -1], self.no_history.expand(events.shape[0], -1))
        if group_sizes is not None:
            repeats = torch.tensor(list(group_sizes), device=last.device)
            last = last.repeat_interleave(repeats, dim=0)
        features = torch.cat([creative, context, attended, last, creative * attended], dim=-1)
        return self.mlp(features).squeeze(-1), weights


class InterestModel(nn.Module):
    """Encoder shared by the next-item head and the click head."""

    def __init__(self, cfg: InterestConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = SequenceEncoder(cfg)
        self.next_item = NextItemHead(cfg)
        self.click = ClickHead(cfg)
        self.apply(_init_weights)

    def encode(self, events: EventTensors) -> torch.Tensor:
        """(B, L, D) encoder output."""
        return self.encoder(events)

    def next_item_logits(self, events: EventTensors) -> torch.Tensor:
        """(B, V) scores of every catalogue item as the event after each sequence's last one."""
        return self.next_item.logits(self.encode(events)[:, -1], self.encoder.events)

    def click_logits(self, events: EventTensors, inputs: ClickInputs) -> torch.Tensor:
        """(B,) click logits; row b of `events` is the history of row b of `inputs`."""
        logits, _ = self.click(self.encode(events), events.padding, inputs, self.encoder.events)
        return logits


def _init_weights(module: nn.Module) -> None:
    # small normal init as in GPT/SASRec implementations; keeps early logits near uniform
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding | nn.EmbeddingBag):
        nn.init.normal_(module.weight, std=0.02)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()

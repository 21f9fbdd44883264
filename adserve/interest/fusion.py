"""One calibrated P(click) from everything the interest model knows about a (user, creative) pair.

A click log at ~1 % CTR holds a few thousand clicks; the click head alone cannot learn from that
what the next-item head learned from every behaviour event (which brands and products a user is
drawn to). So the served probability is a small logistic regression, fitted on held-out
impressions after the network is trained, over:

- `click_logit`: the click head's logit (target attention over the sequence, creative and slot);
- `product_affinity`: the next-item head's log-probability that the user's next item is one of
  the creative's linked products (log-sum-exp over them);
- `category_affinity`: the same over every catalogue item of the creative's category (the
  Transformer's estimate of where the user's interest is heading);
- `brand_affinity`: the same over the linked products of every candidate of the creative's brand
  in this request (a wider view of the brand than one creative's products);
- `category_recent`, `product_recent`: how much of the user's latest behaviour (decayed with a
  half-hour time constant) is about the creative's category / its linked products;
- `category_share`: the share of the whole visible history in the creative's category;
- `purchased_recent`: the user bought one of the creative's products lately (less appeal);
- `creative_prior`: the creative's own click log-odds on the training impressions relative to the
  base rate, shrunk towards 0 by `PRIOR_IMPRESSIONS` (a creative never served scores 0).

The regression is the calibration too: it is fitted by maximum likelihood, so its predictions sum
to the clicks on the data it was fitted on, and the held-out ratio is reported with the model.
This module is numpy only: the scorer computes the network's two inputs and calls it.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from adserve.domain import EventType

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from adserve.domain import BehaviourEvent, Candidate

__all__ = [
    "FEATURES",
    "MIN_AFFINITY",
    "BehaviourProfile",
    "ClickFusion",
    "behaviour_features",
    "creative_priors",
    "item_categories",
]

FEATURES = (
    "intercept",
    "click_logit",
    "product_affinity",
    "category_affinity",
    "brand_affinity",
    "category_recent",
    "category_share",
    "product_recent",
    "purchased_recent",
    "creative_prior",
)
MIN_AFFINITY = -20.0  # floor of the log-probability feature (creatives without known products)
PRIOR_IMPRESSIONS = 200.0
RECENT_TAU_S = 1_800.0
PURCHASE_TAU_S = 3 * 86_400.0
_PRODUCT_EVENTS = frozenset({EventType.PRODUCT_VIEW, EventType.ADD_TO_CART})


class BehaviourProfile:
    """One request's history summarised once, so 100 candidates do not rescan it 100 times."""

    def __init__(self, history: Sequence[BehaviourEvent], now: float) -> None:
        self.length = len(history)
        self.category_recent: dict[str, float] = defaultdict(float)
        self.category_count: dict[str, int] = defaultdict(int)
        self.product_recent: dict[str, float] = defaultdict(float)
        self.purchased: dict[str, float] = defaultdict(float)
        for event in history:
            age = max(now - event.ts, 0.0)
            if event.category:
                self.category_recent[event.category] += math.exp(-age / RECENT_TAU_S)
                self.category_count[event.category] += 1
            if not event.item_id:
                continue
            if event.event_type in _PRODUCT_EVENTS:
                self.product_recent[event.item_id] += math.exp(-age / RECENT_TAU_S)
            elif event.event_type is EventType.PURCHASE:
                self.purchased[event.item_id] += math.exp(-age / PURCHASE_TAU_S)

    def features(self, candidate: Candidate) -> tuple[float, float, float, float]:
        if not self.length:
            return 0.0, 0.0, 0.0, 0.0
        category = candidate.category
        recent = self.category_recent.get(category, 0.0) if category else 0.0
        share = self.category_count.get(category, 0) / self.length if category else 0.0
        product = sum(self.product_recent.get(p, 0.0) for p in candidate.product_ids)
        bought = sum(self.purchased.get(p, 0.0) for p in candidate.product_ids)
        return 1.0 - math.exp(-recent), share, 1.0 - math.exp(-product), 1.0 - math.exp(-bought)


def behaviour_features(
    history: Sequence[BehaviourEvent], now: float, candidates: Sequence[Candidate]
) -> np.ndarray:
    """(N, 4): category_recent, category_share, product_recent, purchased_recent."""
    profile = BehaviourProfile(history, now)
    return np.array([profile.features(c) for c in candidates], dtype=np.float64).reshape(len(candidates), 4)


def item_categories(sequences: Iterable[Sequence[BehaviourEvent]]) -> dict[str, str]:
    """Each item's most frequent category in the behaviour log (items seen without one: absent)."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for events in sequences:
        for event in events:
            if event.item_id and event.category:
                counts[event.item_id][event.category] += 1
    return {item: seen.most_common(1)[0][0] for item, seen in counts.items()}


def creative_priors(creative_ids: Sequence[int], clicked: Sequence[bool]) -> dict[int, float]:
    """Per-creative click log-odds minus the base rate's, shrunk by PRIOR_IMPRESSIONS."""
    impressions: dict[int, int] = defaultdict(int)
    clicks: dict[int, int] = defaultdict(int)
    for creative, click in zip(creative_ids, clicked, strict=True):
        impressions[creative] += 1
        clicks[creative] += bool(click)
    total = sum(impressions.values())
    rate = min(max(sum(clicks.values()) / total, 1e-4), 1 - 1e-4) if total else 0.01
    base = math.log(rate / (1 - rate))
    priors = {}
    for creative, n in impressions.items():
        p = (clicks[creative] + PRIOR_IMPRESSIONS * rate) / (n + PRIOR_IMPRESSIONS)
        priors[creative] = math.log(p / (1 - p)) - base
    return priors


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30.0, 30.0)))


@dataclass(frozen=True, slots=True)
class ClickFusion:
    """Logistic regression over `FEATURES`; `weights` has one entry per feature."""

    weights: tuple[float, ...]
    features: tuple[str, ...] = FEATURES
    creative_priors: dict[int, float] = field(default_factory=dict)
    item_categories: dict[str, str] = field(default_factory=dict)  # catalogue item → its category

    def __post_init__(self) -> None:
        if len(self.weights) != len(self.features):
            raise ValueError(f"{len(self.weights)} weights for {len(self.features)} features")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """x: (N, F) feature rows → (N,) calibrated P(click)."""
        return _sigmoid(np.asarray(x, dtype=np.float64) @ np.asarray(self.weights))

    def to_dict(self) -> dict[str, Any]:
        return {
            "weights": list(self.weights),
            "features": list(self.features),
            "creative_priors": {str(k): v for k, v in self.creative_priors.items()},
            "item_categories": dict(self.item_categories),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> ClickFusion | None:
        if not data:
            return None
        features = tuple(data["features"])
        if features != FEATURES:
            raise ValueError(f"fusion features {features} differ from this version's {FEATURES}")
        priors = {int(k): float(v) for k, v in (data.get("creative_priors") or {}).items()}
        categories = {str(k): str(v) for k, v in (data.get("item_categories") or {}).items()}
        return cls(tuple(float(w) for w in data["weights"]), features, priors, categories)

    @classmethod
    def fit(
        cls,
        x: np.ndarray,
        labels: np.ndarray,
        creative_priors: dict[int, float] | None = None,
        item_categories: dict[str, str] | None = None,
        l2: float = 1.0,
        iterations: int = 50,
    ) -> ClickFusion:
        """Maximum likelihood with a ridge (damped Newton steps); x: (N, F), labels: (N,) 0/1."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(labels, dtype=np.float64)
        rate = float(np.clip(y.mean(), 1e-4, 1 - 1e-4))
        w = np.zeros(x.shape[1])
        w[0] = math.log(rate / (1 - rate))
        ridge = l2 * np.eye(x.shape[1])
        ridge[0, 0] = 1e-6  # the intercept carries the base rate (almost) unpenalised

        def loss(v: np.ndarray) -> float:
            z = x @ v
            return float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * v @ ridge @ v)

        current = loss(w)
        for _ in range(iterations):
            p = _sigmoid(x @ w)
            gradient = x.T @ (p - y) + ridge @ w
            hessian = (x * (p * (1 - p))[:, None]).T @ x + ridge
            step = np.linalg.solve(hessian, gradient)
            scale = 1.0  # halve the step until the penalised loss falls (Newton can overshoot)
            while scale > 1e-4 and loss(w - scale * step) > current:
                scale /= 2
            w = w - scale * step
            previous, current = current, loss(w)
            if previous - current < 1e-9 * max(1.0, abs(previous)):
                break
        return cls(
            tuple(float(v) for v in w), FEATURES, dict(creative_priors or {}), dict(item_categories or {})
        )

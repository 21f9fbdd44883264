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

A first model is fitted on a few dozen clicks, and a ten-weight regression on the validation
part's handful of them ranked ads worse than chance now and then. So `ClickFusion.fit` fits in two
stages, each on all the rows that are out of sample for it:

1. every feature but the click head's logit, on the training and validation impressions: none of
   them learned from those clicks (the encoder is frozen while the click head trains, and a
   training impression's creative prior leaves its own click out: `leave_one_out_priors`);
2. the click head's weight, on the validation impressions only (the head was fitted on the
   training ones, where its logit is in sample), centred so that it moves the ranking, not the
   base rate the first stage fitted on many more clicks.

Weights in `NON_NEGATIVE` stay at or above zero: more interest in a creative's products, category
or brand, a better click record or a higher click-head logit never lowers P(click). By chance a
few clicks can otherwise turn the model against a signal; with the bound the worst a noisy fit
does is ignore it.

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
    "NON_NEGATIVE",
    "BehaviourProfile",
    "ClickFusion",
    "behaviour_features",
    "creative_priors",
    "fit_logistic",
    "item_categories",
    "leave_one_out_priors",
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
NON_NEGATIVE = frozenset(FEATURES) - {"intercept", "purchased_recent"}
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


def _base_rate(clicked: Sequence[bool]) -> float:
    return min(max(sum(map(bool, clicked)) / len(clicked), 1e-4), 1 - 1e-4) if len(clicked) else 0.01


def _shrunk_log_odds(clicks: float, impressions: float, rate: float) -> float:
    p = (clicks + PRIOR_IMPRESSIONS * rate) / (impressions + PRIOR_IMPRESSIONS)
    return math.log(p / (1 - p)) - math.log(rate / (1 - rate))


def creative_priors(creative_ids: Sequence[int], clicked: Sequence[bool]) -> dict[int, float]:
    """Per-creative click log-odds minus the base rate's, shrunk by PRIOR_IMPRESSIONS."""
    impressions: dict[int, int] = defaultdict(int)
    clicks: dict[int, int] = defaultdict(int)
    for creative, click in zip(creative_ids, clicked, strict=True):
        impressions[creative] += 1
        clicks[creative] += bool(click)
    rate = _base_rate(clicked)
    return {creative: _shrunk_log_odds(clicks[creative], n, rate) for creative, n in impressions.items()}


def leave_one_out_priors(creative_ids: Sequence[int], clicked: Sequence[bool]) -> np.ndarray:
    """(N,) each impression's creative prior from the other impressions (`creative_priors` less
    this one): the feature as an impression the prior never counted would see it."""
    impressions: Counter[int] = Counter(creative_ids)
    clicks: Counter[int] = Counter(c for c, click in zip(creative_ids, clicked, strict=True) if click)
    rate = _base_rate(clicked)
    return np.array(
        [
            _shrunk_log_odds(clicks[c] - bool(click), impressions[c] - 1, rate)
            for c, click in zip(creative_ids, clicked, strict=True)
        ],
        dtype=np.float64,
    )


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
        click_held_out: np.ndarray | None = None,
        creative_priors: dict[int, float] | None = None,
        item_categories: dict[str, str] | None = None,
        l2: float = 1.0,
    ) -> ClickFusion:
        """The two-stage fit of the module docstring. x: (N, F) feature rows, labels: (N,) 0/1;
        click_held_out: (N,) True where the click head did not train on the impression (default:
        every row); only those rows weigh the click head's logit."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(labels, dtype=np.float64)
        held_out = np.ones(len(y), dtype=bool) if click_held_out is None else np.asarray(click_held_out, bool)
        click = FEATURES.index("click_logit")
        others = [i for i in range(len(FEATURES)) if i != click]
        rate = float(np.clip(y.mean(), 1e-4, 1 - 1e-4)) if len(y) else 0.01
        start = np.zeros(len(others))
        start[0] = math.log(rate / (1 - rate))
        penalty = np.full(len(others), l2)
        penalty[0] = 1e-6  # the intercept carries the base rate (almost) unpenalised
        rest = fit_logistic(
            x[:, others],
            y,
            start=start,
            penalty=penalty,
            non_negative=np.array([FEATURES[i] in NON_NEGATIVE for i in others]),
        )
        weights = np.zeros(len(FEATURES))
        weights[others] = rest
        if held_out.any() and np.ptp(x[:, click]) > 0:
            centre = float(x[:, click].mean())
            (head,) = fit_logistic(
                x[held_out, click : click + 1] - centre,
                y[held_out],
                start=np.zeros(1),
                penalty=np.array([l2]),
                non_negative=np.array(["click_logit" in NON_NEGATIVE]),
                offset=x[held_out][:, others] @ rest,
            )
            weights[click] = head
            weights[0] -= head * centre
        return cls(
            tuple(float(v) for v in weights),
            FEATURES,
            dict(creative_priors or {}),
            dict(item_categories or {}),
        )


def fit_logistic(
    x: np.ndarray,
    y: np.ndarray,
    *,
    start: np.ndarray,
    penalty: np.ndarray,
    non_negative: np.ndarray,
    offset: np.ndarray | float = 0.0,
    iterations: int = 100,
) -> np.ndarray:
    """Ridge logistic regression of y on x (plus a fixed `offset` logit) by projected Newton steps:
    weights flagged `non_negative` stay >= 0. A bounded weight at zero whose gradient pushes it
    below leaves the step (the active set); each step is halved until the penalised loss falls.
    start: a feasible first point; penalty: (F,) the ridge's diagonal."""
    lower = np.where(non_negative, 0.0, -np.inf)
    w = np.maximum(np.asarray(start, dtype=np.float64), lower)
    ridge = np.diag(penalty)

    def loss(v: np.ndarray) -> float:
        z = offset + x @ v
        return float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * v @ ridge @ v)

    current = loss(w)
    for _ in range(iterations):
        p = _sigmoid(offset + x @ w)
        gradient = x.T @ (p - y) + ridge @ w
        hessian = (x * (p * (1 - p))[:, None]).T @ x + ridge
        free = ~((w <= lower) & (gradient > 0))
        if not free.any():
            break
        step = np.zeros_like(w)
        step[free] = np.linalg.solve(hessian[np.ix_(free, free)], gradient[free])
        scale = 1.0  # halve the step until the penalised loss falls (Newton can overshoot)
        while True:
            candidate = np.maximum(w - scale * step, lower)
            value = loss(candidate)
            if value <= current or scale < 1e-4:
                break
            scale /= 2
        if value > current:
            break
        w, previous, current = candidate, current, value
        if previous - current < 1e-9 * max(1.0, abs(previous)):
            break
    return w

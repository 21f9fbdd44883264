"""Synthetic behaviour and click logs with known structure, for tuning, tests and benchmarks.

Behaviour is a mixture with real sequential structure, so that a sequence model has something to
find that popularity cannot: each item has a few successors in its own category (first-order
Markov), some steps follow a successor of the item two steps back (second order, which a
first-order chain cannot see), the rest come from the user's favourite categories or the global
popularity (Zipf) skew. Clicks follow a known logistic model of the user's history before the
decision (category match, linked products seen) and the context, so the click head has a signal
to learn and calibration can be checked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from adserve.domain import BehaviourEvent, Candidate, DecisionContext, EventType, Pricing
from adserve.interest.data import ClickExample, make_click_example

__all__ = [
    "SyntheticCatalogue",
    "generate_behaviour",
    "generate_click_log",
    "make_creatives",
    "true_click_probability",
]

_PLACEMENTS = ("homepage-top", "product-side", "checkout-bottom")
_DEVICES = ("mobile", "desktop", "tablet")


@dataclass(frozen=True, slots=True)
class SyntheticCatalogue:
    item_ids: tuple[str, ...]
    item_category: np.ndarray  # (n_items,) category index of each item
    popularity: np.ndarray  # (n_items,) sampling weights, sum 1
    successors: np.ndarray  # (n_items, n_successors) item indices
    n_categories: int


def _catalogue(
    rng: np.random.Generator, n_items: int, n_categories: int, n_successors: int
) -> SyntheticCatalogue:
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.9
    popularity = popularity[rng.permutation(n_items)]
    popularity /= popularity.sum()
    category = rng.permutation(np.arange(n_items) % n_categories)  # no category left empty
    successors = np.zeros((n_items, n_successors), dtype=np.int64)
    for c in range(n_categories):
        members = np.flatnonzero(category == c)
        weights = popularity[members] ** 0.5  # successors are skewed, less than raw popularity
        weights /= weights.sum()
        for item in members:
            successors[item] = rng.choice(members, size=n_successors, p=weights)
    return SyntheticCatalogue(
        tuple(f"item-{i}" for i in range(n_items)), category, popularity, successors, n_categories
    )


def generate_behaviour(
    n_users: int = 1000,
    n_items: int = 500,
    n_categories: int = 20,
    mean_length: float = 30.0,
    seed: int = 0,
    with_features: bool = True,
    start_ts: float = 1_700_000_000.0,
    n_successors: int = 3,
) -> tuple[dict[str, list[BehaviourEvent]], SyntheticCatalogue]:
    """Per-user behaviour sequences (oldest first) and the catalogue that generated them.

    with_features=False drops category and event type (every event a product_view), like a public
    interaction log with only user_id, item_id, timestamp.
    """
    rng = np.random.default_rng(seed)
    catalogue = _catalogue(rng, n_items, n_categories, n_successors)
    by_category = [np.flatnonzero(catalogue.item_category == c) for c in range(n_categories)]
    sequences: dict[str, list[BehaviourEvent]] = {}
    for user in range(n_users):
        favourites = rng.choice(n_categories, size=2, replace=False)
        length = max(3, int(rng.lognormal(math.log(mean_length), 0.6)))
        ts = start_ts + rng.uniform(0, 30 * 86400)
        items: list[int] = []
        events: list[BehaviourEvent] = []
        for _ in range(length):
            draw = rng.random()
            if items and draw < 0.45:
                item = int(rng.choice(catalogue.successors[items[-1]]))
            elif len(items) >= 2 and draw < 0.6:
                item = int(rng.choice(catalogue.successors[items[-2]]))
            elif draw < 0.85:
                members = by_category[int(rng.choice(favourites))]
                weights = catalogue.popularity[members] / catalogue.popularity[members].sum()
                item = int(rng.choice(members, p=weights))
            else:
                item = int(rng.choice(n_items, p=catalogue.popularity))
            items.append(item)
            ts += rng.exponential(90.0) if rng.random() > 0.1 else rng.exponential(86400.0)
            kind = rng.random()
            event_type = (
                EventType.PURCHASE
                if kind < 0.05
                else EventType.ADD_TO_CART
                if kind < 0.15
                else EventType.PRODUCT_VIEW
            )
            events.append(
                BehaviourEvent(
                    event_type=event_type if with_features else EventType.PRODUCT_VIEW,
                    ts=float(round(ts)),
                    item_id=catalogue.item_ids[item],
                    category=f"cat-{catalogue.item_category[item]}" if with_features else None,
                    price=float(5 + 5 * catalogue.item_category[item]) if with_features else None,
                )
            )
        sequences[f"user-{user}"] = events
    return sequences, catalogue


def make_creatives(catalogue: SyntheticCatalogue, n_creatives: int = 40, seed: int = 0) -> list[Candidate]:
    """Creatives, each about one category and two of its products."""
    rng = np.random.default_rng(seed + 1)
    creatives = []
    for creative in range(n_creatives):
        category = int(rng.integers(0, catalogue.n_categories))
        members = np.flatnonzero(catalogue.item_category == category)
        products = tuple(
            catalogue.item_ids[i] for i in rng.choice(members, size=min(2, len(members)), replace=False)
        )
        creatives.append(
            Candidate(
                creative_id=creative + 1,
                campaign_id=creative // 2 + 1,
                advertiser_id=creative // 4 + 1,
                pricing=Pricing.CPC,
                bid=float(rng.uniform(0.2, 2.0)),
                category=f"cat-{category}",
                brand=f"brand-{creative % 7}",
                product_ids=products,
                price=float(5 + 5 * category),
            )
        )
    return creatives


def true_click_probability(context: DecisionContext, creative: Candidate) -> float:
    """The oracle: a logistic function of the history before the decision and the context."""
    recent = context.history[-20:]
    share = sum(e.category == creative.category for e in recent) / max(len(recent), 1)
    seen_product = any(e.item_id in creative.product_ids for e in context.history[-10:])
    logit = -3.2 + 3.0 * share + 1.2 * seen_product
    logit += {"homepage-top": 0.4, "product-side": 0.0, "checkout-bottom": -0.4}[context.placement]
    logit += 0.2 if context.device == "desktop" else 0.0
    return 1.0 / (1.0 + math.exp(-logit))


def generate_click_log(
    sequences: dict[str, list[BehaviourEvent]],
    creatives: list[Candidate],
    impressions_per_user: int = 10,
    seed: int = 0,
) -> list[ClickExample]:
    """Logged impressions at random moments of each user's timeline, with sampled clicks."""
    rng = np.random.default_rng(seed + 2)
    examples = []
    for user, events in sequences.items():
        first, last = events[0].ts, events[-1].ts
        for _ in range(impressions_per_user):
            decision_ts = float(rng.uniform(first, last + 3600.0))
            creative = creatives[int(rng.integers(len(creatives)))]
            context = DecisionContext(
                placement=_PLACEMENTS[int(rng.integers(3))],
                now=decision_ts,
                device=_DEVICES[int(rng.integers(3))],
                hour=int(decision_ts // 3600) % 24,
                user_key=user,
            )
            example = make_click_example(decision_ts, events, creative, context, False)
            clicked = rng.random() < true_click_probability(example.context, creative)
            examples.append(ClickExample(example.context, creative, bool(clicked)))
    examples.sort(key=lambda example: example.context.now)
    return examples

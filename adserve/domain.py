"""Value types and the two small interfaces every part of the decision loop shares.

This module imports nothing heavier than numpy, so `interest/` (torch), `bandit/` (VW),
`serving/` (Litestar) and `sim/` can all depend on it without depending on each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy as np

__all__ = [
    "BehaviourEvent",
    "Candidate",
    "Choice",
    "DecisionContext",
    "EventType",
    "Policy",
    "Pricing",
    "Scorer",
    "expected_value",
]


class EventType(StrEnum):
    PAGE_VIEW = "page_view"
    PRODUCT_VIEW = "product_view"
    ADD_TO_CART = "add_to_cart"
    PURCHASE = "purchase"
    SEARCH = "search"
    AD_CLICK = "ad_click"


class Pricing(StrEnum):
    CPC = "cpc"
    CPM = "cpm"


@dataclass(frozen=True, slots=True)
class BehaviourEvent:
    """One thing a user did on the shop. `ts` is seconds since the epoch (UTC)."""

    event_type: EventType
    ts: float
    item_id: str | None = None
    category: str | None = None
    price: float | None = None
    query: str | None = None


@dataclass(frozen=True, slots=True)
class Candidate:
    """An eligible creative as scorers and policies see it: its content and its price."""

    creative_id: int
    campaign_id: int
    advertiser_id: int
    pricing: Pricing
    bid: float  # CPC: price per click; CPM: price per thousand impressions
    category: str | None = None
    brand: str | None = None
    product_ids: tuple[str, ...] = ()
    price: float | None = None


@dataclass(frozen=True, slots=True)
class DecisionContext:
    """What is known at decision time. `history` is oldest-first and empty without consent."""

    placement: str
    now: float
    page_category: str | None = None
    keywords: tuple[str, ...] = ()
    device: str | None = None
    geo: str | None = None
    hour: int = 0
    position: int = 0
    user_key: str | None = None
    history: tuple[BehaviourEvent, ...] = ()


@dataclass(frozen=True, slots=True)
class Choice:
    """A policy's answer: the pmf over the candidates it was given and the sampled index."""

    pmf: tuple[float, ...]
    index: int
    explored: bool = False
    details: dict[str, float] = field(default_factory=dict)

    @property
    def propensity(self) -> float:
        return self.pmf[self.index]


@runtime_checkable
class Scorer(Protocol):
    """Predicts P(click) for each candidate in one batch."""

    version: str

    def score(self, context: DecisionContext, candidates: Sequence[Candidate]) -> np.ndarray:
        """Returns (N,) float64 calibrated click probabilities in [0, 1]."""
        ...


@runtime_checkable
class Policy(Protocol):
    """Turns scored candidates into a pmf and samples one; the pmf is what gets logged."""

    version: str

    def choose(
        self,
        context: DecisionContext,
        candidates: Sequence[Candidate],
        click_probabilities: np.ndarray,
        rng: np.random.Generator,
        scorer_version: str | None = None,
    ) -> Choice:
        """Candidates arrive already masked by eligibility; pmf has one entry per candidate;
        `scorer_version` names the scorer that gave `click_probabilities` (a policy that learns
        corrections to a scorer keeps them per scorer family)."""
        ...


def expected_value(candidate: Candidate, click_probability: float) -> float:
    """Expected revenue of one impression, in currency units (eCPM / 1000).

    CPC earns the bid only on a click; CPM earns a thousandth of its price per impression.
    """
    if candidate.pricing is Pricing.CPC:
        return candidate.bid * click_probability
    return candidate.bid / 1000.0


def logit(p: float, eps: float = 1e-6) -> float:
    p = min(max(p, eps), 1.0 - eps)
    return math.log(p / (1.0 - p))

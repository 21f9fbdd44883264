"""The empirical CTR scorer: what scores ads before any interest version does, and the baseline a
first version that scores ads must beat at the gate (`adserve.jobs.gate`).

Per-creative click-through rate smoothed towards a prior (a Beta prior: `prior_clicks` clicks in
`prior_impressions` impressions), so a new creative starts at the prior rather than at 0 or 1;
lifted by the user's recent affinity for the creative's category or linked products (the share
of recent events that match), so behaviour counts from the first request, before any model is
trained. It lives below serving and jobs because both use it: serving to score, the training
process to judge a challenger against it.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from adserve.domain import BehaviourEvent, Candidate, DecisionContext

if TYPE_CHECKING:
    from collections.abc import Sequence

    import asyncpg

__all__ = [
    "CreativeCounts",
    "EmpiricalCTRScorer",
    "HistoryProfile",
    "empirical_attribution",
    "history_affinity",
    "load_creative_counts",
]


@dataclass(frozen=True, slots=True)
class CreativeCounts:
    impressions: dict[int, int]
    clicks: dict[int, int]


COUNTS_SQL = """
SELECT i.creative_id, count(*) AS impressions,
       count(c.decision_id) AS clicks
FROM impressions i
LEFT JOIN clicks c ON c.decision_id = i.decision_id AND c.valid
WHERE i.ts > now() - make_interval(days => $1)
GROUP BY i.creative_id
"""


async def load_creative_counts(connection: asyncpg.Connection, days: int = 14) -> CreativeCounts:
    rows = await connection.fetch(COUNTS_SQL, days)
    return CreativeCounts(
        impressions={row["creative_id"]: row["impressions"] for row in rows},
        clicks={row["creative_id"]: row["clicks"] for row in rows},
    )


# (history, candidate tuple) pairs whose affinities are kept between a user's decisions: about
# 1 KB each (a profile, with a Counter per item seen, would be 12 KB)
AFFINITY_CACHE = 10_000


class HistoryProfile:
    """A request's history counted once: events per category, and per item the categories it
    was seen under, so scoring 100 candidates does not rescan the history 100 times."""

    def __init__(self, history: tuple[BehaviourEvent, ...]) -> None:
        self.length = len(history)
        self.categories = Counter(event.category for event in history if event.category)
        self.items: dict[str, Counter[str | None]] = {}
        for event in history:
            if event.item_id:
                self.items.setdefault(event.item_id, Counter())[event.category] += 1

    def affinity(self, candidate: Candidate) -> float:
        """Share of recent events about the candidate's category or one of its linked products."""
        if not self.length:
            return 0.0
        category = candidate.category
        matching = self.categories[category] if category else 0
        for product in candidate.product_ids:
            seen = self.items.get(product)
            if seen:
                # events already counted under the candidate's category are not counted twice
                matching += sum(n for c, n in seen.items() if not category or c != category)
        return matching / self.length


def history_affinity(context: DecisionContext, candidate: Candidate) -> float:
    return HistoryProfile(context.history).affinity(candidate)


class EmpiricalCTRScorer:
    def __init__(self, prior_clicks: float, prior_impressions: float, history_lift: float = 1.0) -> None:
        if prior_impressions <= 0 or not 0 <= prior_clicks <= prior_impressions:
            raise ValueError("need 0 <= prior_clicks <= prior_impressions and prior_impressions > 0")
        self.prior_clicks = prior_clicks
        self.prior_impressions = prior_impressions
        self.history_lift = history_lift
        self.counts = CreativeCounts({}, {})
        self.version = f"empirical-ctr:{prior_clicks:g}/{prior_impressions:g}+lift{history_lift:g}"
        # What a decision would otherwise recount, found by identity: the smoothed CTRs of the
        # last candidate tuple under the current counts, and the affinities of recent (history,
        # candidate tuple) pairs (the user state cache hands out one history tuple until the
        # user's events change; a slot's candidates are the catalogue's tuple). Lists are never
        # kept: one may change in place under the same identity.
        self._base: tuple[tuple[Candidate, ...], CreativeCounts, np.ndarray] = ((), self.counts, np.zeros(0))
        self._affinities: OrderedDict[
            tuple[int, int], tuple[tuple[BehaviourEvent, ...], tuple[Candidate, ...], np.ndarray]
        ] = OrderedDict()
        self._lock = threading.Lock()

    def update(self, counts: CreativeCounts) -> None:
        self.counts = counts

    def score(self, context: DecisionContext, candidates: Sequence[Candidate]) -> np.ndarray:
        base = self._smoothed_ctr(candidates)
        if not context.history or not self.history_lift:
            return base
        affinity = self._affinities_of(context.history, candidates)
        return np.minimum(1.0, base * (1.0 + self.history_lift * affinity))

    def _smoothed_ctr(self, candidates: Sequence[Candidate]) -> np.ndarray:
        counts, last = self.counts, self._base
        if last[0] is candidates and last[1] is counts:
            return last[2]
        impressions = np.fromiter(
            (counts.impressions.get(c.creative_id, 0) for c in candidates), float, len(candidates)
        )
        clicks = np.fromiter(
            (counts.clicks.get(c.creative_id, 0) for c in candidates), float, len(candidates)
        )
        base = (clicks + self.prior_clicks) / (impressions + self.prior_impressions)
        if isinstance(candidates, tuple):
            base.flags.writeable = False  # returned as the scores of every decision without history
            self._base = (candidates, counts, base)
        return base

    def _affinities_of(
        self, history: tuple[BehaviourEvent, ...], candidates: Sequence[Candidate]
    ) -> np.ndarray:
        key = (id(history), id(candidates))
        kept = isinstance(history, tuple) and isinstance(candidates, tuple)
        if kept:
            with self._lock:
                held = self._affinities.get(key)
                if held is not None and held[0] is history and held[1] is candidates:
                    self._affinities.move_to_end(key)
                    return held[2]
        profile = HistoryProfile(history)
        values = np.fromiter((profile.affinity(c) for c in candidates), float, len(candidates))
        if kept:
            values.flags.writeable = False
            with self._lock:  # held with the history and candidates, so their ids stay theirs
                self._affinities[key] = (history, candidates, values)
                while len(self._affinities) > AFFINITY_CACHE:
                    self._affinities.popitem(last=False)
        return values


def empirical_attribution(
    context: DecisionContext, candidate: Candidate
) -> list[tuple[BehaviourEvent, float]]:
    """Each history event's share of the empirical scorer's lift for this candidate: the events
    about its category or linked products, equally weighted; others contribute nothing."""
    products = set(candidate.product_ids)
    matches = [
        (candidate.category is not None and event.category == candidate.category) or event.item_id in products
        for event in context.history
    ]
    n = len(matches)
    return [
        (event, (1.0 / n) if matched else 0.0)
        for event, matched in zip(context.history, matches, strict=True)
    ]

"""Budget reservations on the serving side: what a served decision holds against its budget.

A decision may still cost money for as long as its tracking tokens are valid
(`serving.token_ttl_s`). So that every process stops serving a campaign before its budget is
spent rather than after, each served decision of a budgeted campaign reserves its expected cost
(CPC: bid × P(click) as scored; CPM: the price of one impression). The reservation is stored with
the decision row and summed per campaign and minute in `budget_reservations` by the log writer, in
the transaction that stores the decision, so it is shared by every process. The writer takes it
back out when the decision's impression (CPM) or valid click (CPC) is stored; otherwise it lapses
when the decision's tokens expire. Eligibility treats spend + reservations as committed.

Each process also remembers its own reservations made since the catalogue snapshot was read
(`LocalReservations`), so it does not over-serve between two snapshot refreshes; other processes'
reservations reach it with the next refresh (`serving.catalog_refresh_s`). Whatever still slips
through is never billed past the budget: the writer caps charging (adserve/events/writer.py).
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from typing import TYPE_CHECKING

from adserve.domain import Pricing

if TYPE_CHECKING:
    from adserve.serving.catalog import CampaignState

__all__ = ["SNAPSHOT_MARGIN_S", "LocalReservations", "expected_cost"]

# A local reservation is forgotten only once a snapshot read at least this long after it was made
# has it from Postgres. The decision row (which carries the reservation) is queued and committed
# within writer.flush_ms (200 ms) plus the commit, which a loaded machine stretches to seconds;
# within the margin a reservation may be counted twice, which only holds back a little more.
SNAPSHOT_MARGIN_S = 5.0


def expected_cost(campaign: CampaignState, p_click: float) -> float:
    """The decision's expected cost, rounded to the money column's 6 decimals; 0 for a campaign
    with neither a total nor a daily budget (nothing to hold back)."""
    if campaign.total_budget is None and campaign.daily_budget is None:
        return 0.0
    if campaign.pricing is Pricing.CPC:
        return round(campaign.bid * min(max(float(p_click), 0.0), 1.0), 6)
    return round(campaign.bid / 1000.0, 6)


class LocalReservations:
    """This process's reservations not yet in the catalogue snapshot, summed per campaign."""

    def __init__(self, clock=time.time) -> None:
        self._clock = clock
        self._entries: deque[tuple[float, int, float]] = deque()
        self._sums: dict[int, float] = defaultdict(float)

    def add(self, campaign_id: int, amount: float) -> None:
        if amount > 0:
            self._entries.append((self._clock(), campaign_id, amount))
            self._sums[campaign_id] += amount

    def since(self, snapshot_read_at: float) -> dict[int, float]:
        """Reservations per campaign that a snapshot read at `snapshot_read_at` may not hold yet.
        The returned mapping is live: `add` updates it."""
        cutoff = snapshot_read_at - SNAPSHOT_MARGIN_S
        entries, sums = self._entries, self._sums
        while entries and entries[0][0] < cutoff:
            _, campaign_id, amount = entries.popleft()
            left = sums[campaign_id] - amount
            if left > 1e-9:
                sums[campaign_id] = left
            else:
                del sums[campaign_id]
        return sums

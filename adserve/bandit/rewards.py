"""Reward join: turn served decisions plus clicks (and conversions) into labelled outcomes.

Pure data in, pure data out; the events layer reads the rows from Postgres and writes the
`rewards` rows this returns. Times are seconds since the epoch (UTC).

Rules, for a decision made at `t` with reward window `W`:
- a *valid* click at `t <= clicked_at <= t + W` (both ends inclusive) is the reward; the
  decision is labelled as soon as that click is known;
- with no such click, the decision is labelled with the default reward (no click) once the
  window has closed, i.e. when `now > t + W`; until then it is left unlabelled;
- invalid clicks (IVT) never count; clicks outside the window never count; several valid
  clicks on one decision count once (the earliest);
- conversions count only for a decision that earned a click, summed over the decision's
  conversion rows known at join time (the attribution window is the events layer's rule).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from adserve.domain import Pricing

if TYPE_CHECKING:
    from collections.abc import Hashable, Iterable

__all__ = [
    "DEFAULT_REWARD_WINDOW_S",
    "ClickEvent",
    "ConversionEvent",
    "Reward",
    "ServedDecision",
    "decision_revenue",
    "join_rewards",
]

DEFAULT_REWARD_WINDOW_S = 30 * 60.0


@dataclass(frozen=True, slots=True)
class ServedDecision:
    """The part of a decision row the join needs: when, what was chosen, and how it pays.

    `impressed` is False when the creative was never rendered; CPM earns only on impressions.
    """

    decision_id: Hashable
    decided_at: float
    creative_id: int
    pricing: Pricing
    bid: float
    impressed: bool = True


@dataclass(frozen=True, slots=True)
class ClickEvent:
    decision_id: Hashable
    clicked_at: float
    valid: bool


@dataclass(frozen=True, slots=True)
class ConversionEvent:
    decision_id: Hashable
    value: float


@dataclass(frozen=True, slots=True)
class Reward:
    """A labelled decision. `labelled_at` is the click time, or the window's end without one."""

    decision_id: Hashable
    decided_at: float
    creative_id: int
    clicked: bool
    revenue: float
    conversion_value: float
    labelled_at: float


def decision_revenue(pricing: Pricing, bid: float, clicked: bool, impressed: bool = True) -> float:
    """What the service earned from one decision: the bid on a CPC click, bid/1000 per CPM impression."""
    if pricing is Pricing.CPC:
        return bid if clicked else 0.0
    # a click proves the creative was rendered even if the impression beacon was lost
    return bid / 1000.0 if (impressed or clicked) else 0.0


def join_rewards(
    decisions: Iterable[ServedDecision],
    clicks: Iterable[ClickEvent],
    now: float,
    reward_window_s: float = DEFAULT_REWARD_WINDOW_S,
    conversions: Iterable[ConversionEvent] = (),
) -> list[Reward]:
    """Label every decision whose outcome is known at `now`; returned oldest decision first.

    Decisions still inside their window and without a valid click are omitted: they will be
    labelled by a later join. Clicks stamped after `now` are ignored, so the result depends
    only on what had happened by `now`.
    """
    if reward_window_s < 0:
        raise ValueError(f"reward_window_s must be >= 0, got {reward_window_s}")
    valid_clicks: dict[Hashable, list[float]] = defaultdict(list)
    for click in clicks:
        if click.valid and click.clicked_at <= now:
            valid_clicks[click.decision_id].append(click.clicked_at)
    conversion_value: dict[Hashable, float] = defaultdict(float)
    for conversion in conversions:
        conversion_value[conversion.decision_id] += conversion.value

    rewards = []
    for decision in decisions:
        window_end = decision.decided_at + reward_window_s
        in_window = [
            t for t in valid_clicks.get(decision.decision_id, ()) if decision.decided_at <= t <= window_end
        ]
        if in_window:
            clicked, labelled_at = True, min(in_window)
        elif now > window_end:
            clicked, labelled_at = False, window_end
        else:
            continue
        rewards.append(
            Reward(
                decision_id=decision.decision_id,
                decided_at=decision.decided_at,
                creative_id=decision.creative_id,
                clicked=clicked,
                revenue=decision_revenue(decision.pricing, decision.bid, clicked, decision.impressed),
                conversion_value=conversion_value.get(decision.decision_id, 0.0) if clicked else 0.0,
                labelled_at=labelled_at,
            )
        )
    rewards.sort(key=lambda r: r.decided_at)
    return rewards

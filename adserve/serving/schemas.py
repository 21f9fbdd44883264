"""Request and response types of the decision API (the behaviour-event API's are in
adserve/events/schemas.py)."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

__all__ = [
    "AdCreative",
    "DecisionRequest",
    "DecisionResponse",
    "Diagnostics",
    "Explanation",
    "InfluentialEvent",
    "PageContext",
    "PlacementDecision",
    "Reason",
]

Text = Annotated[str, Meta(max_length=200, pattern=r"^[^\x00]*$")]
UserId = Annotated[str, Meta(min_length=1, max_length=200, pattern=r"^[^\x00]+$")]
PlacementKey = Annotated[str, Meta(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
Url = Annotated[str, Meta(max_length=2048, pattern=r"^[^\x00]*$")]


class Body(Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class PageContext(Body):
    page_url: Url | None = None
    page_category: Text | None = None
    keywords: Annotated[list[Text], Meta(max_length=50)] = msgspec.field(default_factory=list)
    device: Literal["desktop", "mobile", "tablet"] | None = None
    geo: Annotated[str, Meta(max_length=8, pattern=r"^[A-Za-z-]*$")] | None = None
    referrer: Url | None = None
    segments: Annotated[list[Text], Meta(max_length=50)] = msgspec.field(default_factory=list)


class DecisionRequest(Body):
    user_id: UserId
    placements: Annotated[list[PlacementKey], Meta(min_length=1, max_length=10)]
    consent: bool = False
    session_id: Text | None = None
    context: PageContext = msgspec.field(default_factory=PageContext)
    explain: bool = False


class AdCreative(Struct, kw_only=True):
    id: int
    campaign_id: int
    title: str
    image_url: str
    width: int
    height: int


class Reason(Struct, frozen=True, kw_only=True):
    """Something the person did that made this ad relevant to them."""

    event_type: str
    category: str | None
    item_id: str | None


class InfluentialEvent(Struct, kw_only=True):
    """A recent event of the user and how much it moved this ad's score (gradient × input for the
    interest model; the empirical scorer's share of its lift)."""

    event_type: str
    item_id: str | None
    category: str | None
    seconds_before: float
    weight: float


class Diagnostics(Struct, kw_only=True):
    """Why the server chose this ad: eligibility, scores, price, the policy's pmf and versions."""

    eligible: int
    considered: int
    removed_by_rule: dict[str, int]
    p_click: float
    bid: float
    pricing: str
    expected_value: float
    pmf: list[float]
    propensity: float
    explored: bool
    scorer_version: str
    policy_version: str
    influential_events: list[InfluentialEvent]


class Explanation(Struct, kw_only=True, omit_defaults=True):
    """`reasons`: the person's own events that made the ad relevant (empty without consent).
    `diagnostics`: only for an admin key, or a manager key when the ad is the manager's own."""

    reasons: list[Reason]
    diagnostics: Diagnostics | None = None


class PlacementDecision(Struct, kw_only=True):
    placement: str
    decision_id: uuid.UUID | None
    creative: AdCreative | None
    impression_url: str | None
    click_url: str | None
    explanation: Explanation | None = None


class DecisionResponse(Struct, kw_only=True):
    request_id: uuid.UUID
    decisions: list[PlacementDecision]

"""Request and response types of the decision API and the behaviour-event API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

__all__ = [
    "EVENT_BATCH_MAX_BYTES",
    "MAX_EVENTS_PER_BATCH",
    "AdCreative",
    "DecisionRequest",
    "DecisionResponse",
    "Diagnostics",
    "EventBatch",
    "EventIn",
    "EventsAccepted",
    "Explanation",
    "InfluentialEvent",
    "PageContext",
    "PlacementDecision",
    "Reason",
]

Text = Annotated[str, Meta(max_length=200, pattern=r"^[^\x00]*$")]
# user_events.item_id and .category are VARCHAR(100): a longer value made Postgres reject the whole
# batch it was written in, everyone's events with it; it is a 400 for its own request instead.
ItemText = Annotated[str, Meta(max_length=100, pattern=r"^[^\x00]*$")]
UserId = Annotated[str, Meta(min_length=1, max_length=200, pattern=r"^[^\x00]+$")]
PlacementKey = Annotated[str, Meta(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
Url = Annotated[str, Meta(max_length=2048, pattern=r"^[^\x00]*$")]


# The documented batch maximum, and the body it needs: an event with every text field at its
# longest, in 4-byte UTF-8, with its JSON punctuation, stays under 4 KiB.
MAX_EVENTS_PER_BATCH = 500
MAX_EVENT_BYTES = 4096
EVENT_BATCH_MAX_BYTES = MAX_EVENTS_PER_BATCH * MAX_EVENT_BYTES + 1024


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


EventType = Literal["page_view", "product_view", "add_to_cart", "purchase", "search"]


class EventIn(Body):
    event_id: uuid.UUID
    user_id: UserId
    type: EventType
    ts: datetime
    item_id: ItemText | None = None
    category: ItemText | None = None
    price: Annotated[float, Meta(ge=0, le=1e9)] | None = None
    query: Text | None = None


class EventBatch(Body):
    events: Annotated[list[EventIn], Meta(min_length=1, max_length=MAX_EVENTS_PER_BATCH)]
    consent: bool = False


class EventsAccepted(Struct, kw_only=True):
    received: int
    stored: int
    ignored_without_consent: int
    durability: Literal["stored", "spooled", "none"]

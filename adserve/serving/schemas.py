"""Request and response types of the decision API and the behaviour-event API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

__all__ = [
    "AdCreative",
    "DecisionRequest",
    "DecisionResponse",
    "EventBatch",
    "EventIn",
    "EventsAccepted",
    "PageContext",
    "PlacementDecision",
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


class PlacementDecision(Struct, kw_only=True):
    placement: str
    decision_id: uuid.UUID | None
    creative: AdCreative | None
    impression_url: str | None
    click_url: str | None
    explanation: dict | None = None


class DecisionResponse(Struct, kw_only=True):
    request_id: uuid.UUID
    decisions: list[PlacementDecision]


EventType = Literal["page_view", "product_view", "add_to_cart", "purchase", "search"]


class EventIn(Body):
    event_id: uuid.UUID
    user_id: UserId
    type: EventType
    ts: datetime
    item_id: Text | None = None
    category: Text | None = None
    price: Annotated[float, Meta(ge=0, le=1e9)] | None = None
    query: Text | None = None


class EventBatch(Body):
    events: Annotated[list[EventIn], Meta(min_length=1, max_length=500)]
    consent: bool = False


class EventsAccepted(Struct, kw_only=True):
    received: int
    stored: int
    ignored_without_consent: int
    durability: Literal["stored", "spooled", "none"]

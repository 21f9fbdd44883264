"""Request and response types of the behaviour-event API (``POST /v1/events``)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from msgspec import Meta, Struct

__all__ = [
    "EVENT_BATCH_MAX_BYTES",
    "MAX_EVENTS_PER_BATCH",
    "EventBatch",
    "EventIn",
    "EventsAccepted",
]

Text = Annotated[str, Meta(max_length=200, pattern=r"^[^\x00]*$")]
# user_events.item_id and .category are VARCHAR(100): a longer value made Postgres reject the whole
# batch it was written in, everyone's events with it; it is a 400 for its own request instead.
ItemText = Annotated[str, Meta(max_length=100, pattern=r"^[^\x00]*$")]
UserId = Annotated[str, Meta(min_length=1, max_length=200, pattern=r"^[^\x00]+$")]

# The documented batch maximum, and the body it needs: an event with every text field at its
# longest, in 4-byte UTF-8, with its JSON punctuation, stays under 4 KiB.
MAX_EVENTS_PER_BATCH = 500
MAX_EVENT_BYTES = 4096
EVENT_BATCH_MAX_BYTES = MAX_EVENTS_PER_BATCH * MAX_EVENT_BYTES + 1024


class Body(Struct, forbid_unknown_fields=True, kw_only=True):
    pass


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

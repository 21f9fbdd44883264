"""Row builders and a campaign to charge, shared by the log writer tests."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg

from adserve.db.rows import make_row

# Nothing listens on port 9 (discard), so connecting is refused at once.
UNREACHABLE_URL = "postgresql://postgres@127.0.0.1:9/adserve"


async def create_campaign(db: asyncpg.Connection, timezone: str = "UTC", pricing: str = "cpm") -> int:
    advertiser = await db.fetchval(
        "INSERT INTO advertisers (name) VALUES ($1) RETURNING id", f"writer test {uuid.uuid4()}"
    )
    return await db.fetchval(
        "INSERT INTO campaigns (advertiser_id, name, pricing, bid, timezone) "
        "VALUES ($1, 'writer test', $2, 1, $3) RETURNING id",
        advertiser,
        pricing,
        timezone,
    )


def event_row(**values: Any) -> tuple:
    defaults = {"id": uuid.uuid4(), "user_id": "u-1", "event_type": "page_view", "ts": datetime.now(UTC)}
    return make_row("user_events", **{**defaults, **values})


def decision_row(**values: Any) -> tuple:
    defaults = {
        "id": uuid.uuid4(),
        "ts": datetime.now(UTC),
        "request_id": uuid.uuid4(),
        "placement_id": 1,
        "user_id": "u-1",
        "context": {"page": "/shoes", "keywords": ["red", "run"], "nested": {"n": 1.5, "none": None}},
        "candidate_ids": [11, 12, 13],
        "scores": [0.1, 0.2, 0.05],
        "pmf": [0.2, 0.7, 0.1],
        "chosen_creative_id": 12,
        "campaign_id": 5,
        "propensity": 0.7,
        "scorer_version": "empirical-1",
        "policy_version": "eg-0.1",
    }
    return make_row("decisions", **{**defaults, **values})


def impression_row(campaign_id: int, cost: float, **values: Any) -> tuple:
    defaults = {
        "decision_id": uuid.uuid4(),
        "ts": datetime.now(UTC),
        "creative_id": 1,
        "campaign_id": campaign_id,
        "placement_id": 1,
        "user_id": "u-1",
        "cost": cost,
    }
    return make_row("impressions", **{**defaults, **values})


def click_row(
    campaign_id: int, decision_id: uuid.UUID, cost: float, valid: bool = True, **values: Any
) -> tuple:
    defaults = {
        "id": uuid.uuid4(),
        "decision_id": decision_id,
        "ts": datetime.now(UTC),
        "creative_id": 1,
        "campaign_id": campaign_id,
        "placement_id": 1,
        "user_id": "u-1",
        "valid": valid,
        "invalid_reason": None if valid else "bot",
        "cost": cost,
    }
    return make_row("clicks", **{**defaults, **values})

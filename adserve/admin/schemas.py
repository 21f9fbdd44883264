"""Request and response types of the admin API (msgspec Structs; never ORM objects).

Create/update bodies forbid unknown fields, so ids, `advertiser_id` and spend counters cannot be
set through a body (mass assignment): sending one is a 400, not a silent no-op.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

__all__ = [
    "AdvertiserCreate",
    "AdvertiserOut",
    "AdvertiserPage",
    "AdvertiserUpdate",
    "ApiKeyCreate",
    "ApiKeyCreated",
    "ApiKeyOut",
    "ApiKeyPage",
    "CampaignCreate",
    "CampaignOut",
    "CampaignPage",
    "CampaignUpdate",
    "CreativeCreate",
    "CreativeOut",
    "CreativePage",
    "CreativeUpdate",
    "FrequencyCap",
    "ModelChange",
    "ModelVersionOut",
    "ModelVersionPage",
    "PlacementCreate",
    "PlacementOut",
    "PlacementPage",
    "PlacementUpdate",
    "Targeting",
]

# Postgres text cannot hold NUL, so it is refused here as a 400 rather than failing the insert.
Name = Annotated[str, Meta(min_length=1, max_length=200, pattern=r"^[^\x00]+$")]
Label = Annotated[str, Meta(min_length=1, max_length=100, pattern=r"^[^\x00]+$")]
Labels = Annotated[list[Label], Meta(max_length=100)]
# NUMERIC(18, 6) holds values below 10^12; the cap keeps every sum of them representable too.
Money = Annotated[float, Meta(ge=0, le=1e11)]
Bid = Annotated[float, Meta(gt=0, le=1e6)]
Pixels = Annotated[int, Meta(ge=1, le=4000)]
HttpsUrl = Annotated[str, Meta(min_length=9, max_length=2048, pattern=r"^https://[^\s]+$")]
ImageUrl = Annotated[str, Meta(min_length=2, max_length=2048, pattern=r"^(https://|/)[^\s]+$")]
Timezone = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_+/-]+$")]
# Ids are BIGINT: a larger number is a 400, not a database overflow.
RowId = Annotated[int, Meta(ge=1, le=2**63 - 1)]
Status = Literal["active", "paused", "archived"]
Device = Literal["desktop", "mobile", "tablet"]
Key = Annotated[str, Meta(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]


class Body(Struct, forbid_unknown_fields=True, kw_only=True):
    """Base of every request body."""


class Targeting(Body):
    """Empty list = no restriction on that dimension."""

    geo: Labels = msgspec.field(default_factory=list)
    device: Annotated[list[Device], Meta(max_length=3)] = msgspec.field(default_factory=list)
    page_categories: Labels = msgspec.field(default_factory=list)
    keywords: Labels = msgspec.field(default_factory=list)
    segments: Labels = msgspec.field(default_factory=list)


class FrequencyCap(Body):
    impressions: Annotated[int, Meta(ge=1, le=1000)]
    window_s: Annotated[int, Meta(ge=60, le=30 * 86400)]


# --- advertisers -------------------------------------------------------------------------------


class AdvertiserCreate(Body):
    name: Name
    status: Status = "active"


class AdvertiserUpdate(Body):
    name: Name | UnsetType = UNSET
    status: Status | UnsetType = UNSET


class AdvertiserOut(Struct, kw_only=True):
    id: int
    name: str
    status: str
    created_at: datetime
    updated_at: datetime


class AdvertiserPage(Struct, kw_only=True):
    items: list[AdvertiserOut]
    total: int
    limit: int
    offset: int


# --- campaigns ---------------------------------------------------------------------------------


class CampaignCreate(Body):
    name: Name
    pricing: Literal["cpc", "cpm"]
    bid: Bid
    status: Status = "active"
    total_budget: Money | None = None
    daily_budget: Money | None = None
    start_at: datetime | None = None
    end_at: datetime | None = None
    timezone: Timezone = "UTC"
    targeting: Targeting = msgspec.field(default_factory=Targeting)
    frequency_cap: FrequencyCap | None = None


class CampaignUpdate(Body):
    name: Name | UnsetType = UNSET
    pricing: Literal["cpc", "cpm"] | UnsetType = UNSET
    bid: Bid | UnsetType = UNSET
    status: Status | UnsetType = UNSET
    total_budget: Money | UnsetType | None = UNSET
    daily_budget: Money | UnsetType | None = UNSET
    start_at: datetime | UnsetType | None = UNSET
    end_at: datetime | UnsetType | None = UNSET
    timezone: Timezone | UnsetType = UNSET
    targeting: Targeting | UnsetType = UNSET
    frequency_cap: FrequencyCap | UnsetType | None = UNSET


class CampaignOut(Struct, kw_only=True):
    id: int
    advertiser_id: int
    name: str
    status: str
    pricing: str
    bid: float
    total_budget: float | None
    daily_budget: float | None
    start_at: datetime | None
    end_at: datetime | None
    timezone: str
    targeting: Targeting
    frequency_cap: FrequencyCap | None
    spend_total: float
    spend_today: float
    created_at: datetime
    updated_at: datetime


class CampaignPage(Struct, kw_only=True):
    items: list[CampaignOut]
    total: int
    limit: int
    offset: int


# --- creatives ---------------------------------------------------------------------------------


class CreativeCreate(Body):
    campaign_id: RowId
    title: Name
    width: Pixels
    height: Pixels
    image_url: ImageUrl
    landing_url: HttpsUrl
    format: Literal["image", "native"] = "image"
    status: Status = "active"
    category: Label | None = None
    brand: Label | None = None
    product_ids: Labels = msgspec.field(default_factory=list)
    price: Money | None = None


class CreativeUpdate(Body):
    title: Name | UnsetType = UNSET
    width: Pixels | UnsetType = UNSET
    height: Pixels | UnsetType = UNSET
    image_url: ImageUrl | UnsetType = UNSET
    landing_url: HttpsUrl | UnsetType = UNSET
    format: Literal["image", "native"] | UnsetType = UNSET
    status: Status | UnsetType = UNSET
    category: Label | UnsetType | None = UNSET
    brand: Label | UnsetType | None = UNSET
    product_ids: Labels | UnsetType = UNSET
    price: Money | UnsetType | None = UNSET


class CreativeOut(Struct, kw_only=True):
    id: int
    campaign_id: int
    advertiser_id: int
    title: str
    width: int
    height: int
    image_url: str
    landing_url: str
    format: str
    status: str
    category: str | None
    brand: str | None
    product_ids: list[str]
    price: float | None
    created_at: datetime
    updated_at: datetime


class CreativePage(Struct, kw_only=True):
    items: list[CreativeOut]
    total: int
    limit: int
    offset: int


# --- placements --------------------------------------------------------------------------------


class PlacementCreate(Body):
    key: Key
    width: Pixels
    height: Pixels
    page_type: Label = "any"
    position: Annotated[int, Meta(ge=0, le=100)] = 0
    status: Status = "active"


class PlacementUpdate(Body):
    width: Pixels | UnsetType = UNSET
    height: Pixels | UnsetType = UNSET
    page_type: Label | UnsetType = UNSET
    position: Annotated[int, Meta(ge=0, le=100)] | UnsetType = UNSET
    status: Status | UnsetType = UNSET


class PlacementOut(Struct, kw_only=True):
    id: int
    key: str
    width: int
    height: int
    page_type: str
    position: int
    status: str
    created_at: datetime
    updated_at: datetime


class PlacementPage(Struct, kw_only=True):
    items: list[PlacementOut]
    total: int
    limit: int
    offset: int


# --- API keys ----------------------------------------------------------------------------------


class ApiKeyCreate(Body):
    role: Literal["admin", "manager", "viewer", "site"]
    advertiser_id: RowId | None = None
    name: Annotated[str, Meta(max_length=200, pattern=r"^[^\x00]*$")] = ""


class ApiKeyOut(Struct, kw_only=True):
    id: int
    prefix: str
    role: str
    advertiser_id: int | None
    name: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(Struct, kw_only=True):
    """The only response that ever contains the key itself."""

    key: str
    api_key: ApiKeyOut


class ApiKeyPage(Struct, kw_only=True):
    items: list[ApiKeyOut]
    total: int
    limit: int
    offset: int


# --- model registry ----------------------------------------------------------------------------


class ModelVersionOut(Struct, kw_only=True):
    id: int
    kind: str
    version: str
    status: str
    metrics: dict
    reason: str | None
    created_at: datetime
    promoted_at: datetime | None


class ModelVersionPage(Struct, kw_only=True):
    items: list[ModelVersionOut]
    limit: int
    offset: int


class ModelChange(Body):
    reason: Annotated[str, Meta(min_length=1, max_length=500, pattern=r"^[^\x00]+$")] = "changed by an admin"

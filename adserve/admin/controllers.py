"""Admin API under /admin/v1: advertisers, campaigns, creatives, placements, API keys."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

import msgspec
from litestar import Controller, Request, Router, delete, get, patch, post
from litestar.di import NamedDependency, Provide
from litestar.middleware import DefineMiddleware
from litestar.openapi.spec import Components, SecurityScheme
from litestar.params import FromQuery, JSONBody, QueryParameter

# Litestar reads handler annotations at runtime, so these imports cannot be typing-only.
from sqlalchemy.ext.asyncio import AsyncSession

from adserve.admin import schemas
from adserve.admin.analytics import AnalyticsController
from adserve.admin.audit import AuditController
from adserve.admin.auth import (
    ApiKeyAuthMiddleware,
    provide_caller,
    requires_admin,
    requires_staff,
    requires_writer,
)
from adserve.admin.model_registry import ModelController
from adserve.admin.ope import OpeController
from adserve.admin.operations import JobsController, ReportsController
from adserve.admin.params import (
    MAX_ID,
    CallerDep,
    DbSession,
    ItemId,
    Limit,
    Offset,
    OptionalId,
    StatusFilter,
    TextFilter,
)
from adserve.admin.privacy import UserController
from adserve.admin.services import (
    AdminService,
    AdvertiserService,
    ApiKeyService,
    CampaignService,
    CreativeService,
    PlacementService,
)
from adserve.db.tables import Advertiser, ApiKey, Campaign, Creative, Placement

if TYPE_CHECKING:
    from sqlalchemy import ColumnElement

__all__ = ["ADMIN_COMPONENTS", "admin_router"]

OutT = TypeVar("OutT")


async def provide_db_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.sessionmaker() as session:
        yield session


def service_provider(service_type: type[AdminService[Any]]) -> Provide:
    """The dependency that builds `service_type` for this request's session and caller."""

    def provide(db_session: DbSession, caller: CallerDep) -> AdminService[Any]:
        return service_type(db_session, caller)

    return Provide(provide, sync_to_thread=False)


def _converter(out_type: type[OutT]) -> Callable[[Any], OutT]:
    return lambda row: msgspec.convert(row, out_type, from_attributes=True)


def _equal(*column_values: tuple[Any, Any]) -> list[ColumnElement[bool]]:
    """Equality filters for the query parameters a request gave (None and "" mean: any)."""
    return [column == value for column, value in column_values if value]


def _all(rows: Iterable[Any], out: Callable[[Any], OutT]) -> list[OutT]:
    return [out(row) for row in rows]


advertiser_out = _converter(schemas.AdvertiserOut)
creative_out = _converter(schemas.CreativeOut)
placement_out = _converter(schemas.PlacementOut)
api_key_out = _converter(schemas.ApiKeyOut)


def campaign_out(row: Campaign) -> schemas.CampaignOut:
    cap = (
        schemas.FrequencyCap(impressions=row.frequency_cap, window_s=row.frequency_window_s)
        if row.frequency_cap and row.frequency_window_s
        else None
    )
    return schemas.CampaignOut(
        id=row.id,
        advertiser_id=row.advertiser_id,
        name=row.name,
        status=row.status,
        pricing=row.pricing,
        bid=row.bid,
        total_budget=row.total_budget,
        daily_budget=row.daily_budget,
        start_at=row.start_at,
        end_at=row.end_at,
        timezone=row.timezone,
        targeting=msgspec.convert(row.targeting or {}, schemas.Targeting),
        frequency_cap=cap,
        spend_total=row.spend_total,
        spend_today=row.spend_today,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


class AdvertiserController(Controller):
    path = "/advertisers"
    tags = ["advertisers"]  # noqa: RUF012
    guards = [requires_admin]  # noqa: RUF012
    dependencies = {"advertisers": service_provider(AdvertiserService)}  # noqa: RUF012

    @get(summary="List advertisers", description="Admin keys only; filter by status or name (substring).")
    async def list_advertisers(
        self,
        advertisers: NamedDependency[AdvertiserService],
        limit: Limit = 50,
        offset: Offset = 0,
        status: StatusFilter = None,
        name: TextFilter = None,
    ) -> schemas.AdvertiserPage:
        filters = _equal((Advertiser.status, status))
        if name:
            filters.append(Advertiser.name.icontains(name, autoescape=True))
        rows, total = await advertisers.page(filters, limit, offset)
        return schemas.AdvertiserPage(
            items=_all(rows, advertiser_out), total=total, limit=limit, offset=offset
        )

    @post(summary="Create an advertiser", description="Names are unique (409 on a clash).")
    async def create_advertiser(
        self, advertisers: NamedDependency[AdvertiserService], data: JSONBody[schemas.AdvertiserCreate]
    ) -> schemas.AdvertiserOut:
        return advertiser_out(await advertisers.create(data))

    @get("/{item_id:int}", summary="Get an advertiser")
    async def get_advertiser(
        self, advertisers: NamedDependency[AdvertiserService], item_id: ItemId
    ) -> schemas.AdvertiserOut:
        return advertiser_out(await advertisers.get(item_id))

    @patch("/{item_id:int}", summary="Update an advertiser", description="Archive it with status=archived.")
    async def update_advertiser(
        self,
        advertisers: NamedDependency[AdvertiserService],
        item_id: ItemId,
        data: JSONBody[schemas.AdvertiserUpdate],
    ) -> schemas.AdvertiserOut:
        return advertiser_out(await advertisers.update(data, item_id))

    @delete(
        "/{item_id:int}",
        summary="Delete an advertiser",
        description="Deletes its campaigns too; one with delivered campaigns is a 409 (archive it instead).",
    )
    async def delete_advertiser(
        self, advertisers: NamedDependency[AdvertiserService], item_id: ItemId
    ) -> None:
        await advertisers.delete(item_id)


class CampaignController(Controller):
    path = "/campaigns"
    tags = ["campaigns"]  # noqa: RUF012
    dependencies = {"campaigns": service_provider(CampaignService)}  # noqa: RUF012

    @get(
        summary="List campaigns",
        description="The caller's advertiser's campaigns (admins: all, or one advertiser's); "
        "archived ones only when status=archived.",
    )
    async def list_campaigns(
        self,
        campaigns: NamedDependency[CampaignService],
        limit: Limit = 50,
        offset: Offset = 0,
        status: StatusFilter = None,
        pricing: FromQuery[Literal["cpc", "cpm"] | None] = None,
        name: TextFilter = None,
        advertiser_id: OptionalId = None,
    ) -> schemas.CampaignPage:
        # archived campaigns (deleted after delivery) are listed only when asked for
        filters = _equal((Campaign.pricing, pricing), (Campaign.advertiser_id, advertiser_id))
        filters.append(Campaign.status == status if status else Campaign.status != "archived")
        if name:
            filters.append(Campaign.name.icontains(name, autoescape=True))
        rows, total = await campaigns.page(filters, limit, offset)
        return schemas.CampaignPage(items=_all(rows, campaign_out), total=total, limit=limit, offset=offset)

    @post(
        guards=[requires_writer],
        summary="Create a campaign",
        description="Managers create for their own advertiser; admin keys name one (advertiser_id).",
    )
    async def create_campaign(
        self,
        campaigns: NamedDependency[CampaignService],
        data: JSONBody[schemas.CampaignCreate],
        advertiser_id: Annotated[
            int | None, QueryParameter(ge=1, le=MAX_ID, description="Required for admin keys")
        ] = None,
    ) -> schemas.CampaignOut:
        return campaign_out(await campaigns.create(data, advertiser_id))

    @get("/{item_id:int}", summary="Get a campaign", description="Another advertiser's campaign is a 404.")
    async def get_campaign(
        self, campaigns: NamedDependency[CampaignService], item_id: ItemId
    ) -> schemas.CampaignOut:
        return campaign_out(await campaigns.get(item_id))

    @patch("/{item_id:int}", guards=[requires_writer], summary="Update a campaign")
    async def update_campaign(
        self,
        campaigns: NamedDependency[CampaignService],
        item_id: ItemId,
        data: JSONBody[schemas.CampaignUpdate],
    ) -> schemas.CampaignOut:
        return campaign_out(await campaigns.update(data, item_id))

    @delete(
        "/{item_id:int}",
        guards=[requires_writer],
        summary="Delete a campaign",
        description="A campaign with delivery is archived instead, so reports keep its spend.",
    )
    async def delete_campaign(self, campaigns: NamedDependency[CampaignService], item_id: ItemId) -> None:
        await campaigns.delete(item_id)


class CreativeController(Controller):
    path = "/creatives"
    tags = ["creatives"]  # noqa: RUF012
    dependencies = {"creatives": service_provider(CreativeService)}  # noqa: RUF012

    @get(summary="List creatives", description="The caller's advertiser's creatives (admins: all).")
    async def list_creatives(
        self,
        creatives: NamedDependency[CreativeService],
        limit: Limit = 50,
        offset: Offset = 0,
        status: StatusFilter = None,
        campaign_id: OptionalId = None,
        category: TextFilter = None,
    ) -> schemas.CreativePage:
        filters = _equal(
            (Creative.status, status), (Creative.campaign_id, campaign_id), (Creative.category, category)
        )
        rows, total = await creatives.page(filters, limit, offset)
        return schemas.CreativePage(items=_all(rows, creative_out), total=total, limit=limit, offset=offset)

    @post(
        guards=[requires_writer],
        summary="Create a creative",
        description="In one of the caller's campaigns; it belongs to that campaign's advertiser.",
    )
    async def create_creative(
        self, creatives: NamedDependency[CreativeService], data: JSONBody[schemas.CreativeCreate]
    ) -> schemas.CreativeOut:
        return creative_out(await creatives.create(data))

    @get("/{item_id:int}", summary="Get a creative", description="Another advertiser's creative is a 404.")
    async def get_creative(
        self, creatives: NamedDependency[CreativeService], item_id: ItemId
    ) -> schemas.CreativeOut:
        return creative_out(await creatives.get(item_id))

    @patch("/{item_id:int}", guards=[requires_writer], summary="Update a creative")
    async def update_creative(
        self,
        creatives: NamedDependency[CreativeService],
        item_id: ItemId,
        data: JSONBody[schemas.CreativeUpdate],
    ) -> schemas.CreativeOut:
        return creative_out(await creatives.update(data, item_id))

    @delete("/{item_id:int}", guards=[requires_writer], summary="Delete a creative")
    async def delete_creative(self, creatives: NamedDependency[CreativeService], item_id: ItemId) -> None:
        await creatives.delete(item_id)


class PlacementController(Controller):
    """Placements belong to the site, not to an advertiser: every role reads, only admins write."""

    path = "/placements"
    tags = ["placements"]  # noqa: RUF012
    dependencies = {"placements": service_provider(PlacementService)}  # noqa: RUF012

    @get(summary="List placements", description="Every role reads the site's placements.")
    async def list_placements(
        self,
        placements: NamedDependency[PlacementService],
        limit: Limit = 50,
        offset: Offset = 0,
        status: StatusFilter = None,
        page_type: TextFilter = None,
    ) -> schemas.PlacementPage:
        filters = _equal((Placement.status, status), (Placement.page_type, page_type))
        rows, total = await placements.page(filters, limit, offset)
        return schemas.PlacementPage(items=_all(rows, placement_out), total=total, limit=limit, offset=offset)

    @post(
        guards=[requires_admin], summary="Create a placement", description="Admin keys only; keys are unique."
    )
    async def create_placement(
        self, placements: NamedDependency[PlacementService], data: JSONBody[schemas.PlacementCreate]
    ) -> schemas.PlacementOut:
        return placement_out(await placements.create(data))

    @get("/{item_id:int}", summary="Get a placement")
    async def get_placement(
        self, placements: NamedDependency[PlacementService], item_id: ItemId
    ) -> schemas.PlacementOut:
        return placement_out(await placements.get(item_id))

    @patch(
        "/{item_id:int}",
        guards=[requires_admin],
        summary="Update a placement",
        description="Admin keys only.",
    )
    async def update_placement(
        self,
        placements: NamedDependency[PlacementService],
        item_id: ItemId,
        data: JSONBody[schemas.PlacementUpdate],
    ) -> schemas.PlacementOut:
        return placement_out(await placements.update(data, item_id))

    @delete(
        "/{item_id:int}",
        guards=[requires_admin],
        summary="Delete a placement",
        description="Admin keys only.",
    )
    async def delete_placement(self, placements: NamedDependency[PlacementService], item_id: ItemId) -> None:
        await placements.delete(item_id)


class ApiKeyController(Controller):
    path = "/keys"
    tags = ["keys"]  # noqa: RUF012
    guards = [requires_admin]  # noqa: RUF012
    dependencies = {"api_keys": service_provider(ApiKeyService)}  # noqa: RUF012

    @get(summary="List API keys", description="Admin keys only; secrets are never shown again.")
    async def list_keys(
        self,
        api_keys: NamedDependency[ApiKeyService],
        limit: Limit = 50,
        offset: Offset = 0,
        advertiser_id: OptionalId = None,
    ) -> schemas.ApiKeyPage:
        filters = _equal((ApiKey.advertiser_id, advertiser_id))
        rows, total = await api_keys.page(filters, limit, offset)
        return schemas.ApiKeyPage(items=_all(rows, api_key_out), total=total, limit=limit, offset=offset)

    @post(
        summary="Create an API key",
        description="The response holds the key itself, shown this once; only its digest is stored.",
    )
    async def create_key(
        self, api_keys: NamedDependency[ApiKeyService], data: JSONBody[schemas.ApiKeyCreate]
    ) -> schemas.ApiKeyCreated:
        key, row = await api_keys.create(data)
        return schemas.ApiKeyCreated(key=key, api_key=api_key_out(row))

    @delete(
        "/{item_id:int}",
        status_code=200,
        summary="Revoke an API key",
        description="Revoked keys stay listed; a key cannot revoke itself.",
    )
    async def revoke_key(
        self, api_keys: NamedDependency[ApiKeyService], item_id: ItemId
    ) -> schemas.ApiKeyOut:
        return api_key_out(await api_keys.revoke(item_id))


BEARER = SecurityScheme(type="http", scheme="bearer", description="adserve API key: adsk_<prefix>_<secret>")
ADMIN_COMPONENTS = Components(security_schemes={"apiKey": BEARER})

admin_router = Router(
    path="/admin/v1",
    route_handlers=[
        AdvertiserController,
        CampaignController,
        CreativeController,
        PlacementController,
        ApiKeyController,
        ModelController,
        UserController,
        JobsController,
        ReportsController,
        AnalyticsController,
        OpeController,
        AuditController,
    ],
    middleware=[DefineMiddleware(ApiKeyAuthMiddleware)],
    guards=[requires_staff],
    dependencies={
        "db_session": Provide(provide_db_session),
        "caller": Provide(provide_caller, sync_to_thread=False),
    },
    security=[{"apiKey": []}],
)

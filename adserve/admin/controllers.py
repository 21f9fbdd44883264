"""Admin API under /admin/v1: advertisers, campaigns, creatives, placements, API keys."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, Router, delete, get, patch, post
from litestar.di import Provide
from litestar.middleware import DefineMiddleware
from litestar.openapi.spec import Components, SecurityScheme
from litestar.params import Parameter

# Litestar reads handler annotations at runtime, so these imports cannot be typing-only.
from sqlalchemy.ext.asyncio import AsyncSession

from adserve.admin import schemas
from adserve.admin.analytics import AnalyticsController
from adserve.admin.audit import AuditController, audited_champion_change
from adserve.admin.auth import ApiKeyAuthMiddleware, Caller, requires_admin, requires_staff, requires_writer
from adserve.admin.ope import OpeController
from adserve.admin.operations import JobsController, ReportsController
from adserve.admin.services import (
    AdvertiserService,
    ApiKeyService,
    CampaignService,
    CreativeService,
    PlacementService,
)
from adserve.db.tables import Advertiser, ApiKey, Campaign, Creative, Placement
from adserve.events.erasure import ErasureResult
from adserve.learning.registry import Registry
from adserve.serving.controllers import erase

__all__ = ["admin_router", "campaign_out"]

MAX_ID = 2**63 - 1
ItemId = Annotated[int, Parameter(ge=1, le=MAX_ID, description="Row id")]
Limit = Annotated[int, Parameter(ge=1, le=500, description="Page size")]
Offset = Annotated[int, Parameter(ge=0, le=10**9, description="Rows to skip")]
OptionalId = Annotated[int | None, Parameter(ge=1, le=MAX_ID)]
StatusFilter = Literal["active", "paused", "archived"] | None
TextFilter = Annotated[str | None, Parameter(max_length=200, pattern=r"^[^\x00]*$")]


async def provide_db_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.sessionmaker() as session:
        yield session


def provide_caller(request: Request) -> Caller:
    return request.user


def _convert(row: Any, out_type: type) -> Any:
    return msgspec.convert(row, out_type, from_attributes=True)


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

    @get()
    async def list_advertisers(
        self,
        db_session: AsyncSession,
        caller: Caller,
        limit: Limit = 50,
        offset: Offset = 0,
        status: StatusFilter = None,
        name: TextFilter = None,
    ) -> schemas.AdvertiserPage:
        filters = []
        if status:
            filters.append(Advertiser.status == status)
        if name:
            filters.append(Advertiser.name.icontains(name, autoescape=True))
        rows, total = await AdvertiserService(db_session, caller).page(filters, limit, offset)
        items = [_convert(r, schemas.AdvertiserOut) for r in rows]
        return schemas.AdvertiserPage(items=items, total=total, limit=limit, offset=offset)

    @post()
    async def create_advertiser(
        self, db_session: AsyncSession, caller: Caller, data: schemas.AdvertiserCreate
    ) -> schemas.AdvertiserOut:
        return _convert(await AdvertiserService(db_session, caller).create(data), schemas.AdvertiserOut)

    @get("/{item_id:int}")
    async def get_advertiser(
        self, db_session: AsyncSession, caller: Caller, item_id: ItemId
    ) -> schemas.AdvertiserOut:
        return _convert(await AdvertiserService(db_session, caller).get(item_id), schemas.AdvertiserOut)

    @patch("/{item_id:int}")
    async def update_advertiser(
        self, db_session: AsyncSession, caller: Caller, item_id: ItemId, data: schemas.AdvertiserUpdate
    ) -> schemas.AdvertiserOut:
        row = await AdvertiserService(db_session, caller).update(item_id, data)
        return _convert(row, schemas.AdvertiserOut)

    @delete("/{item_id:int}")
    async def delete_advertiser(self, db_session: AsyncSession, caller: Caller, item_id: ItemId) -> None:
        await AdvertiserService(db_session, caller).delete(item_id)


class CampaignController(Controller):
    path = "/campaigns"
    tags = ["campaigns"]  # noqa: RUF012

    @get()
    async def list_campaigns(
        self,
        db_session: AsyncSession,
        caller: Caller,
        limit: Limit = 50,
        offset: Offset = 0,
        status: StatusFilter = None,
        pricing: Literal["cpc", "cpm"] | None = None,
        name: TextFilter = None,
        advertiser_id: OptionalId = None,
    ) -> schemas.CampaignPage:
        # archived campaigns (deleted after delivery) are listed only when asked for
        filters = [Campaign.status == status if status else Campaign.status != "archived"]
        if pricing:
            filters.append(Campaign.pricing == pricing)
        if name:
            filters.append(Campaign.name.icontains(name, autoescape=True))
        if advertiser_id:
            filters.append(Campaign.advertiser_id == advertiser_id)
        rows, total = await CampaignService(db_session, caller).page(filters, limit, offset)
        return schemas.CampaignPage(
            items=[campaign_out(r) for r in rows], total=total, limit=limit, offset=offset
        )

    @post(guards=[requires_writer])
    async def create_campaign(
        self,
        db_session: AsyncSession,
        caller: Caller,
        data: schemas.CampaignCreate,
        advertiser_id: Annotated[
            int | None, Parameter(ge=1, le=MAX_ID, description="Required for admin keys")
        ] = None,
    ) -> schemas.CampaignOut:
        return campaign_out(await CampaignService(db_session, caller).create(data, advertiser_id))

    @get("/{item_id:int}")
    async def get_campaign(
        self, db_session: AsyncSession, caller: Caller, item_id: ItemId
    ) -> schemas.CampaignOut:
        return campaign_out(await CampaignService(db_session, caller).get(item_id))

    @patch("/{item_id:int}", guards=[requires_writer])
    async def update_campaign(
        self, db_session: AsyncSession, caller: Caller, item_id: ItemId, data: schemas.CampaignUpdate
    ) -> schemas.CampaignOut:
        return campaign_out(await CampaignService(db_session, caller).update(item_id, data))

    @delete("/{item_id:int}", guards=[requires_writer])
    async def delete_campaign(self, db_session: AsyncSession, caller: Caller, item_id: ItemId) -> None:
        await CampaignService(db_session, caller).delete(item_id)


class CreativeController(Controller):
    path = "/creatives"
    tags = ["creatives"]  # noqa: RUF012

    @get()
    async def list_creatives(
        self,
        db_session: AsyncSession,
        caller: Caller,
        limit: Limit = 50,
        offset: Offset = 0,
        status: StatusFilter = None,
        campaign_id: OptionalId = None,
        category: TextFilter = None,
    ) -> schemas.CreativePage:
        filters = []
        if status:
            filters.append(Creative.status == status)
        if campaign_id:
            filters.append(Creative.campaign_id == campaign_id)
        if category:
            filters.append(Creative.category == category)
        rows, total = await CreativeService(db_session, caller).page(filters, limit, offset)
        items = [_convert(r, schemas.CreativeOut) for r in rows]
        return schemas.CreativePage(items=items, total=total, limit=limit, offset=offset)

    @post(guards=[requires_writer])
    async def create_creative(
        self, db_session: AsyncSession, caller: Caller, data: schemas.CreativeCreate
    ) -> schemas.CreativeOut:
        return _convert(await CreativeService(db_session, caller).create(data), schemas.CreativeOut)

    @get("/{item_id:int}")
    async def get_creative(
        self, db_session: AsyncSession, caller: Caller, item_id: ItemId
    ) -> schemas.CreativeOut:
        return _convert(await CreativeService(db_session, caller).get(item_id), schemas.CreativeOut)

    @patch("/{item_id:int}", guards=[requires_writer])
    async def update_creative(
        self, db_session: AsyncSession, caller: Caller, item_id: ItemId, data: schemas.CreativeUpdate
    ) -> schemas.CreativeOut:
        return _convert(await CreativeService(db_session, caller).update(item_id, data), schemas.CreativeOut)

    @delete("/{item_id:int}", guards=[requires_writer])
    async def delete_creative(self, db_session: AsyncSession, caller: Caller, item_id: ItemId) -> None:
        await CreativeService(db_session, caller).delete(item_id)


class PlacementController(Controller):
    """Placements belong to the site, not to an advertiser: every role reads, only admins write."""

    path = "/placements"
    tags = ["placements"]  # noqa: RUF012

    @get()
    async def list_placements(
        self,
        db_session: AsyncSession,
        caller: Caller,
        limit: Limit = 50,
        offset: Offset = 0,
        status: StatusFilter = None,
        page_type: TextFilter = None,
    ) -> schemas.PlacementPage:
        filters = []
        if status:
            filters.append(Placement.status == status)
        if page_type:
            filters.append(Placement.page_type == page_type)
        rows, total = await PlacementService(db_session, caller).page(filters, limit, offset)
        items = [_convert(r, schemas.PlacementOut) for r in rows]
        return schemas.PlacementPage(items=items, total=total, limit=limit, offset=offset)

    @post(guards=[requires_admin])
    async def create_placement(
        self, db_session: AsyncSession, caller: Caller, data: schemas.PlacementCreate
    ) -> schemas.PlacementOut:
        return _convert(await PlacementService(db_session, caller).create(data), schemas.PlacementOut)

    @get("/{item_id:int}")
    async def get_placement(
        self, db_session: AsyncSession, caller: Caller, item_id: ItemId
    ) -> schemas.PlacementOut:
        return _convert(await PlacementService(db_session, caller).get(item_id), schemas.PlacementOut)

    @patch("/{item_id:int}", guards=[requires_admin])
    async def update_placement(
        self, db_session: AsyncSession, caller: Caller, item_id: ItemId, data: schemas.PlacementUpdate
    ) -> schemas.PlacementOut:
        return _convert(
            await PlacementService(db_session, caller).update(item_id, data), schemas.PlacementOut
        )

    @delete("/{item_id:int}", guards=[requires_admin])
    async def delete_placement(self, db_session: AsyncSession, caller: Caller, item_id: ItemId) -> None:
        await PlacementService(db_session, caller).delete(item_id)


class ApiKeyController(Controller):
    path = "/keys"
    tags = ["keys"]  # noqa: RUF012
    guards = [requires_admin]  # noqa: RUF012

    @get()
    async def list_keys(
        self,
        db_session: AsyncSession,
        caller: Caller,
        limit: Limit = 50,
        offset: Offset = 0,
        advertiser_id: OptionalId = None,
    ) -> schemas.ApiKeyPage:
        filters = [ApiKey.advertiser_id == advertiser_id] if advertiser_id else []
        rows, total = await ApiKeyService(db_session, caller).page(filters, limit, offset)
        items = [_convert(r, schemas.ApiKeyOut) for r in rows]
        return schemas.ApiKeyPage(items=items, total=total, limit=limit, offset=offset)

    @post()
    async def create_key(
        self, db_session: AsyncSession, caller: Caller, data: schemas.ApiKeyCreate
    ) -> schemas.ApiKeyCreated:
        key, row = await ApiKeyService(db_session, caller).create(data)
        return schemas.ApiKeyCreated(key=key, api_key=_convert(row, schemas.ApiKeyOut))

    @delete("/{item_id:int}", status_code=200)
    async def revoke_key(
        self, db_session: AsyncSession, caller: Caller, item_id: ItemId
    ) -> schemas.ApiKeyOut:
        return _convert(await ApiKeyService(db_session, caller).revoke(item_id), schemas.ApiKeyOut)


ModelKindParam = Literal["interest", "bandit"]
VersionParam = Annotated[str, Parameter(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]


class ModelController(Controller):
    """The model registry: which interest model and bandit policy serve; promote and roll back."""

    path = "/models"
    tags = ["models"]  # noqa: RUF012
    guards = [requires_admin]  # noqa: RUF012

    @get()
    async def list_models(
        self,
        db_session: AsyncSession,
        limit: Limit = 50,
        offset: Offset = 0,
        kind: ModelKindParam | None = None,
    ) -> schemas.ModelVersionPage:
        rows = await Registry(db_session).list(kind, limit, offset)
        items = [_convert(r, schemas.ModelVersionOut) for r in rows]
        return schemas.ModelVersionPage(items=items, limit=limit, offset=offset)

    @post("/{kind:str}/{version:str}/promote", status_code=200)
    async def promote_model(
        self,
        db_session: AsyncSession,
        caller: Caller,
        kind: ModelKindParam,
        version: VersionParam,
        data: schemas.ModelChange,
    ) -> schemas.ModelVersionOut:
        row = await audited_champion_change(
            db_session, caller, kind, "promote", lambda registry: registry.promote(kind, version, data.reason)
        )
        return _convert(row, schemas.ModelVersionOut)

    @post("/{kind:str}/rollback", status_code=200)
    async def rollback_model(
        self, db_session: AsyncSession, caller: Caller, kind: ModelKindParam, data: schemas.ModelChange
    ) -> schemas.ModelVersionOut:
        row = await audited_champion_change(
            db_session, caller, kind, "rollback", lambda registry: registry.rollback(kind, data.reason)
        )
        return _convert(row, schemas.ModelVersionOut)


class UserController(Controller):
    """Privacy operations on end users, by the site's user id (hashed before use, never stored)."""

    path = "/users"
    tags = ["privacy"]  # noqa: RUF012
    guards = [requires_admin]  # noqa: RUF012

    @delete(
        "/{user_id:str}",
        status_code=200,
    )
    async def erase_user_as_admin(
        self,
        request: Request,
        user_id: Annotated[str, Parameter(min_length=1, max_length=200, pattern=r"^[^\x00]+$")],
    ) -> ErasureResult:
        return await erase(request, user_id)


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

"""Admin services: catalogue CRUD scoped to the caller's advertiser, and API keys.

The same services serve the HTTP handlers, the CLI and scheduled jobs. A `Caller` of role manager
or viewer sees only rows of its own advertiser; anything else is reported as not found (404), so
another advertiser's ids reveal nothing. `caller=None` means the system itself (CLI, jobs, demo).

Every write adds its audit row (adserve/admin/audit.py) in the transaction of the change. A
campaign with delivery (billed spend or an impression) is archived, not deleted, so the rollups
and reports keep its spend; an advertiser with such a campaign cannot be deleted at all.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from advanced_alchemy.filters import LimitOffset
from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from sqlalchemy import exists, or_, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from adserve.admin import schemas
from adserve.admin.audit import record, snapshot
from adserve.admin.auth import Caller, Role, generate_key
from adserve.db.tables import Advertiser, ApiKey, Campaign, Creative, Impression, Placement
from adserve.errors import Conflict, InvalidInput, NotFound

if TYPE_CHECKING:
    from sqlalchemy import ColumnElement, Exists
    from sqlalchemy.ext.asyncio import AsyncSession

    from adserve.admin.audit import Action

__all__ = [
    "AdvertiserService",
    "ApiKeyService",
    "CampaignService",
    "CreativeService",
    "PlacementService",
    "notify_catalog_changed",
]

ModelT = TypeVar("ModelT", Advertiser, Campaign, Creative, Placement, ApiKey)

CATALOG_CHANNEL = "adserve_catalog"
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)


async def notify_catalog_changed(session: AsyncSession) -> None:
    """Serving processes LISTEN on this channel and refresh their snapshot; delivered on commit."""
    await session.execute(text(f"NOTIFY {CATALOG_CHANNEL}"))


class CatalogService(Generic[ModelT]):
    """CRUD over one table, scoped to the caller's advertiser where the table has one."""

    model: ClassVar[type]
    scoped: ClassVar[bool] = True
    notifies_catalog: ClassVar[bool] = True

    def __init__(self, session: AsyncSession, caller: Caller | None) -> None:
        self.session = session
        self.caller = caller
        repo_type = type(
            f"{self.model.__name__}Repository", (SQLAlchemyAsyncRepository,), {"model_type": self.model}
        )
        self.repo: SQLAlchemyAsyncRepository = repo_type(session=session, auto_commit=False)

    def _scope(self) -> list[ColumnElement[bool]]:
        if not self.scoped or self.caller is None or self.caller.is_admin:
            return []
        return [self.model.advertiser_id == self.caller.advertiser_id]

    async def page(
        self, filters: list[ColumnElement[bool]], limit: int, offset: int
    ) -> tuple[list[ModelT], int]:
        return await self.repo.list_and_count(
            LimitOffset(limit=limit, offset=offset),
            *self._scope(),
            *filters,
            order_by=[(self.model.id, False)],
        )

    async def get(self, item_id: int) -> ModelT:
        item = await self.repo.get_one_or_none(self.model.id == item_id, *self._scope())
        if item is None:
            raise NotFound(f"{self.model.__tablename__[:-1]} {item_id} not found")
        return item

    async def _commit(self) -> None:
        if self.notifies_catalog:
            await notify_catalog_changed(self.session)
        try:
            await self.session.commit()
        except IntegrityError as exc:
            await self.session.rollback()
            raise Conflict(_integrity_message(exc)) from exc

    def _audit(
        self, action: Action, item: ModelT, before: dict[str, Any] | None, after: ModelT | None
    ) -> None:
        record(
            self.session,
            self.caller,
            action,
            self.model.__tablename__[:-1],
            item.id,
            item.id if self.model is Advertiser else getattr(item, "advertiser_id", None),
            before,
            snapshot(after) if after is not None else None,
        )

    async def _flush(self, item: ModelT) -> None:
        """Writes the change and reads back what the database set (ids, defaults, updated_at)."""
        try:
            await self.session.flush()
        except IntegrityError as exc:
            await self.session.rollback()
            raise Conflict(_integrity_message(exc)) from exc
        await self.session.refresh(item)

    async def _insert(self, item: ModelT) -> ModelT:
        self.session.add(item)
        await self._flush(item)
        self._audit("create", item, None, item)
        await self._commit()
        return item

    async def _apply(self, item: ModelT, values: dict[str, Any], action: Action = "update") -> ModelT:
        before = snapshot(item)
        for name, value in values.items():
            setattr(item, name, value)
        await self._flush(item)
        self._audit(action, item, before, item)
        await self._commit()
        return item

    async def delete(self, item_id: int) -> None:
        await self._remove(await self.get(item_id))

    async def _remove(self, item: ModelT) -> None:
        self._audit("delete", item, snapshot(item), None)
        await self.session.delete(item)
        await self._commit()


def _integrity_message(exc: IntegrityError) -> str:
    """A safe summary: the constraint name says what clashed without echoing stored values."""
    constraint = getattr(getattr(exc.orig, "__cause__", None), "constraint_name", None)
    return (
        f"conflicts with an existing row ({constraint})" if constraint else "conflicts with an existing row"
    )


def _set_fields(body: msgspec.Struct) -> dict[str, Any]:
    """The fields a PATCH body actually carries (UNSET ones are left alone)."""
    return {
        name: getattr(body, name)
        for name in body.__struct_fields__
        if getattr(body, name) is not msgspec.UNSET
    }


def _delivered(*where: ColumnElement[bool]) -> Exists:
    """Some campaign matching `where` has delivery: billed spend, or an impression (billed or not).
    Raw impressions are kept for good (retention purges behaviour events only), so none is missed."""
    return exists().where(
        *where, or_(Campaign.spend_total > 0, exists().where(Impression.campaign_id == Campaign.id))
    )


class AdvertiserService(CatalogService[Advertiser]):
    model = Advertiser
    scoped = False

    async def create(self, body: schemas.AdvertiserCreate) -> Advertiser:
        return await self._insert(Advertiser(name=body.name, status=body.status))

    async def update(self, item_id: int, body: schemas.AdvertiserUpdate) -> Advertiser:
        return await self._apply(await self.get(item_id), _set_fields(body))

    async def delete(self, item_id: int) -> None:
        """Deleting an advertiser deletes its campaigns (ON DELETE CASCADE), and with them the
        spend of any that delivered; such an advertiser is archived instead (PATCH status)."""
        advertiser = await self.get(item_id)
        if await self.session.scalar(select(_delivered(Campaign.advertiser_id == item_id))):
            raise Conflict(
                f"advertiser {item_id} has campaigns with delivery, which reports must keep; "
                "set its status to archived and revoke its keys instead"
            )
        await self._remove(advertiser)


class PlacementService(CatalogService[Placement]):
    model = Placement
    scoped = False

    async def create(self, body: schemas.PlacementCreate) -> Placement:
        return await self._insert(Placement(**msgspec.structs.asdict(body)))

    async def update(self, item_id: int, body: schemas.PlacementUpdate) -> Placement:
        return await self._apply(await self.get(item_id), _set_fields(body))


def _check_time(name: str, value: datetime | None) -> None:
    if value is None:
        return
    if value.tzinfo is None:
        raise InvalidInput(f"{name} must include a UTC offset, e.g. 2026-01-01T00:00:00Z")
    if not EARLIEST <= value <= LATEST:
        raise InvalidInput(f"{name} must be between 2000 and 2200")


async def _check_timezone(session: AsyncSession, name: str) -> None:
    """Serving reads the zone with Python's zoneinfo, the writer and the jobs with Postgres's
    ``AT TIME ZONE``: both must know it. Some names only one of them knows (``posix/UTC`` is in
    the system's tz database but not in the embedded Postgres's), and a stored name Postgres
    rejects would fail every statement that reads the row."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidInput(f"timezone {name!r} is not an IANA time zone name") from exc
    try:
        async with session.begin_nested():  # a savepoint: the rejected name must not end the transaction
            await session.execute(text("SELECT now() AT TIME ZONE :name"), {"name": name})
    except DBAPIError as exc:
        raise InvalidInput(
            f"timezone {name!r} is not a time zone the database knows; use an IANA name"
        ) from exc


def _check_campaign(values: dict[str, Any]) -> None:
    _check_time("start_at", values["start_at"])
    _check_time("end_at", values["end_at"])
    if values["start_at"] and values["end_at"] and values["end_at"] <= values["start_at"]:
        raise InvalidInput("end_at must be after start_at")


def _campaign_columns(fields: dict[str, Any]) -> dict[str, Any]:
    """Maps schema fields to columns: targeting is JSONB, the frequency cap two columns."""
    columns = dict(fields)
    if "targeting" in columns:
        columns["targeting"] = msgspec.to_builtins(columns["targeting"])
    if "frequency_cap" in columns:
        cap = columns.pop("frequency_cap")
        columns["frequency_cap"] = cap.impressions if cap else None
        columns["frequency_window_s"] = cap.window_s if cap else None
    return columns


class CampaignService(CatalogService[Campaign]):
    model = Campaign

    async def create(self, body: schemas.CampaignCreate, advertiser_id: int | None) -> Campaign:
        """Managers create for their own advertiser; admins must name one (query parameter)."""
        if self.caller is not None and not self.caller.is_admin:
            advertiser_id = self.caller.advertiser_id
        if advertiser_id is None:
            raise InvalidInput("advertiser_id query parameter is required for admin keys")
        await AdvertiserService(self.session, None).get(advertiser_id)
        fields = msgspec.structs.asdict(body)
        _check_campaign(fields)
        await _check_timezone(self.session, body.timezone)
        return await self._insert(Campaign(advertiser_id=advertiser_id, **_campaign_columns(fields)))

    async def update(self, item_id: int, body: schemas.CampaignUpdate) -> Campaign:
        campaign = await self.get(item_id)
        changes = _set_fields(body)
        merged = {
            "start_at": changes.get("start_at", campaign.start_at),
            "end_at": changes.get("end_at", campaign.end_at),
        }
        _check_campaign(merged)
        if "timezone" in changes:
            await _check_timezone(self.session, changes["timezone"])
        return await self._apply(campaign, _campaign_columns(changes))

    async def delete(self, item_id: int) -> None:
        """A campaign with delivery is archived (never served again, hidden from default lists)
        so the rollups and reports keep its spend; one without delivery is deleted."""
        campaign = await self.get(item_id)
        if not await self.session.scalar(select(_delivered(Campaign.id == item_id))):
            await self._remove(campaign)
        elif campaign.status != "archived":
            await self._apply(campaign, {"status": "archived"}, action="archive")


class CreativeService(CatalogService[Creative]):
    model = Creative

    async def create(self, body: schemas.CreativeCreate) -> Creative:
        campaign = await CampaignService(self.session, self.caller).get(body.campaign_id)
        fields = msgspec.structs.asdict(body)
        return await self._insert(Creative(advertiser_id=campaign.advertiser_id, **fields))

    async def update(self, item_id: int, body: schemas.CreativeUpdate) -> Creative:
        return await self._apply(await self.get(item_id), _set_fields(body))


class ApiKeyService(CatalogService[ApiKey]):
    model = ApiKey
    scoped = False
    notifies_catalog = False

    async def create(self, body: schemas.ApiKeyCreate) -> tuple[str, ApiKey]:
        role = Role(body.role)
        if role in (Role.MANAGER, Role.VIEWER) and body.advertiser_id is None:
            raise InvalidInput(f"a {role} key needs an advertiser_id")
        if role in (Role.ADMIN, Role.SITE) and body.advertiser_id is not None:
            raise InvalidInput(f"a {role} key is not tied to an advertiser")
        if body.advertiser_id is not None:
            await AdvertiserService(self.session, None).get(body.advertiser_id)
        key, prefix, digest = generate_key()
        row = ApiKey(
            prefix=prefix, digest=digest, role=role.value, advertiser_id=body.advertiser_id, name=body.name
        )
        return key, await self._insert(row)

    async def revoke(self, item_id: int) -> ApiKey:
        if self.caller is not None and self.caller.key_id == item_id:
            raise Conflict("a key cannot revoke itself; revoke it with another admin key")
        row = await self.get(item_id)
        if row.revoked_at is None:
            before = snapshot(row)
            await self.session.execute(
                update(ApiKey).where(ApiKey.id == item_id).values(revoked_at=datetime.now(UTC))
            )
            await self.session.refresh(row)
            self._audit("revoke", row, before, row)
            await self._commit()
        return row

    async def count_admins(self) -> int:
        rows = await self.session.execute(
            select(ApiKey.id).where(ApiKey.role == Role.ADMIN.value, ApiKey.revoked_at.is_(None))
        )
        return len(rows.all())

"""Admin services: catalogue CRUD scoped to the caller's advertiser, and API keys.

Each service is advanced-alchemy's `SQLAlchemyAsyncRepositoryService` with its repository nested,
under one base, `AdminService`, that holds the rules every resource shares:

- Tenancy is one hook (`AdminService.visible_rows`, the repository's base statement): a `Caller`
  of role manager or viewer sees only rows of its own advertiser; anything else is reported as not
  found (404), so another advertiser's ids reveal nothing. `caller=None` means the system itself
  (CLI, jobs, demo).
- Every write adds its audit row (adserve/admin/audit.py) in the transaction of the change, and
  tells serving processes that the catalogue changed (adserve/db/catalog_channel.py).

The same services serve the HTTP handlers, the CLI and scheduled jobs. A campaign with delivery
(billed spend or an impression) is archived, not deleted, so the rollups and reports keep its
spend; an advertiser with such a campaign cannot be deleted at all.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from advanced_alchemy.filters import LimitOffset
from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from advanced_alchemy.service import SQLAlchemyAsyncRepositoryService
from sqlalchemy import exists, or_, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from adserve.admin import schemas
from adserve.admin.audit import record, snapshot
from adserve.admin.auth import Caller, Role, generate_key
from adserve.db.catalog_channel import notify_catalog_changed
from adserve.db.tables import Advertiser, ApiKey, Campaign, Creative, Impression, Placement
from adserve.errors import Conflict, InvalidInput, NotFound

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from sqlalchemy import ColumnElement, Exists, Select
    from sqlalchemy.ext.asyncio import AsyncSession

    from adserve.admin.audit import Action, Resource

__all__ = [
    "AdminService",
    "AdvertiserService",
    "ApiKeyService",
    "CampaignService",
    "CreativeService",
    "PlacementService",
]

ModelT = TypeVar("ModelT", Advertiser, Campaign, Creative, Placement, ApiKey)

EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)


class AdminService(SQLAlchemyAsyncRepositoryService[ModelT, SQLAlchemyAsyncRepository[ModelT]]):
    """A repository service over one catalogue table, seen through the caller's tenancy.

    `create` takes a request body (its `to_model_on_create` shapes the row), `update` a PATCH body
    and the id, `delete` the id; each writes its audit row, notifies serving and commits. A clash
    with a constraint rolls back and is a `Conflict` (409) naming the constraint, never a value.
    """

    tenant_scoped: ClassVar[bool] = True  # rows belong to an advertiser (an ``advertiser_id`` column)
    notifies_catalog: ClassVar[bool] = True

    def __init__(self, session: AsyncSession, caller: Caller | None = None) -> None:
        self.session = session
        self.caller = caller
        # wrap_exceptions=False: an IntegrityError reaches `_conflicts`, which names the constraint.
        super().__init__(
            session=session, statement=self.visible_rows(caller), auto_commit=False, wrap_exceptions=False
        )

    @classmethod
    def visible_rows(cls, caller: Caller | None) -> Select[Any]:
        """The tenancy hook: the rows `caller` may read, update or delete. A manager or viewer sees
        its own advertiser's rows only; admins and the system (`caller=None`) see all."""
        model: Any = cls.repository_type.model_type
        statement = select(model)
        if cls.tenant_scoped and caller is not None and not caller.is_admin:
            statement = statement.where(model.advertiser_id == caller.advertiser_id)
        return statement

    @property
    def resource(self) -> Resource:
        """The audit trail's name of a row: ``campaign`` for the ``campaigns`` table."""
        return self.model_type.__tablename__[:-1]  # type: ignore[no-any-return]

    async def page(
        self, filters: list[ColumnElement[bool]], limit: int, offset: int
    ) -> tuple[Sequence[ModelT], int]:
        """One page of the visible rows matching `filters`, by id, and how many match in all."""
        return await self.get_many_and_count(
            LimitOffset(limit=limit, offset=offset), *filters, order_by=[(self.model_type.id, False)]
        )

    async def get(self, item_id: int, **_: Any) -> ModelT:  # type: ignore[override]
        item = await self.get_one_or_none(self.model_type.id == item_id)
        if item is None:
            raise NotFound(f"{self.resource} {item_id} not found")
        return item

    async def create(self, data: Any, **kwargs: Any) -> ModelT:  # type: ignore[override]
        async with self._conflicts():
            item = await super().create(data, **kwargs)
        return await self._commit("create", item, None)

    async def update(self, data: Any, item_id: int, **_: Any) -> ModelT:  # type: ignore[override]
        """Applies the fields a PATCH body carries (its UNSET fields are left as they are)."""
        item = await self.get(item_id)
        changes = await self.to_model_on_update(
            _set_fields(data) if isinstance(data, msgspec.Struct) else data
        )
        return await self._change(item, changes)

    async def delete(self, item_id: int, **_: Any) -> ModelT:  # type: ignore[override]
        item = await self.get(item_id)
        self._audit("delete", item, snapshot(item), None)
        async with self._conflicts():
            await self.repository.delete(item_id)
        await self._commit_or_conflict()
        return item

    async def _change(self, item: ModelT, changes: dict[str, Any], action: Action = "update") -> ModelT:
        before = snapshot(item)
        for name, value in changes.items():
            setattr(item, name, value)
        async with self._conflicts():
            item = await self.repository.update(item)
        return await self._commit(action, item, before)

    def _audit(
        self, action: Action, item: ModelT, before: dict[str, Any] | None, after: ModelT | None
    ) -> None:
        advertiser_id = item.id if isinstance(item, Advertiser) else getattr(item, "advertiser_id", None)
        after_row = snapshot(after) if after is not None else None
        record(self.session, self.caller, action, self.resource, item.id, advertiser_id, before, after_row)

    async def _commit(self, action: Action, item: ModelT, before: dict[str, Any] | None) -> ModelT:
        self._audit(action, item, before, item)
        await self._commit_or_conflict()
        return item

    async def _commit_or_conflict(self) -> None:
        if self.notifies_catalog:
            await notify_catalog_changed(self.session)
        async with self._conflicts():
            await self.session.commit()

    @asynccontextmanager
    async def _conflicts(self) -> AsyncIterator[None]:
        try:
            yield
        except IntegrityError as exc:
            await self.session.rollback()
            raise Conflict(_integrity_message(exc)) from exc


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


class AdvertiserService(AdminService[Advertiser]):
    class Repo(SQLAlchemyAsyncRepository[Advertiser]):
        model_type = Advertiser

    repository_type = Repo
    tenant_scoped = False  # the advertisers API is for admins only

    async def delete(self, item_id: int, **_: Any) -> Advertiser:
        """Deleting an advertiser deletes its campaigns (ON DELETE CASCADE), and with them the
        spend of any that delivered; such an advertiser is archived instead (PATCH status)."""
        await self.get(item_id)
        if await self.session.scalar(select(_delivered(Campaign.advertiser_id == item_id))):
            raise Conflict(
                f"advertiser {item_id} has campaigns with delivery, which reports must keep; "
                "set its status to archived and revoke its keys instead"
            )
        return await super().delete(item_id)


class PlacementService(AdminService[Placement]):
    """Placements belong to the site, not to an advertiser: every role reads them."""

    class Repo(SQLAlchemyAsyncRepository[Placement]):
        model_type = Placement

    repository_type = Repo
    tenant_scoped = False


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


class CampaignService(AdminService[Campaign]):
    class Repo(SQLAlchemyAsyncRepository[Campaign]):
        model_type = Campaign

    repository_type = Repo

    async def create(  # type: ignore[override]
        self, data: schemas.CampaignCreate, advertiser_id: int | None = None
    ) -> Campaign:
        """Managers create for their own advertiser; admins must name one (query parameter)."""
        if self.caller is not None and not self.caller.is_admin:
            advertiser_id = self.caller.advertiser_id
        if advertiser_id is None:
            raise InvalidInput("advertiser_id query parameter is required for admin keys")
        await AdvertiserService(self.session).get(advertiser_id)
        fields = msgspec.structs.asdict(data)
        _check_campaign(fields)
        await _check_timezone(self.session, data.timezone)
        return await super().create(Campaign(advertiser_id=advertiser_id, **_campaign_columns(fields)))

    async def update(self, data: schemas.CampaignUpdate, item_id: int, **_: Any) -> Campaign:  # type: ignore[override]
        campaign = await self.get(item_id)
        changes = _set_fields(data)
        merged = {
            "start_at": changes.get("start_at", campaign.start_at),
            "end_at": changes.get("end_at", campaign.end_at),
        }
        _check_campaign(merged)
        if "timezone" in changes:
            await _check_timezone(self.session, changes["timezone"])
        return await self._change(campaign, _campaign_columns(changes))

    async def delete(self, item_id: int, **_: Any) -> Campaign:
        """A campaign with delivery is archived (never served again, hidden from default lists)
        so the rollups and reports keep its spend; one without delivery is deleted."""
        campaign = await self.get(item_id)
        if not await self.session.scalar(select(_delivered(Campaign.id == item_id))):
            return await super().delete(item_id)
        if campaign.status == "archived":
            return campaign
        return await self._change(campaign, {"status": "archived"}, action="archive")


class CreativeService(AdminService[Creative]):
    class Repo(SQLAlchemyAsyncRepository[Creative]):
        model_type = Creative

    repository_type = Repo

    async def to_model_on_create(self, data: Any) -> Any:
        """A creative belongs to its campaign's advertiser; the campaign must be the caller's."""
        campaign = await CampaignService(self.session, self.caller).get(data.campaign_id)
        return Creative(advertiser_id=campaign.advertiser_id, **msgspec.structs.asdict(data))


class ApiKeyService(AdminService[ApiKey]):
    class Repo(SQLAlchemyAsyncRepository[ApiKey]):
        model_type = ApiKey

    repository_type = Repo
    tenant_scoped = False  # the keys API is for admins only
    notifies_catalog = False

    async def create(self, data: schemas.ApiKeyCreate, **_: Any) -> tuple[str, ApiKey]:  # type: ignore[override]
        """A new key and its row; the key itself is shown once and never stored."""
        role = Role(data.role)
        if role in (Role.MANAGER, Role.VIEWER) and data.advertiser_id is None:
            raise InvalidInput(f"a {role} key needs an advertiser_id")
        if role in (Role.ADMIN, Role.SITE) and data.advertiser_id is not None:
            raise InvalidInput(f"a {role} key is not tied to an advertiser")
        if data.advertiser_id is not None:
            await AdvertiserService(self.session).get(data.advertiser_id)
        key, prefix, digest = generate_key()
        row = ApiKey(
            prefix=prefix, digest=digest, role=role.value, advertiser_id=data.advertiser_id, name=data.name
        )
        return key, await super().create(row)

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
            await self._commit("revoke", row, before)
        return row

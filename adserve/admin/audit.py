"""The audit trail of admin writes: every create, update, delete, archive and revocation of the
catalogue and keys, and every model promotion and rollback, adds an `audit_log` row in the
transaction of the change. A row says who (the API key's id and role; ``system`` for the CLI and
jobs), what (resource, id, action), when, and the row before and after as JSON. Secrets never
reach it: keys are stored as a digest, and the snapshot leaves even that out.

``GET /admin/v1/audit`` reads the trail, newest first, scoped like every admin resource: a manager
or viewer key sees its own advertiser's rows only, admins see all.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
from litestar import Controller, get
from litestar.params import FromQuery, QueryParameter
from msgspec import Struct
from sqlalchemy import func, inspect, select

from adserve.admin.params import MAX_ID, CallerDep, DbSession, Limit, Offset
from adserve.db.tables import AuditEntry
from adserve.errors import NotFound
from adserve.learning.registry import ModelKind, Registry

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from sqlalchemy.ext.asyncio import AsyncSession

    from adserve.admin.auth import Caller
    from adserve.db.tables import ModelVersion

__all__ = [
    "SYSTEM_ROLE",
    "AuditController",
    "AuditEntryOut",
    "AuditPage",
    "audited_champion_change",
    "record",
    "snapshot",
]

SYSTEM_ROLE = "system"  # no API key: the CLI, jobs and the demo's seeding
# A key's digest is not the key, but it is all an attacker would need to test guesses offline.
SECRET_COLUMNS = frozenset({"digest"})

Action = Literal["create", "update", "delete", "archive", "revoke", "promote", "rollback"]
Resource = Literal["advertiser", "campaign", "creative", "placement", "api_key", "model"]


def snapshot(row: Any) -> dict[str, Any]:
    """The row's columns as JSON values (times as ISO 8601 text), secret columns left out."""
    columns = inspect(row).mapper.column_attrs
    return msgspec.to_builtins(
        {column.key: getattr(row, column.key) for column in columns if column.key not in SECRET_COLUMNS}
    )


def record(
    session: AsyncSession,
    caller: Caller | None,
    action: Action,
    resource: Resource,
    resource_id: object,
    advertiser_id: int | None,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
) -> AuditEntry:
    """Adds the audit row to the session: it commits (or rolls back) with the change itself."""
    entry = AuditEntry(
        key_id=caller.key_id if caller else None,
        role=caller.role.value if caller else SYSTEM_ROLE,
        advertiser_id=advertiser_id,
        resource=resource,
        resource_id=str(resource_id),
        action=action,
        before=before,
        after=after,
    )
    session.add(entry)
    return entry


async def audited_champion_change(
    session: AsyncSession,
    caller: Caller | None,
    kind: ModelKind,
    action: Literal["promote", "rollback"],
    change: Callable[[Registry], Awaitable[ModelVersion]],
) -> ModelVersion:
    """Runs a registry promotion or rollback with its audit row (resource ``model``, id = the kind).

    The registry commits inside `change`, so the row is added before it and commits with the
    change (a refused change commits neither); the new champion is filled in right after."""
    registry = Registry(session)
    current = await registry.champion(kind)
    before = {"champion": snapshot(current) if current else None}
    entry = record(session, caller, action, "model", kind, None, before, None)
    champion = await change(registry)
    entry.after = {"champion": snapshot(champion)}
    await session.commit()
    return champion


class AuditEntryOut(Struct, kw_only=True):
    id: int
    at: datetime
    key_id: int | None  # the API key that made the change; null for the CLI and jobs
    role: str  # admin | manager | viewer | site | system
    advertiser_id: int | None
    resource: str
    resource_id: str
    action: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None


class AuditPage(Struct, kw_only=True):
    items: list[AuditEntryOut]
    total: int
    limit: int
    offset: int


class AuditController(Controller):
    """Who changed what and when, newest first."""

    path = "/audit"
    tags = ["audit"]  # noqa: RUF012

    @get(
        summary="The audit trail",
        description="Admin writes and model changes, newest first; managers and viewers see their advertiser's.",
    )
    async def list_audit(
        self,
        db_session: DbSession,
        caller: CallerDep,
        limit: Limit = 50,
        offset: Offset = 0,
        resource: FromQuery[Resource | None] = None,
        resource_id: Annotated[str | None, QueryParameter(max_length=100, pattern=r"^[^\x00]*$")] = None,
        action: FromQuery[Action | None] = None,
        advertiser_id: Annotated[
            int | None, QueryParameter(ge=1, le=MAX_ID, description="admins: any; others: their own")
        ] = None,
        key_id: Annotated[int | None, QueryParameter(ge=1, le=MAX_ID)] = None,
    ) -> AuditPage:
        if not caller.is_admin:
            if advertiser_id is not None and advertiser_id != caller.advertiser_id:
                raise NotFound(f"advertiser {advertiser_id} not found")
            advertiser_id = caller.advertiser_id
        filters = [
            column == value
            for column, value in (
                (AuditEntry.advertiser_id, advertiser_id),
                (AuditEntry.resource, resource),
                (AuditEntry.resource_id, resource_id),
                (AuditEntry.action, action),
                (AuditEntry.key_id, key_id),
            )
            if value is not None
        ]
        statement = (
            select(AuditEntry, func.count().over().label("total"))
            .where(*filters)
            .order_by(AuditEntry.id.desc())
            .limit(limit)
            .offset(offset)
        )
        rows = (await db_session.execute(statement)).all()
        items = [msgspec.convert(entry, AuditEntryOut, from_attributes=True) for entry, _ in rows]
        if rows:
            total = rows[0].total
        else:  # past the last page: the window count has no row to ride on
            total = await db_session.scalar(select(func.count()).select_from(AuditEntry).where(*filters))
        return AuditPage(items=items, total=total, limit=limit, offset=offset)

"""The model registry: `model_versions` rows say which version of each kind is champion.

Promotion makes a version champion and retires the previous one in one transaction (a partial
unique index allows one champion per kind); rollback re-promotes the most recently retired
champion. Every change records its reason.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import select, update

from adserve.db.engine import json_safe
from adserve.db.tables import ModelVersion
from adserve.errors import Conflict, NotFound

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

__all__ = ["ModelKind", "Registry"]

ModelKind = Literal["interest", "bandit"]


class Registry:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def register(
        self,
        kind: ModelKind,
        version: str,
        path: str,
        metrics: dict[str, Any],
        status: str = "candidate",
        reason: str | None = None,
    ) -> ModelVersion:
        row = ModelVersion(
            kind=kind, version=version, path=path, metrics=json_safe(metrics), status=status, reason=reason
        )
        self.session.add(row)
        await self.session.commit()
        await self.session.refresh(row)
        return row

    async def get(self, kind: ModelKind, version: str) -> ModelVersion:
        row = (
            await self.session.execute(
                select(ModelVersion).where(ModelVersion.kind == kind, ModelVersion.version == version)
            )
        ).scalar_one_or_none()
        if row is None:
            raise NotFound(f"{kind} model version {version!r} not found")
        return row

    async def champion(self, kind: ModelKind) -> ModelVersion | None:
        return (
            await self.session.execute(
                select(ModelVersion).where(ModelVersion.kind == kind, ModelVersion.status == "champion")
            )
        ).scalar_one_or_none()

    async def latest(self, kind: ModelKind) -> ModelVersion | None:
        """The newest registered version of `kind`, whatever its status (a learner's lineage)."""
        return (
            await self.session.execute(
                select(ModelVersion)
                .where(ModelVersion.kind == kind)
                .order_by(ModelVersion.id.desc())
                .limit(1)
            )
        ).scalar_one_or_none()

    async def list(
        self, kind: ModelKind | None = None, limit: int = 50, offset: int = 0
    ) -> list[ModelVersion]:
        statement = select(ModelVersion).order_by(ModelVersion.id.desc()).limit(limit).offset(offset)
        if kind:
            statement = statement.where(ModelVersion.kind == kind)
        return list((await self.session.execute(statement)).scalars())

    async def promote(self, kind: ModelKind, version: str, reason: str) -> ModelVersion:
        row = await self.get(kind, version)
        if row.status == "champion":
            raise Conflict(f"{kind} {version} is already champion")
        now = datetime.now(UTC)
        await self.session.execute(
            update(ModelVersion)
            .where(ModelVersion.kind == kind, ModelVersion.status == "champion")
            .values(status="retired")
        )
        row.status, row.reason, row.promoted_at = "champion", reason, now
        await self.session.commit()
        await self.session.refresh(row)
        return row

    async def reject(self, kind: ModelKind, version: str, reason: str) -> ModelVersion:
        row = await self.get(kind, version)
        row.status, row.reason = "rejected", reason
        await self.session.commit()
        return row

    async def rollback(self, kind: ModelKind, reason: str = "rollback") -> ModelVersion:
        """Re-promotes the champion before the current one."""
        previous = (
            await self.session.execute(
                select(ModelVersion)
                .where(
                    ModelVersion.kind == kind,
                    ModelVersion.status == "retired",
                    ModelVersion.promoted_at.is_not(None),
                )
                .order_by(ModelVersion.promoted_at.desc())
                .limit(1)
            )
        ).scalar_one_or_none()
        if previous is None:
            raise Conflict(f"no earlier {kind} champion to roll back to")
        current = await self.champion(kind)
        if current is not None:
            current.status, current.reason = "retired", f"rolled back: {reason}"
            await self.session.flush()
        previous.status, previous.reason, previous.promoted_at = "champion", reason, datetime.now(UTC)
        await self.session.commit()
        await self.session.refresh(previous)
        return previous

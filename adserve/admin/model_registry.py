"""The model registry in the admin API (admin keys): which interest model and bandit policy serve,
and their promotion and rollback, each audited (adserve/admin/audit.py)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from litestar import Controller, get, post
from litestar.params import FromQuery, JSONBody, PathParameter

from adserve.admin import schemas
from adserve.admin.audit import audited_champion_change
from adserve.admin.auth import requires_admin
from adserve.admin.params import CallerDep, DbSession, Limit, Offset
from adserve.learning.registry import Registry

__all__ = ["ModelController"]


def model_version_out(row: object) -> schemas.ModelVersionOut:
    return msgspec.convert(row, schemas.ModelVersionOut, from_attributes=True)


ModelKind = Annotated[Literal["interest", "bandit"], PathParameter()]
Version = Annotated[str, PathParameter(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]


class ModelController(Controller):
    """The model registry: which interest model and bandit policy serve; promote and roll back."""

    path = "/models"
    tags = ["models"]  # noqa: RUF012
    guards = [requires_admin]  # noqa: RUF012

    @get(summary="List model versions", description="Interest models and bandit policies, newest first.")
    async def list_models(
        self,
        db_session: DbSession,
        limit: Limit = 50,
        offset: Offset = 0,
        kind: FromQuery[Literal["interest", "bandit"] | None] = None,
    ) -> schemas.ModelVersionPage:
        rows = await Registry(db_session).list(kind, limit, offset)
        return schemas.ModelVersionPage(
            items=[model_version_out(row) for row in rows], limit=limit, offset=offset
        )

    @post(
        "/{kind:str}/{version:str}/promote",
        status_code=200,
        summary="Promote a model version",
        description="Makes the version champion; serving processes swap to it without dropping requests.",
    )
    async def promote_model(
        self,
        db_session: DbSession,
        caller: CallerDep,
        kind: ModelKind,
        version: Version,
        data: JSONBody[schemas.ModelChange],
    ) -> schemas.ModelVersionOut:
        row = await audited_champion_change(
            db_session, caller, kind, "promote", lambda registry: registry.promote(kind, version, data.reason)
        )
        return model_version_out(row)

    @post(
        "/{kind:str}/rollback",
        status_code=200,
        summary="Roll back a model",
        description="The previous champion of this kind serves again.",
    )
    async def rollback_model(
        self, db_session: DbSession, caller: CallerDep, kind: ModelKind, data: JSONBody[schemas.ModelChange]
    ) -> schemas.ModelVersionOut:
        row = await audited_champion_change(
            db_session, caller, kind, "rollback", lambda registry: registry.rollback(kind, data.reason)
        )
        return model_version_out(row)

"""Parameter and dependency types shared by the admin API's handlers (Litestar 3.0 style: every
path, query and dependency parameter says what it is, nothing is inferred from its name)."""

from __future__ import annotations

from typing import Annotated, Literal, TypeAlias

from litestar.di import NamedDependency
from litestar.params import PathParameter, QueryParameter

# Litestar reads handler annotations at runtime, so these imports cannot be typing-only.
from sqlalchemy.ext.asyncio import AsyncSession

from adserve.admin.auth import Caller

__all__ = [
    "MAX_ID",
    "CallerDep",
    "DbSession",
    "ItemId",
    "Limit",
    "Offset",
    "OptionalId",
    "StatusFilter",
    "TextFilter",
]

MAX_ID = 2**63 - 1  # ids are BIGINT: a larger number is a 400, not a database overflow
ItemId: TypeAlias = Annotated[int, PathParameter(ge=1, le=MAX_ID, description="Row id")]
Limit: TypeAlias = Annotated[int, QueryParameter(ge=1, le=500, description="Page size")]
Offset: TypeAlias = Annotated[int, QueryParameter(ge=0, le=10**9, description="Rows to skip")]
OptionalId: TypeAlias = Annotated[int | None, QueryParameter(ge=1, le=MAX_ID)]
StatusFilter: TypeAlias = Annotated[Literal["active", "paused", "archived"] | None, QueryParameter()]
TextFilter: TypeAlias = Annotated[str | None, QueryParameter(max_length=200, pattern=r"^[^\x00]*$")]
DbSession: TypeAlias = NamedDependency[AsyncSession]
CallerDep: TypeAlias = NamedDependency[Caller]

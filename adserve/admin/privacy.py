"""Erasure of an end user, by the site's user id (hashed before use, never stored).

Two routes, one rule: ``DELETE /v1/users/{user_id}`` for a site's back end (site or admin key) and
``DELETE /admin/v1/users/{user_id}`` in the admin API (admin key). Both authenticate once, through
`ApiKeyAuthMiddleware`, and erase through `adserve.events.erasure.erase_user`, audited with the
caller's key. The site route is keyed, so it sits outside the public routes' rate limit.
"""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, Request, Router, delete
from litestar.di import Provide
from litestar.middleware import DefineMiddleware
from litestar.params import PathParameter

from adserve.admin.auth import (
    ApiKeyAuthMiddleware,
    Caller,
    provide_caller,
    requires_admin,
    requires_site_or_admin,
)
from adserve.admin.params import CallerDep
from adserve.events.erasure import ErasureResult, erase_user

__all__ = ["UserController", "site_privacy_router"]

UserIdPath = Annotated[str, PathParameter(min_length=1, max_length=200, pattern=r"^[^\x00]+$")]
DESCRIPTION = (
    "Deletes the user's behaviour events and unlinks the user from logged decisions, impressions, "
    "clicks and conversions; audited with the caller's key."
)


async def _erase(request: Request, caller: Caller, user_id: str) -> ErasureResult:
    async with request.app.state.pool.acquire() as connection:
        return await erase_user(
            connection, request.app.state.pipeline.user_keys, user_id, caller.key_id, caller.role.value
        )


@delete(
    "/{user_id:str}",
    status_code=200,
    tags=["privacy"],
    security=[{"apiKey": []}],
    summary="Erase an end user (site or admin key)",
    description=DESCRIPTION,
)
async def erase_user_for_site(request: Request, caller: CallerDep, user_id: UserIdPath) -> ErasureResult:
    return await _erase(request, caller, user_id)


site_privacy_router = Router(
    path="/v1/users",
    route_handlers=[erase_user_for_site],
    middleware=[DefineMiddleware(ApiKeyAuthMiddleware)],
    guards=[requires_site_or_admin],
    dependencies={"caller": Provide(provide_caller, sync_to_thread=False)},
)


class UserController(Controller):
    """Privacy operations on end users in the admin API (admin keys)."""

    path = "/users"
    tags = ["privacy"]  # noqa: RUF012
    guards = [requires_admin]  # noqa: RUF012

    @delete("/{user_id:str}", status_code=200, summary="Erase an end user", description=DESCRIPTION)
    async def erase_user_as_admin(
        self, request: Request, caller: CallerDep, user_id: UserIdPath
    ) -> ErasureResult:
        return await _erase(request, caller, user_id)

"""API keys and roles for the admin API.

A key looks like ``adsk_<prefix>_<secret>``. Only the SHA-256 digest of the whole key is stored:
keys carry 256 bits of randomness, so a fast hash is enough (no password-stretching needed), and
the prefix finds the row without scanning digests.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING

# Litestar reads a dependency provider's annotations at runtime: `Request` cannot be typing-only.
from litestar import Request
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from sqlalchemy import select, update

from adserve.db.tables import ApiKey

if TYPE_CHECKING:
    from litestar.connection import ASGIConnection
    from litestar.handlers.base import BaseRouteHandler
    from sqlalchemy.ext.asyncio import AsyncSession

__all__ = [
    "ApiKeyAuthMiddleware",
    "Caller",
    "Role",
    "authenticate",
    "generate_key",
    "key_digest",
    "provide_caller",
    "requires_admin",
    "requires_site_or_admin",
    "requires_staff",
    "requires_writer",
]

KEY_SCHEME = "adsk"


class Role(StrEnum):
    ADMIN = "admin"
    MANAGER = "manager"
    VIEWER = "viewer"
    SITE = "site"  # a publisher site: user-facing calls such as erasure, no admin access


@dataclass(frozen=True, slots=True)
class Caller:
    key_id: int
    role: Role
    advertiser_id: int | None

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> tuple[str, str, str]:
    """Returns (key, prefix, digest); the key itself is shown once and never stored."""
    prefix = secrets.token_hex(6)
    key = f"{KEY_SCHEME}_{prefix}_{secrets.token_urlsafe(32)}"
    return key, prefix, key_digest(key)


def _parse_bearer(header: str | None) -> tuple[str, str]:
    if not header:
        raise NotAuthorizedException("missing Authorization: Bearer <key> header")
    scheme, _, key = header.partition(" ")
    key = key.strip()
    parts = key.split("_")
    if scheme.lower() != "bearer" or len(parts) < 3 or parts[0] != KEY_SCHEME:
        raise NotAuthorizedException("malformed API key")
    return key, parts[1]


async def authenticate(session: AsyncSession, header: str | None) -> Caller:
    key, prefix = _parse_bearer(header)
    row = (
        await session.execute(select(ApiKey).where(ApiKey.prefix == prefix, ApiKey.revoked_at.is_(None)))
    ).scalar_one_or_none()
    if row is None or not hmac.compare_digest(row.digest, key_digest(key)):
        raise NotAuthorizedException("invalid or revoked API key")
    await session.execute(update(ApiKey).where(ApiKey.id == row.id).values(last_used_at=datetime.now(UTC)))
    await session.commit()
    return Caller(key_id=row.id, role=Role(row.role), advertiser_id=row.advertiser_id)


class ApiKeyAuthMiddleware(AbstractAuthenticationMiddleware):
    """Authenticates every admin request; the `Caller` becomes `request.user`."""

    async def authenticate_request(self, connection: ASGIConnection) -> AuthenticationResult:
        async with connection.app.state.sessionmaker() as session:
            caller = await authenticate(session, connection.headers.get("authorization"))
        return AuthenticationResult(user=caller, auth=None)


def _caller(connection: ASGIConnection) -> Caller:
    caller = connection.scope.get("user")
    if not isinstance(caller, Caller):
        raise NotAuthorizedException("not authenticated")
    return caller


def requires_staff(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """Guard: the admin API is for admins, managers and viewers; site keys serve end users."""
    if _caller(connection).role is Role.SITE:
        raise PermissionDeniedException("site keys have no access to the admin API")


def requires_writer(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """Guard: admins and managers may write; viewers read only."""
    if _caller(connection).role not in (Role.ADMIN, Role.MANAGER):
        raise PermissionDeniedException("this key's role may only read")


def requires_admin(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    if _caller(connection).role is not Role.ADMIN:
        raise PermissionDeniedException("admin role required")


def requires_site_or_admin(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """Guard: erasing an end user is for a site's back end or an admin."""
    if _caller(connection).role not in (Role.SITE, Role.ADMIN):
        raise PermissionDeniedException("erasure needs a site or admin key")


def provide_caller(request: Request) -> Caller:
    """The dependency ``caller``: the key the middleware authenticated."""
    return request.user

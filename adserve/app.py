"""The one app factory: create_app(settings) -> Litestar."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from litestar import Litestar, MediaType, Request, Response, get
from litestar.config.cors import CORSConfig
from litestar.exceptions import HTTPException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR, HTTP_503_SERVICE_UNAVAILABLE
from sqlalchemy import text

from adserve.admin.controllers import ADMIN_COMPONENTS, admin_router
from adserve.db.engine import create_engine, resolve_database_url, sessionmaker_for
from adserve.db.migrate import head_revision
from adserve.errors import UserError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from adserve.settings import Settings

__all__ = ["create_app"]

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


def _problem(status: int, title: str, detail: str, errors: Any = None) -> Response[dict[str, Any]]:
    body: dict[str, Any] = {"type": "about:blank", "status": status, "title": title, "detail": detail}
    if errors:
        body["errors"] = errors
    return Response(body, status_code=status, media_type=PROBLEM_JSON)


def _user_error(_: Request, exc: UserError) -> Response[dict[str, Any]]:
    return _problem(exc.status_code, exc.title, exc.detail, exc.errors)


def _http_error(_: Request, exc: HTTPException) -> Response[dict[str, Any]]:
    response = _problem(exc.status_code, HTTPStatus(exc.status_code).phrase, exc.detail, exc.extra)
    if exc.headers:
        response.headers.update(exc.headers)
    return response


def _server_error(request: Request, exc: Exception) -> Response[dict[str, Any]]:
    # Our fault: log it with the route (never the body, which may hold personal data) and keep
    # the stack trace out of the response.
    log.exception("unhandled error on %s %s", request.method, request.scope.get("path"), exc_info=exc)
    return _problem(HTTP_500_INTERNAL_SERVER_ERROR, "Internal Server Error", "an internal error occurred")


@get("/health", media_type=MediaType.JSON, tags=["operations"])
async def health() -> dict[str, str]:
    """The process is alive and serving HTTP."""
    return {"status": "ok"}


@get("/ready", media_type=MediaType.JSON, tags=["operations"])
async def ready(request: Request) -> Response[dict[str, Any]]:
    """The database answers and its schema is at the migrations' head; 503 otherwise."""
    state = request.app.state
    checks: dict[str, Any] = {}
    try:
        async with state.engine.connect() as connection:
            current = (await connection.execute(text("SELECT version_num FROM alembic_version"))).scalar()
        checks["database"] = "ok"
        checks["migrations"] = (
            "ok" if current == state.schema_head else f"at {current}, head is {state.schema_head}"
        )
    except Exception as exc:
        checks["database"] = f"unreachable: {type(exc).__name__}"
    checks.update(getattr(state, "readiness_details", {}))
    ok = all(value == "ok" for value in checks.values())
    return Response(
        {"status": "ok" if ok else "unavailable", "checks": checks},
        status_code=200 if ok else HTTP_503_SERVICE_UNAVAILABLE,
    )


def create_app(settings: Settings) -> Litestar:
    @asynccontextmanager
    async def database(app: Litestar) -> AsyncIterator[None]:
        url, embedded = resolve_database_url(settings)
        engine = create_engine(url, settings)
        app.state.database_url = url
        app.state.engine = engine
        app.state.sessionmaker = sessionmaker_for(engine)
        try:
            yield
        finally:
            await engine.dispose()
            if embedded is not None:
                embedded.stop()

    app = Litestar(
        route_handlers=[health, ready, admin_router],
        lifespan=[database],
        exception_handlers={
            UserError: _user_error,
            HTTPException: _http_error,
            Exception: _server_error,
        },
        openapi_config=OpenAPIConfig(
            title="adserve",
            version="0.1.0",
            path="/schema",
            components=ADMIN_COMPONENTS,
            render_plugins=[SwaggerRenderPlugin()],
        ),
        cors_config=CORSConfig(allow_origins=settings.server.cors_origins)
        if settings.server.cors_origins
        else None,
        request_max_body_size=settings.server.max_body_bytes,
        debug=False,
    )
    app.state.settings = settings
    app.state.schema_head = head_revision()
    return app

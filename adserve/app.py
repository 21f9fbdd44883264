"""The one app factory: create_app(settings) -> Litestar."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from contextlib import asynccontextmanager
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
from litestar import Litestar, MediaType, Request, Response, Router, get
from litestar.config.cors import CORSConfig
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException, NotAuthorizedException
from litestar.middleware import ASGIMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.status_codes import (
    HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    HTTP_429_TOO_MANY_REQUESTS,
    HTTP_500_INTERNAL_SERVER_ERROR,
    HTTP_503_SERVICE_UNAVAILABLE,
)
from litestar.stores.memory import MemoryStore
from sqlalchemy import text

from adserve import metrics
from adserve.admin.controllers import ADMIN_COMPONENTS, admin_router
from adserve.admin.dashboard import dashboard_router
from adserve.admin.privacy import site_privacy_router
from adserve.db.engine import Database, asyncpg_dsn, create_engine, resolve_database_url, sessionmaker_for
from adserve.db.migrate import head_revision
from adserve.errors import ServiceUnavailable, UserError
from adserve.events.ingest import EventIngest
from adserve.events.invalid_hits import InvalidHitCounter
from adserve.events.spool import SpoolLockedError
from adserve.events.tracking import Tracker
from adserve.events.writer import LogWriter
from adserve.jobs.runs import latest_finishes
from adserve.learning.empirical_ctr import EmpiricalCTRScorer, load_creative_counts
from adserve.logging_config import configure_logging, new_request_id, request_id
from adserve.serving.catalog import CatalogCache
from adserve.serving.controllers import serving_router
from adserve.serving.heap import tuned_collector
from adserve.serving.models import ModelWatcher
from adserve.serving.pages import pages_router
from adserve.serving.pipeline import DecisionPipeline
from adserve.serving.rate_limit import STORE, public_rate_limit, purge_expired, retry_after
from adserve.serving.scoring import EpsilonGreedyPolicy
from adserve.serving.user_state import UserStateCache
from adserve.signing.identity import UserKeys
from adserve.signing.tokens import TrackingSigner

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from litestar.types import ASGIApp, Message, Receive, Scope, Send

    from adserve.domain import Policy
    from adserve.settings import Settings

__all__ = ["create_app"]

log = logging.getLogger(__name__)
request_log = logging.getLogger("adserve.http")

PROBLEM_JSON = "application/problem+json"
COUNTS_REFRESH_S = 15.0
SPOOL_SLOTS = 64


def _problem(status: int, title: str, detail: str, errors: Any = None) -> Response[dict[str, Any]]:
    body: dict[str, Any] = {"type": "about:blank", "status": status, "title": title, "detail": detail}
    if errors:
        body["errors"] = errors
    return Response(body, status_code=status, media_type=PROBLEM_JSON)


def _user_error(_: Request, exc: UserError) -> Response[dict[str, Any]]:
    response = _problem(exc.status_code, exc.title, exc.detail, exc.errors)
    if isinstance(exc, ServiceUnavailable):
        response.headers["Retry-After"] = str(exc.retry_after_s)
    return response


def _route(request: Request) -> str:
    """The route template (`/v1/users/{user_id}`), never the path, which can carry a raw id."""
    return f"{request.method} {request.scope.get('path_template') or '(no route)'}"


def _too_large(request: Request) -> str:
    limit = request.route_handler.resolve_request_max_body_size()
    return f"the request body is larger than {limit} bytes, the limit of {_route(request)}"


def _http_error(request: Request, exc: HTTPException) -> Response[dict[str, Any]]:
    detail = exc.detail
    headers = dict(exc.headers or {})
    if exc.status_code == HTTP_413_REQUEST_ENTITY_TOO_LARGE:
        detail = _too_large(request)
    elif exc.status_code == HTTP_429_TOO_MANY_REQUESTS:
        headers["Retry-After"] = str(retry_after(headers))
        limit = headers.get("RateLimit-Limit", "?")
        detail = (
            f"more than {limit} requests a minute from this client; retry after {headers['Retry-After']} s"
        )
    response = _problem(exc.status_code, HTTPStatus(exc.status_code).phrase, detail, exc.extra)
    response.headers.update(headers)
    return response


def _server_error(request: Request, exc: Exception) -> Response[dict[str, Any]]:
    # Our fault: log it with the route template (never the path or the body, which may hold a
    # raw user id or other personal data) and keep the stack trace out of the response.
    log.exception("unhandled error on %s", _route(request), exc_info=exc)
    return _problem(HTTP_500_INTERNAL_SERVER_ERROR, "Internal Server Error", "an internal error occurred")


class RequestObservation(ASGIMiddleware):
    """Every HTTP request gets an id (on each log line written while it is handled, and returned as
    `X-Request-ID`), its latency in the route's histogram and, with `log_requests`, one log line.
    Routes are named by template (`/v1/users/{user_id}`): a path can carry a raw user id."""

    scopes = (ScopeType.HTTP,)

    def __init__(self, log_requests: bool) -> None:
        self.log_requests = log_requests

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        this_request = new_request_id()
        reset = request_id.set(this_request)
        status = HTTP_500_INTERNAL_SERVER_ERROR
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", this_request.encode())]
            await send(message)

        try:
            await next_app(scope, receive, send_with_id)
        except Exception as exc:
            # Raised by a middleware (a 429 of the rate limit), answered by the app's outer handler:
            # the id stays set, so its log line (a 500's) carries it; each request has its own context.
            status = getattr(exc, "status_code", HTTP_500_INTERNAL_SERVER_ERROR)
            self._observe(scope, status, started)
            raise
        self._observe(scope, status, started)
        request_id.reset(reset)

    def _observe(self, scope: Scope, status: int, started: float) -> None:
        elapsed = time.perf_counter() - started
        method, route = scope["method"], scope.get("path_template") or "(no route)"
        metrics.observe_request(method, route, status, elapsed)
        if self.log_requests:
            request_log.info(
                "%s %s %d %.1f ms",
                method,
                route,
                status,
                elapsed * 1000,
                extra={
                    "method": method,
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                },
            )


@get("/metrics", include_in_schema=False)
async def metrics_exposition(request: Request) -> Response[bytes]:
    """Prometheus text exposition; registered only with metrics.enabled, and needs its bearer token."""
    expected = f"Bearer {request.app.state.settings.metrics.token}".encode()
    if not hmac.compare_digest(request.headers.get("authorization", "").encode(), expected):
        raise NotAuthorizedException(
            "/metrics needs `Authorization: Bearer <metrics.token>`", headers={"WWW-Authenticate": "Bearer"}
        )
    state = request.app.state
    try:
        state.job_finishes = await latest_finishes(state.pool)
    except Exception as exc:  # the scrape still answers; the jobs' series keep their last reading
        log.warning("/metrics: job_runs not read (%s)", type(exc).__name__)
    return Response(metrics.exposition(request.app.state.metrics_registry), media_type=metrics.CONTENT_TYPE)


@get("/health", media_type=MediaType.JSON, tags=["operations"])
async def health() -> dict[str, str]:
    """The process is alive and serving HTTP."""
    return {"status": "ok"}


# What serves, named the way settings name it (serving.scorer / serving.policy).
_SERVING_KINDS = {"EmpiricalCTRScorer": "empirical", "EpsilonGreedyPolicy": "epsilon_greedy"}


def _serving_kind(component: object) -> str:
    module, name = type(component).__module__, type(component).__name__
    if module.startswith("adserve.interest."):
        return "interest"
    if module.startswith("adserve.bandit."):
        return "vw"
    return _SERVING_KINDS.get(name, name)


def _interest_flag(scorer: object, name: str) -> bool | None:
    """A flag of the scorer's interest model (None: not an interest model)."""
    for candidate in (scorer, getattr(scorer, "current", None)):
        with contextlib.suppress(Exception):
            flag = getattr(candidate, name, None)
            if flag is not None:
                return bool(flag)
    return None


def _serving(state: Any) -> dict[str, Any]:
    """The scorer and policy the decision pipeline uses right now (hot-swapped objects), and the
    champion versions this process has loaded; the registry's champion may not be serving yet."""
    pipeline = getattr(state, "pipeline", None)
    if pipeline is None:
        return {}
    scorer, policy = pipeline.scorer, pipeline.policy
    return {
        "scorer": {
            "kind": _serving_kind(scorer),
            "version": str(scorer.version),
            # a trained click head; whether the served fusion weighs it (if not, it does not run)
            "click_trained": _interest_flag(scorer, "click_trained"),
            "click_weighed": _interest_flag(scorer, "click_weighed"),
        },
        "policy": {
            "kind": _serving_kind(policy),
            "version": str(policy.version),
            "examples_learned": getattr(policy, "examples_learned", None),
            # what the choice maximises: expected revenue per impression or clicks (`bandit.objective`)
            "objective": getattr(policy, "objective", "revenue"),
        },
        "champions_loaded": dict(getattr(getattr(state, "models", None), "serving", {}) or {}),
        # this process's user-state cache: reads from memory (hits) and Postgres (loads, event-time reloads included)
        "user_state": pipeline.user_states.counters() if pipeline.user_states is not None else None,
    }


@get("/ready", media_type=MediaType.JSON, tags=["operations"])
async def ready(request: Request) -> Response[dict[str, Any]]:
    """The database answers and its schema is at the migrations' head; 503 otherwise.

    `serving` says what the decision pipeline serves now: the scorer and policy kinds and
    versions (and whether the interest model's click head is trained), beside the champion
    versions this process has loaded."""
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
    if hasattr(state, "models"):
        checks.update(state.models.readiness())
    ok = all(value == "ok" for value in checks.values())
    return Response(
        {"status": "ok" if ok else "unavailable", "checks": checks, "serving": _serving(state)},
        status_code=200 if ok else HTTP_503_SERVICE_UNAVAILABLE,
    )


def build_policy(settings: Settings) -> Policy:
    if settings.serving.policy == "vw":
        from adserve.bandit.policy import PolicyConfig, VWPolicy

        # until a champion is registered (and hot-swapped in by ModelWatcher), an untrained policy
        # configured from [bandit]: the scorer's ranking with light exploration (residual 0)
        return VWPolicy(PolicyConfig.from_dict(settings.bandit.policy_dict()))
    return EpsilonGreedyPolicy(settings.serving.epsilon)


async def _refresh_counts(pool: asyncpg.Pool, scorer: EmpiricalCTRScorer, every_s: float) -> None:
    while True:
        try:
            async with pool.acquire(timeout=5.0) as connection:
                scorer.update(await load_creative_counts(connection))
        except Exception:
            log.warning("click-through counts not refreshed")
        await asyncio.sleep(every_s)


async def _keep_session(connection: asyncpg.Connection) -> None:
    """The hot path's pool skips asyncpg's per-release reset query (a round trip per request):
    its queries are single statements that leave no session state behind."""


async def _start_writer(url: str, settings: Settings) -> LogWriter:
    """Each process owns one spool slot folder: the first free one, so several workers share one
    spool_dir. Every writer also replays the slots no live process holds (adopt_from), so no slot
    waits for a worker of its number (fewer workers than before, a dead one not restarted)."""
    base = Path(settings.writer.spool_dir)
    for slot in range(SPOOL_SLOTS):
        writer = LogWriter(
            url,
            settings.writer,
            base / f"slot-{slot}",
            settings.database.statement_timeout_ms,
            adopt_from=base,
        )
        try:
            await writer.start()
        except SpoolLockedError:
            continue
        return writer
    raise RuntimeError(f"all {SPOOL_SLOTS} spool slots under {base} are in use")


def create_app(settings: Settings) -> Litestar:
    configure_logging(settings.log_level, settings.log_format)

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

    @asynccontextmanager
    async def serving(app: Litestar) -> AsyncIterator[None]:
        """The hot path's heavy objects, built once per process: pool, writer, snapshot, models."""
        url = app.state.database_url
        # min_size=0: the process starts (and /ready reports why) even while Postgres is away.
        pool = await asyncpg.create_pool(
            **asyncpg_dsn(url, statement_timeout_ms=settings.database.statement_timeout_ms),
            min_size=0,
            max_size=settings.database.pool_size,
            reset=_keep_session,
        )
        writer = await _start_writer(url, settings)
        catalog = CatalogCache(pool, settings.serving.catalog_refresh_s, settings.serving.token_ttl_s)
        await catalog.start()
        scorer = EmpiricalCTRScorer(
            settings.serving.ctr_prior_clicks,
            settings.serving.ctr_prior_impressions,
            settings.serving.history_lift,
        )
        counts_task = asyncio.create_task(_refresh_counts(pool, scorer, COUNTS_REFRESH_S))
        user_keys = UserKeys(settings.secret_key)
        signer = TrackingSigner(settings.secret_key, settings.serving.token_ttl_s)
        user_states = UserStateCache(
            pool,
            settings.serving.history_length,
            max_users=settings.serving.user_state_cache_size,
            max_age_s=settings.serving.user_state_max_age_s,
            history_days=settings.serving.history_days,
        )
        await user_states.start()
        app.state.catalog = catalog
        app.state.writer = writer
        app.state.pool = pool
        app.state.database = Database(pool, app.state.sessionmaker)  # the handle learning/ takes
        app.state.user_states = user_states
        app.state.pipeline = DecisionPipeline(
            catalog=catalog,
            scorer=scorer,
            policy=build_policy(settings),
            user_states=user_states,
            writer=writer,
            signer=signer,
            user_keys=user_keys,
            public_url=settings.server.public_url,
        )
        watcher = ModelWatcher(pool, app.state.pipeline, scorer, settings)
        await watcher.start()
        app.state.models = watcher
        invalid_hits = InvalidHitCounter(pool)
        invalid_hits.start()
        app.state.invalid_hits = invalid_hits
        app.state.tracker = Tracker(
            signer=signer, writer=writer, pool=pool, catalog=catalog, invalid_hits=invalid_hits
        )
        app.state.ingest = EventIngest(
            writer=writer,
            pool=pool,
            user_keys=user_keys,
            attribution_window_s=settings.serving.attribution_window_s,
            max_events=settings.serving.max_events_per_batch,
        )
        try:
            with tuned_collector(settings.server.tune_gc):
                yield
        finally:
            counts_task.cancel()
            await invalid_hits.close()
            await watcher.close()
            await app.state.pipeline.close()
            await user_states.close()
            await catalog.close()
            await writer.close()
            await pool.close()

    @asynccontextmanager
    async def jobs(app: Litestar) -> AsyncIterator[None]:
        """With `jobs.enabled`, this process competes to run the scheduled jobs (adserve/jobs/)."""
        if not settings.jobs.enabled:
            yield
            return
        from adserve.jobs.scheduler import JobScheduler

        scheduler = JobScheduler(app.state.database_url, settings)
        await scheduler.start()
        app.state.jobs = scheduler
        try:
            yield
        finally:
            await scheduler.close()

    rate_limit_store = MemoryStore()

    @asynccontextmanager
    async def rate_limits(app: Litestar) -> AsyncIterator[None]:
        purge = asyncio.create_task(purge_expired(rate_limit_store))
        try:
            yield
        finally:
            purge.cancel()

    per_minute = settings.server.rate_limit_per_minute
    public = (
        Router(
            path="/", route_handlers=[serving_router], middleware=[public_rate_limit(per_minute).middleware]
        )
        if per_minute
        else serving_router
    )
    operations = [health, ready, *([metrics_exposition] if settings.metrics.enabled else [])]
    app = Litestar(
        route_handlers=[
            *operations,
            admin_router,
            dashboard_router,
            site_privacy_router,
            public,
            pages_router,
        ],
        middleware=[RequestObservation(settings.log_requests)],
        logging_config=None,  # configure_logging owns the process's logging
        lifespan=[database, serving, jobs, rate_limits],
        stores={STORE: rate_limit_store},
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
            use_handler_docstrings=True,  # a handler's docstring is its description
        ),
        cors_config=CORSConfig(allow_origins=settings.server.cors_origins)
        if settings.server.cors_origins
        else None,
        request_max_body_size=settings.server.max_body_bytes,
        debug=False,
    )
    app.state.settings = settings
    app.state.schema_head = head_revision()
    app.state.metrics_registry = metrics.build_registry(
        metrics.ProcessStateCollector(
            lambda: getattr(app.state, "writer", None),
            lambda: _serving(app.state),
            lambda: getattr(app.state, "job_finishes", {}),
        )
    )
    return app

"""Engine and session setup, and the embedded Postgres used when no database URL is configured."""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from adserve.settings import Settings

__all__ = [
    "Database",
    "EmbeddedPostgres",
    "async_engine",
    "asyncpg_dsn",
    "create_engine",
    "json_safe",
    "open_database",
    "resolve_database_url",
    "sessionmaker_for",
    "sqlalchemy_url",
]

log = logging.getLogger(__name__)

EMBEDDED_DATABASE = "adserve"


class EmbeddedPostgres:
    """A Postgres server in a local data folder (pgserver), kept across restarts.

    pgserver counts the processes holding the server and stops it when the last one exits, so
    several worker processes can share one embedded server.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._server = None

    def start(self) -> str:
        """Starts (or attaches to) the server; returns a postgresql:// URL of our database."""
        import pgserver

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._server = pgserver.get_server(self.data_dir, cleanup_mode="stop")
        exists = self._server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{EMBEDDED_DATABASE}';")
        if "1 row" not in exists:
            self._server.psql(f"CREATE DATABASE {EMBEDDED_DATABASE};")
        log.info("embedded Postgres ready in %s", self.data_dir)
        return self._server.get_uri(EMBEDDED_DATABASE)

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None


def resolve_database_url(settings: Settings) -> tuple[str, EmbeddedPostgres | None]:
    """The configured URL, or a freshly started embedded server's URL when none is configured."""
    if settings.database.url:
        return settings.database.url, None
    embedded = EmbeddedPostgres(Path(settings.database.embedded_dir).resolve())
    return embedded.start(), embedded


def sqlalchemy_url(url: str) -> str:
    """Any postgres URL as SQLAlchemy's asyncpg dialect URL."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url.removeprefix(prefix)
    raise ValueError(f"not a postgres URL: {url.split(':', 1)[0]}://…")


def asyncpg_dsn(url: str, *, statement_timeout_ms: int | None = None) -> dict[str, Any]:
    """Keyword arguments for asyncpg.connect and asyncpg.create_pool.

    Host, port, user, password and database come from the URL (``?host=/dir`` for unix sockets).
    Every other URL parameter reaches asyncpg through `dsn`, which reads them as libpq does:
    ``sslmode``, ``sslrootcert``, ``sslcert``, ``sslkey``, ``sslcrl``, ``sslpassword``,
    ``ssl_min_protocol_version``, ``target_session_attrs``, and server settings such as
    ``application_name``. A positive `statement_timeout_ms` becomes the session's
    ``statement_timeout`` (0 or None: the server's default).
    """
    normalised = sqlalchemy_url(url).replace("postgresql+asyncpg://", "postgresql://", 1)
    parts = urlsplit(normalised)
    query = parse_qs(parts.query)
    kwargs: dict[str, Any] = {
        "dsn": normalised,
        "host": query.get("host", [parts.hostname])[0] or "127.0.0.1",
        "port": parts.port or int(query.get("port", ["5432"])[0]),
        "user": parts.username or "postgres",
        "password": parts.password or None,
        "database": parts.path.lstrip("/") or "postgres",
    }
    if statement_timeout_ms:
        kwargs["server_settings"] = {"statement_timeout": str(statement_timeout_ms)}
    return kwargs


def async_engine(url: str, *, statement_timeout_ms: int | None = None, **options: Any) -> AsyncEngine:
    """A SQLAlchemy engine whose connections asyncpg opens from `asyncpg_dsn`, so the ORM honours
    the same URL parameters (TLS) and statement timeout as the hot path's pools."""
    connect_kwargs = asyncpg_dsn(url, statement_timeout_ms=statement_timeout_ms)

    async def connect() -> asyncpg.Connection:
        return await asyncpg.connect(**connect_kwargs)

    return create_async_engine("postgresql+asyncpg://", async_creator=connect, **options)


def create_engine(url: str, settings: Settings) -> AsyncEngine:
    return async_engine(
        url,
        statement_timeout_ms=settings.database.statement_timeout_ms,
        pool_size=settings.database.pool_size,
        max_overflow=settings.database.max_overflow,
        pool_pre_ping=True,
        echo=settings.database.echo,
    )


def sessionmaker_for(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


@dataclass(frozen=True, slots=True)
class Database:
    """The one database handle the app, the jobs and the CLI pass to `adserve.learning`: an
    asyncpg pool for plain SQL (bulk reads, COPY, advisory locks) and a SQLAlchemy sessionmaker
    for the ORM (the model registry). Whoever opens it closes it; functions that take it never do."""

    pool: asyncpg.Pool
    sessionmaker: async_sessionmaker[AsyncSession]


@contextlib.asynccontextmanager
async def open_database(url: str, settings: Settings, *, max_connections: int = 4) -> AsyncIterator[Database]:
    """A `Database` on `url` for a command or a job runner, closed on exit. Connections carry
    the configured statement timeout, as every other pool of ours does."""
    pool = await asyncpg.create_pool(
        **asyncpg_dsn(url, statement_timeout_ms=settings.database.statement_timeout_ms),
        min_size=0,
        max_size=max_connections,
    )
    engine = create_engine(url, settings)
    try:
        yield Database(pool, sessionmaker_for(engine))
    finally:
        await engine.dispose()
        await pool.close()


def json_safe(value: Any) -> Any:
    """`value` with every NaN or infinite float replaced by None (JSON null), recursively.

    Postgres's json types reject the `NaN`/`Infinity` tokens Python's json module writes by
    default ("invalid input syntax for type json"). NumPy scalars become Python numbers first.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(v) for v in value]
    if type(value).__module__ == "numpy" and hasattr(value, "item"):
        return json_safe(value.item() if getattr(value, "ndim", 0) == 0 else value.tolist())
    return value

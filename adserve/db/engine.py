"""Engine and session setup, and the embedded Postgres used when no database URL is configured."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

if TYPE_CHECKING:
    from adserve.settings import Settings

__all__ = [
    "EmbeddedPostgres",
    "asyncpg_dsn",
    "create_engine",
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


def asyncpg_dsn(url: str) -> dict[str, str | int | None]:
    """Keyword arguments for asyncpg.connect; handles unix-socket URLs (``?host=/dir``)."""
    parts = urlsplit(sqlalchemy_url(url).replace("postgresql+asyncpg://", "postgresql://"))
    query = parse_qs(parts.query)
    return {
        "host": query.get("host", [parts.hostname])[0] or "127.0.0.1",
        "port": parts.port or int(query.get("port", ["5432"])[0]),
        "user": parts.username or "postgres",
        "password": parts.password or None,
        "database": parts.path.lstrip("/") or "postgres",
    }


def create_engine(url: str, settings: Settings) -> AsyncEngine:
    return create_async_engine(
        sqlalchemy_url(url),
        pool_size=settings.database.pool_size,
        max_overflow=settings.database.max_overflow,
        pool_pre_ping=True,
        echo=settings.database.echo,
    )


def sessionmaker_for(engine: AsyncEngine) -> async_sessionmaker:
    return async_sessionmaker(engine, expire_on_commit=False)

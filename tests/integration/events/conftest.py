"""Fixtures for the log writer: writers on the session database and a connection to check rows."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from adserve.db.engine import asyncpg_dsn
from adserve.events.writer import LogWriter
from adserve.settings import WriterSettings

WriterFactory = Callable[..., Awaitable[LogWriter]]


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(**asyncpg_dsn(database_url))
    yield connection
    await connection.close()


@pytest.fixture
async def make_writer(database_url: str, tmp_path: Path) -> AsyncIterator[WriterFactory]:
    """Starts writers (default: the session database, a fresh spool folder); closes them after."""
    started: list[LogWriter] = []

    async def create(url: str | None = None, spool_dir: Path | None = None, **settings: Any) -> LogWriter:
        writer = LogWriter(
            url or database_url,
            WriterSettings(**{"flush_rows": 500, "flush_ms": 20, **settings}),
            spool_dir or tmp_path / f"spool-{len(started)}",
        )
        await writer.start()
        started.append(writer)
        return writer

    yield create
    for writer in started:
        await writer.close()

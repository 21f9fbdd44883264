"""What every command shares: migrating first, one `Database` per command, and clean exits."""

from __future__ import annotations

import asyncio
import subprocess
from typing import TYPE_CHECKING, TypeVar

from adserve.db import migrate
from adserve.db.engine import Database, open_database, resolve_database_url

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from adserve.settings import Settings

__all__ = ["migrated_url", "run_with_database", "stop_child", "terminated"]

T = TypeVar("T")


def migrated_url(settings: Settings) -> str:
    """Upgrades the schema to head; returns the database URL (starting the embedded server if needed)."""
    url, _embedded = resolve_database_url(settings)
    migrate.upgrade(url)
    return url


def run_with_database(url: str, settings: Settings, work: Callable[[Database], Awaitable[T]]) -> T:
    """Runs `work` with one `Database` open for the whole command."""

    async def run() -> T:
        async with open_database(url, settings) as database:
            return await work(database)

    return asyncio.run(run())


def terminated(signum: int, frame: object) -> None:
    """SIGTERM ends a command the way Ctrl-C does: by unwinding, so child processes are stopped
    and the embedded Postgres is shut down (pgserver stops it at interpreter exit). Uvicorn
    handles SIGTERM (graceful shutdown) and then raises it again; without a handler of ours that
    second SIGTERM killed the process outright, leaving Postgres up."""
    raise SystemExit(128 + signum)


def stop_child(child: subprocess.Popen, timeout_s: float = 10.0) -> None:
    if child.poll() is None:
        child.terminate()
    try:
        child.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()

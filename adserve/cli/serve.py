"""`adserve serve` and `adserve worker`: the HTTP service and the scheduled jobs."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
from typing import TYPE_CHECKING

import msgspec
import uvicorn

from adserve.app import create_app
from adserve.cli.common import migrated_url, terminated
from adserve.jobs.scheduler import run_worker
from adserve.settings import Settings, load_settings

if TYPE_CHECKING:
    import argparse

    from litestar import Litestar

__all__ = ["app_from_env", "register", "serve_http"]


def app_from_env() -> Litestar:
    """Uvicorn worker factory (`--workers` above 1): each worker process builds its app from the
    environment `serve_http` handed it."""
    return create_app(load_settings())


def served_settings(settings: Settings, url: str, host: str, port: int) -> Settings:
    """`settings` with the resolved database URL and, where --host/--port override the configured
    address and no public URL was set, tracking URLs that point at the address actually served."""
    server = settings.server
    if (
        "ADSERVE_SERVER_PUBLIC_URL" not in os.environ
        and server.public_url == f"http://127.0.0.1:{server.port}"
    ):
        public_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        server = msgspec.structs.replace(server, public_url=f"http://{public_host}:{port}")
    database = msgspec.structs.replace(settings.database, url=url)
    return msgspec.structs.replace(settings, database=database, server=server)


def serve_http(settings: Settings, host: str, port: int, workers: int) -> None:
    """Migrates, then serves until SIGINT or SIGTERM."""
    served = served_settings(settings, migrated_url(settings), host, port)
    log_level = settings.log_level.lower()
    if workers == 1:
        # a factory, so the app (and its logging) is built after uvicorn configured its own
        app = functools.partial(create_app, served)
        uvicorn.run(app, factory=True, host=host, port=port, log_level=log_level, access_log=False)
        return
    # Uvicorn starts each worker in a fresh interpreter from an import string: the environment is
    # the only way in, so the two settings resolved here travel there (workers share this database).
    os.environ["ADSERVE_DATABASE_URL"] = served.database.url
    os.environ["ADSERVE_SERVER_PUBLIC_URL"] = served.server.public_url
    uvicorn.run(
        "adserve.cli.serve:app_from_env",
        factory=True,
        workers=workers,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
    )


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    signal.signal(signal.SIGTERM, terminated)
    serve_http(
        settings,
        args.host or settings.server.host,
        args.port or settings.server.port,
        args.workers or settings.server.workers,
    )
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    signal.signal(signal.SIGTERM, terminated)
    asyncio.run(run_worker(migrated_url(settings), settings))
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="run the HTTP service (migrates first)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int)
    serve.set_defaults(run=cmd_serve)

    worker = commands.add_parser("worker", help="run the scheduled jobs only (migrates first)")
    worker.set_defaults(run=cmd_worker)

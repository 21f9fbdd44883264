"""The `adserve` command line: serve, demo, migrate, keys …"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import TYPE_CHECKING

from adserve.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from sqlalchemy.ext.asyncio import AsyncSession

__all__ = ["main"]

log = logging.getLogger("adserve")


def app_from_env():
    """Uvicorn worker factory: each worker process builds its app from the environment."""
    from adserve.app import create_app

    return create_app(load_settings())


def _migrate(settings: Settings) -> str:
    """Upgrades the schema to head; returns the database URL (starting the embedded server if needed)."""
    from adserve.db import migrate
    from adserve.db.engine import resolve_database_url

    url, _embedded = resolve_database_url(settings)
    migrate.upgrade(url)
    return url


def _with_session(settings: Settings, url: str, work: Callable[[AsyncSession], Awaitable[object]]) -> object:
    from adserve.db.engine import create_engine, sessionmaker_for

    async def run() -> object:
        engine = create_engine(url, settings)
        try:
            async with sessionmaker_for(engine)() as session:
                return await work(session)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _serve(settings: Settings, host: str, port: int, workers: int) -> None:
    import uvicorn

    url = _migrate(settings)
    # Workers are separate processes: hand them the resolved URL so they share this database.
    os.environ["ADSERVE_DATABASE_URL"] = url
    uvicorn.run(
        "adserve.__main__:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=settings.log_level.lower(),
        access_log=False,
    )


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    _serve(
        settings,
        args.host or settings.server.host,
        args.port or settings.server.port,
        args.workers or settings.server.workers,
    )
    return 0


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    _migrate(settings)
    print("database schema is at head")
    return 0


def cmd_keys_create(args: argparse.Namespace, settings: Settings) -> int:
    from adserve.admin import schemas
    from adserve.admin.services import ApiKeyService

    url = _migrate(settings)
    body = schemas.ApiKeyCreate(role=args.role, advertiser_id=args.advertiser, name=args.name or "")

    async def create(session: AsyncSession) -> object:
        key, row = await ApiKeyService(session, None).create(body)
        return key, row.id

    key, key_id = _with_session(settings, url, create)  # type: ignore[misc]
    print(f"created {args.role} key #{key_id}; it is shown only once:")
    print(key)
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from adserve.demo import create_admin_key, seed_demo_catalog

    url = _migrate(settings)

    async def seed(session: AsyncSession) -> object:
        created = await seed_demo_catalog(session)
        return created, await create_admin_key(session, "demo")

    created, key = _with_session(settings, url, seed)  # type: ignore[misc]
    host, port = args.host or settings.server.host, args.port or settings.server.port
    print(f"demo catalogue: {created} creatives created" if created else "demo catalogue already present")
    print(f"admin key (shown once): {key}")
    print(f"admin API: http://{host}:{port}/admin/v1/campaigns  ·  OpenAPI: http://{host}:{port}/schema")
    sys.stdout.flush()
    _serve(settings, host, port, 1)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adserve", description="Self-hosted ad-targeting service")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP service (migrates first)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int)
    serve.set_defaults(run=cmd_serve)

    demo = commands.add_parser("demo", help="seed a demo catalogue and run the service")
    demo.add_argument("--host")
    demo.add_argument("--port", type=int)
    demo.set_defaults(run=cmd_demo)

    migrate = commands.add_parser("migrate", help="upgrade the database schema to head")
    migrate.set_defaults(run=cmd_migrate)

    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(
        dest="keys_command", required=True
    )
    create = keys.add_parser("create", help="create a key and print it once")
    create.add_argument("--role", required=True, choices=["admin", "manager", "viewer", "site"])
    create.add_argument("--advertiser", type=int, help="advertiser id (manager and viewer keys)")
    create.add_argument("--name", help="a label for the key")
    create.set_defaults(run=cmd_keys_create)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"adserve: configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for chatty in ("pgserver", "alembic"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    from adserve.errors import UserError

    try:
        return args.run(args, settings)
    except UserError as exc:
        print(f"adserve: {exc.detail}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""`adserve keys` and `adserve models`: API keys and the model registry, from the command line."""

from __future__ import annotations

from typing import TYPE_CHECKING

from adserve.admin import schemas
from adserve.admin.audit import audited_champion_change
from adserve.admin.services import ApiKeyService
from adserve.cli.common import migrated_url, run_with_database
from adserve.learning.registry import Registry

if TYPE_CHECKING:
    import argparse

    from adserve.db.engine import Database
    from adserve.settings import Settings

__all__ = ["register"]


def cmd_keys_create(args: argparse.Namespace, settings: Settings) -> int:
    body = schemas.ApiKeyCreate(role=args.role, advertiser_id=args.advertiser, name=args.name or "")

    async def create(database: Database) -> tuple[str, int]:
        async with database.sessionmaker() as session:
            key, row = await ApiKeyService(session, None).create(body)
            return key, row.id

    key, key_id = run_with_database(migrated_url(settings), settings, create)
    print(f"created {args.role} key #{key_id}; it is shown only once:")
    print(key)
    return 0


def cmd_models(args: argparse.Namespace, settings: Settings) -> int:
    async def act(database: Database) -> list[tuple[str, str, str, str]]:
        async with database.sessionmaker() as session:
            if args.models_command == "promote":
                await audited_champion_change(
                    session,
                    None,
                    args.kind,
                    "promote",
                    lambda r: r.promote(args.kind, args.version, args.reason),
                )
            elif args.models_command == "rollback":
                await audited_champion_change(
                    session, None, args.kind, "rollback", lambda r: r.rollback(args.kind, args.reason)
                )
            rows = await Registry(session).list(args.kind)
            return [(r.kind, r.version, r.status, r.reason or "") for r in rows]

    for kind, version, status, reason in run_with_database(migrated_url(settings), settings, act):
        print(f"{kind:8} {version:28} {status:9} {reason}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(
        dest="keys_command", required=True
    )
    create = keys.add_parser("create", help="create a key and print it once")
    create.add_argument("--role", required=True, choices=["admin", "manager", "viewer", "site"])
    create.add_argument("--advertiser", type=int, help="advertiser id (manager and viewer keys)")
    create.add_argument("--name", help="a label for the key")
    create.set_defaults(run=cmd_keys_create)

    models = commands.add_parser("models", help="the model registry").add_subparsers(
        dest="models_command", required=True
    )
    listing = models.add_parser("list")
    listing.add_argument("--kind", choices=["interest", "bandit"])
    promote = models.add_parser("promote")
    promote.add_argument("kind", choices=["interest", "bandit"])
    promote.add_argument("version")
    promote.add_argument("--reason", default="promoted by an operator")
    rollback = models.add_parser("rollback")
    rollback.add_argument("kind", choices=["interest", "bandit"])
    rollback.add_argument("--reason", default="rolled back by an operator")
    for sub in (listing, promote, rollback):
        sub.set_defaults(run=cmd_models)

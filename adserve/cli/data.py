"""`adserve migrate` and `adserve import events`: the schema and historical data."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from adserve.cli.common import migrated_url, run_with_database
from adserve.learning.services import import_events
from adserve.signing.identity import UserKeys

if TYPE_CHECKING:
    import argparse

    from adserve.settings import Settings

__all__ = ["register"]


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    migrated_url(settings)
    print("database schema is at head")
    return 0


def cmd_import_events(args: argparse.Namespace, settings: Settings) -> int:
    path, user_keys = Path(args.file), UserKeys(settings.secret_key)
    stored = run_with_database(
        migrated_url(settings), settings, lambda database: import_events(database, path, user_keys)
    )
    print(f"imported {stored} new behaviour events from {args.file}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    migrate = commands.add_parser("migrate", help="upgrade the database schema to head")
    migrate.set_defaults(run=cmd_migrate)

    importer = commands.add_parser("import", help="import historical data").add_subparsers(
        dest="import_command", required=True
    )
    events = importer.add_parser("events", help="behaviour events from CSV or Parquet")
    events.add_argument("file", help="columns user_id, item_id, timestamp [, type, category, price]")
    events.set_defaults(run=cmd_import_events)

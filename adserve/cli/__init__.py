"""The `adserve` command line: one module per command group.

`serve` (serve, worker), `demo`, `data` (migrate, import), `admin` (keys, models), `interest`
(train, evaluate), `bandit` (learn, ope) and `simulate`. Each registers its sub-commands on the
parser and runs them with the settings `main` loaded; commands that touch the database migrate it
first and share one `adserve.db.engine.Database` for their whole run.
"""

from __future__ import annotations

import argparse
import sys

from adserve.cli import admin, bandit, data, demo, interest, serve, simulate
from adserve.errors import UserError
from adserve.logging_config import configure_logging
from adserve.settings import SettingsError, load_settings

__all__ = ["build_parser", "main"]

COMMAND_GROUPS = (serve, demo, data, admin, interest, bandit, simulate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adserve", description="Self-hosted ad-targeting service")
    commands = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
        configure_logging(settings.log_level, settings.log_format)  # worker and demo log JSON too
        return args.run(args, settings)
    except SettingsError as exc:
        print(f"adserve: configuration error: {exc}", file=sys.stderr)
        return 2
    except UserError as exc:
        print(f"adserve: {exc.detail}", file=sys.stderr)
        return 2

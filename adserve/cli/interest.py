"""`adserve train` and `adserve evaluate`: the interest model from the logs in Postgres."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from adserve.cli.common import migrated_url, run_with_database
from adserve.errors import UserError
from adserve.jobs.gate import TrainingRun, train_and_gate
from adserve.learning.registry import Registry
from adserve.learning.services import load_training_data

if TYPE_CHECKING:
    import argparse

    from adserve.db.engine import Database
    from adserve.settings import Settings

__all__ = ["register"]


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    """The retrain job's path, on demand: train a challenger, gate it against the champion."""
    # imported here: torch takes seconds to import and only train and evaluate need it
    from adserve.interest.evaluation import format_report

    url = migrated_url(settings)
    run = TrainingRun(days=args.days, max_epochs=args.epochs, seed=args.seed, threads=os.cpu_count() or 1)

    retrained = run_with_database(
        url, settings, lambda database: train_and_gate(database, url, run, settings)
    )
    if retrained.path is None or retrained.decision is None:
        print(
            f"adserve: {retrained.skipped} (import some with `adserve import events FILE`)",
            file=sys.stderr,
        )
        return 2
    metrics_file = retrained.path / "metrics.json"
    if metrics_file.exists():
        print(format_report(json.loads(metrics_file.read_text()).get("metrics", {})))
    status = "champion" if retrained.decision.promote else "rejected"
    print(f"gate: {retrained.decision.reason}")
    print(f"wrote {retrained.path} ({status})")
    return 0


async def _evaluated_version(database: Database) -> str | None:
    """The champion's folder, else the newest version's."""
    async with database.sessionmaker() as session:
        registry = Registry(session)
        row = await registry.champion("interest") or await registry.latest("interest")
        return row.path if row else None


def cmd_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    # imported here: torch takes seconds to import and only train and evaluate need it
    from adserve.interest.evaluation import format_report
    from adserve.interest.training import evaluate_checkpoint

    url = migrated_url(settings)
    path = args.model or run_with_database(url, settings, _evaluated_version)
    if path is None:
        raise UserError("no interest model yet: run `adserve train` first")
    data = asyncio.run(load_training_data(url, args.days, outcome_window_s=settings.bandit.reward_window_s))
    report = evaluate_checkpoint(path, data.sequences, data.click_examples, precision=args.precision)
    print(f"model {path}")
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, sort_keys=True))
        print(f"wrote {args.json}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser(
        "train", help="train an interest model from Postgres and gate it against the champion"
    )
    train.add_argument("--days", type=float, help="rolling window of logs (default: all)")
    train.add_argument("--epochs", type=int, help="maximum epochs (default: early stopping decides)")
    train.add_argument("--seed", type=int, default=0)
    train.set_defaults(run=cmd_train)

    evaluate = commands.add_parser("evaluate", help="evaluate an interest model beside baselines")
    evaluate.add_argument("--model", help="version folder (default: the champion, else the newest)")
    evaluate.add_argument("--days", type=float)
    evaluate.add_argument("--precision", choices=["fp32", "int8"], default="fp32")
    evaluate.add_argument("--json", help="also write the report as JSON here")
    evaluate.set_defaults(run=cmd_evaluate)

"""`adserve learn` and `adserve ope`: the bandit's learning step and off-policy evaluation."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from adserve.bandit import obd
from adserve.bandit.ope import format_table
from adserve.cli.common import migrated_url, run_with_database
from adserve.learning.learner import LearnStep, learn_once
from adserve.learning.ope import ope_from_logs
from adserve.learning.rewards import RewardJoin, join_rewards_once

if TYPE_CHECKING:
    import argparse

    from adserve.bandit.ope import OpeReport
    from adserve.db.engine import Database
    from adserve.settings import Settings

__all__ = ["register"]


def cmd_learn(args: argparse.Namespace, settings: Settings) -> int:
    """What the `bandit_learning` job does, once: the reward join, then one learning step."""

    async def learn(database: Database) -> tuple[RewardJoin, LearnStep]:
        joined = await join_rewards_once(database, reward_window_s=settings.bandit.reward_window_s)
        return joined, await learn_once(database, settings, seed=args.seed)

    joined, step = run_with_database(migrated_url(settings), settings, learn)
    window = settings.bandit.reward_window_s
    print(f"reward join: {joined.joined} decisions labelled (reward window {window:g} s)")
    row = step.registered
    if row is None:
        print(f"nothing new to learn ({step.skipped or 'no un-learned rewarded decisions'})")
        return 0
    metrics = row.metrics
    print(
        f"learned {metrics['examples']} decisions ({metrics['clicks']} clicks, revenue {metrics['revenue']:.4f}) "
        f"on top of {metrics['base_version'] or 'a fresh policy'}; "
        f"{metrics['examples_learned']} examples in this model"
    )
    for name, gate in (metrics.get("gate") or {}).items():
        snips = gate["snips_revenue"]
        print(f"  gate {name:8} SNIPS revenue/decision {snips['value']} [{snips['low']}, {snips['high']}]")
    print(f"bandit {row.version}: {row.status} ({row.reason}) at {row.path}")
    return 0


def cmd_ope(args: argparse.Namespace, settings: Settings) -> int:
    if args.obd:
        result = obd.run_obd(Path(args.obd), seed=args.seed)
        print(obd.format_table(result))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2, sort_keys=True, default=str))
            print(f"wrote {args.json}")
        return 0
    return _ope_logs(args, settings)


def _ope_logs(args: argparse.Namespace, settings: Settings) -> int:
    """`adserve ope` without --obd: the bandit's logged decisions in Postgres (last --days)."""
    until = datetime.now(UTC)
    since = until - timedelta(days=args.days)

    async def evaluate(database: Database) -> OpeReport:
        return await ope_from_logs(
            database, since, until, args.challenger, args.interest_model, seed=args.seed
        )

    report = run_with_database(migrated_url(settings), settings, evaluate)
    print(f"{report.n} rewarded decisions from {since:%Y-%m-%d %H:%M} to {until:%Y-%m-%d %H:%M} UTC")
    print(format_table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2, sort_keys=True))
        print(f"wrote {args.json}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    ope = commands.add_parser("ope", help="off-policy evaluation")
    ope.add_argument("--obd", help="an Open Bandit Dataset campaign folder")
    ope.add_argument("--json", help="also write the estimates as JSON here")
    ope.add_argument("--seed", type=int, default=0)
    ope.add_argument(
        "--days", type=float, default=7.0, help="without --obd: logged decisions of the last N days"
    )
    ope.add_argument("--challenger", help="without --obd: a saved bandit policy folder to evaluate")
    ope.add_argument("--interest-model", help="without --obd: an interest model folder as DR's reward model")
    ope.set_defaults(run=cmd_ope)

    learn = commands.add_parser("learn", help="bandit: reward join and one learning step")
    learn.add_argument("--seed", type=int, default=0)
    learn.set_defaults(run=cmd_learn)

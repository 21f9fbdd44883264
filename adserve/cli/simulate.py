"""`adserve simulate --compare`: every policy on one simulated market, in-process."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from adserve.sim.compare import CompareConfig, compare, format_table, load_runs, summary_rows, write_outputs

if TYPE_CHECKING:
    import argparse

    from adserve.settings import Settings

__all__ = ["register"]


def cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    if not args.compare:
        print("adserve: simulate needs --compare (the in-process policy comparison)", file=sys.stderr)
        return 2
    policies = tuple(args.policies.split(",")) if args.policies else None
    extra = {"policies": policies} if policies else {}
    config = CompareConfig.from_settings(
        settings, decisions=args.decisions, seed=args.seed, objective=args.objective, **extra
    )
    if args.merge:
        runs = load_runs([Path(d) for d in args.merge])
    else:
        runs = compare(config, progress=lambda line: print(line, flush=True))
    paths = write_outputs(runs, config, Path(args.out))
    print(format_table(summary_rows(runs)))
    print(f"wrote {paths['csv']}, {paths['png']} and {paths['summary']}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    simulate = commands.add_parser("simulate", help="run policies against the simulated market in-process")
    simulate.add_argument("--compare", action="store_true", help="every policy on the same world and seed")
    simulate.add_argument("--decisions", type=int, default=200_000)
    simulate.add_argument("--seed", type=int, default=7)
    simulate.add_argument("--out", default="bench/results/sim", help="folder for the CSV, PNG and summary")
    simulate.add_argument("--policies", help="comma-separated subset (default: all)")
    simulate.add_argument(
        "--objective",
        choices=("clicks", "revenue"),
        default="clicks",
        help="what the policies maximise: clicks (against the CTR oracle) or revenue (the service's "
        "default objective, against the revenue oracle)",
    )
    simulate.add_argument("--merge", nargs="+", metavar="DIR", help="combine the runs saved in these folders")
    simulate.set_defaults(run=cmd_simulate)

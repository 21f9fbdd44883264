"""The cold-start scorer's history lift: the empirical CTR scorer, served greedily on the simulated
market, at several values of `serving.history_lift`; expected CTR over the CTR oracle per window.

    .venv/bin/python bench/empirical_lift.py [--seed 7] [--decisions 20000] [--lifts 0,1,3,10,30]

The scorer is the serving one (`adserve.learning.empirical_ctr.EmpiricalCTRScorer`, the service's
prior of 1 click in 100 impressions) with per-creative counts updated after every decision, as the
service's counts refresh; lift 0 is per-creative CTR alone. What it measures is the cold start:
what serves before an interest model that scores ads is promoted.
"""

from __future__ import annotations

import argparse

from adserve.sim.compare import _EmpiricalCounts
from adserve.sim.harness import GreedyPolicy, run
from adserve.sim.oracle import Oracle
from adserve.sim.world import World, WorldConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--decisions", type=int, default=20_000)
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--lifts", default="0,1,3,10,30")
    args = parser.parse_args()
    size = args.decisions // args.windows
    print(
        f"seed {args.seed}, {args.decisions:,} decisions; expected CTR × CTR oracle per {size:,}-decision window"
    )
    print(
        "| history_lift | "
        + " | ".join(f"{i * size:,}–{(i + 1) * size:,}" for i in range(args.windows))
        + " | all |"
    )
    print("|---|" + "---:|" * (args.windows + 1))
    for lift in (float(value) for value in args.lifts.split(",")):
        world = World(WorldConfig(seed=args.seed))
        oracle = Oracle(world)
        counts = _EmpiricalCounts(1.0, 100.0, lift)
        results = run(
            world, counts.scorer, GreedyPolicy("ctr"), args.decisions, oracle=oracle, on_outcome=[counts]
        )
        windows = [results.window(i * size, (i + 1) * size) for i in range(args.windows)]
        whole = results.window(0, args.decisions)
        cells = [f"{w.expected_ctr / w.oracle_ctr:.2f}" for w in windows]
        print(
            f"| {lift:g} | " + " | ".join(cells) + f" | {whole.expected_ctr / whole.oracle_ctr:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()

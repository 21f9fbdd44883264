"""How fast the in-process simulator runs: traffic alone, and decisions through the harness.

    .venv/bin/python bench/sim_speed.py [--decisions 50000] [--seed 7]

Prints one Markdown table for the "Simulated market" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import platform
import time
from itertools import islice

from adserve.sim import ConstantScorer, OraclePolicy, Traffic, UniformRandomPolicy, World, WorldConfig, run

__all__ = ["main"]


def _traffic_rate(world: World, n_pages: int) -> float:
    started = time.perf_counter()
    for _ in islice(Traffic(world), n_pages):
        pass
    return n_pages / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    started = time.perf_counter()
    world = World(WorldConfig(seed=args.seed))
    build_s = time.perf_counter() - started
    pages_per_s = _traffic_rate(world, args.decisions)
    uniform = run(world, ConstantScorer(), UniformRandomPolicy(), args.decisions)
    oracle = run(world, ConstantScorer(), OraclePolicy(world), args.decisions)

    print(
        f"machine: {platform.node()} · {platform.processor() or platform.machine()} · python {platform.python_version()}"
    )
    print(f"world seed {args.seed}, default config, built in {build_s:.2f} s\n")
    print("| what | rate | CTR | oracle CTR | uniform CTR |")
    print("|---|---|---|---|---|")
    print(f"| traffic only (pages + events) | {pages_per_s:,.0f} pages/s | | | |")
    for label, results in (("harness, uniform random", uniform), ("harness, oracle policy", oracle)):
        print(
            f"| {label}, {len(results):,} decisions | {results.decisions_per_second:,.0f} decisions/s "
            f"| {results.ctr:.4f} | {results.oracle_ctr:.4f} | {results.uniform_ctr:.4f} |"
        )


if __name__ == "__main__":
    main()

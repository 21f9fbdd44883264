"""Offline evaluation table on generated data: the interest model against its baselines.

    .venv/bin/python bench/interest_eval.py [--users 3000] [--items 1000] [--max-seconds 300] [--json PATH]

Behaviour with sequential structure and clicks from a known logistic model
(adserve.interest.synthetic); default architecture and training settings, stage 1 capped at
--max-seconds; leave-one-out full ranking for next item, newest 15% of impressions for clicks;
then the same checkpoint evaluated through the int8 serving path. Prints Markdown for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from interest_common import machine

from adserve.interest.evaluation import click_metrics
from adserve.interest.synthetic import (
    generate_behaviour,
    generate_click_log,
    make_creatives,
    true_click_probability,
)
from adserve.interest.training import TrainConfig, evaluate_checkpoint, split_click_examples, train_interest

__all__ = ["main"]


def _table(section: dict[str, dict[str, float]]) -> list[str]:
    columns = list(next(iter(section.values())))
    lines = ["| model | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for name, values in section.items():
        lines.append(f"| {name} | " + " | ".join(f"{values[c]:.4f}" for c in columns) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--length", type=float, default=30.0)
    parser.add_argument("--impressions", type=int, default=12, help="logged impressions per user")
    parser.add_argument("--max-seconds", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    sequences, catalogue = generate_behaviour(
        n_users=args.users, n_items=args.items, mean_length=args.length, seed=args.seed
    )
    clicks = generate_click_log(
        sequences, make_creatives(catalogue, 60, args.seed), args.impressions, args.seed
    )
    started = time.perf_counter()
    result = train_interest(
        sequences,
        clicks,
        train_config=TrainConfig(seed=args.seed, max_seconds=args.max_seconds, progress=False),
    )
    seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as root:
        path = result.save(root, "bench")
        int8 = evaluate_checkpoint(path, sequences, clicks, precision="int8")
    report = dict(result.report)
    report["next_item_int8"] = {"interest_int8": int8["next_item"]["interest"]}
    report["click_int8"] = {"interest_int8": int8["click"]["interest"]}
    # the generator's own click model on the same holdout: the ceiling any learned model can reach
    _, _, test = split_click_examples(clicks)
    oracle = np.array([true_click_probability(e.context, e.candidate) for e in test])
    report["click"]["oracle"] = click_metrics(oracle, np.array([e.clicked for e in test]))
    stats = result.metrics["training"]
    n_events = sum(len(e) for e in sequences.values())
    print(f"machine: {machine()}")
    print(
        f"data: {args.users} users, {args.items} items, {n_events} events, {len(clicks)} impressions "
        f"({sum(c.clicked for c in clicks)} clicks); trained {stats['epochs']} epochs "
        f"(best {stats['best_epoch']}, val NDCG@10 {stats['val_ndcg@10']:.4f}) in {seconds:.0f} s"
    )
    for section in ("next_item", "next_item_exclude_seen", "next_item_int8", "click", "click_int8"):
        print(f"\n{section}\n")
        print("\n".join(_table(report[section])))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

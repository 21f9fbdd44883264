"""Interest-model training throughput (stage 1, next item): sequences and events per second.

    .venv/bin/python bench/interest_train.py [--users 2000] [--items 2000] [--length 50] [--epochs 2]

Default architecture (hidden 64, 2 layers, max_len 200, batch 128, full softmax). A "sequence"
is one training window (up to max_len events, every position a target). Prints Markdown.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from interest_common import machine

from adserve.interest.synthetic import generate_behaviour
from adserve.interest.training import TrainConfig, resolve_device, train_interest

__all__ = ["main"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--length", type=float, default=50.0)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    sequences, _ = generate_behaviour(n_users=args.users, n_items=args.items, mean_length=args.length, seed=0)
    started = time.perf_counter()
    result = train_interest(
        sequences,
        train_config=TrainConfig(
            max_epochs=args.epochs, patience=args.epochs, device=args.device, progress=False
        ),
    )
    total = time.perf_counter() - started
    stats = result.metrics["training"]
    n_events = sum(len(e) for e in sequences.values())
    mean_window = n_events / max(stats["n_windows"], 1)
    print(f"machine: {machine()}; device {resolve_device(args.device)}")
    print()
    print(
        "| users | items | events | windows/epoch | epochs | sequences/s | events/s | wall s (incl. eval) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {args.users} | {args.items} | {n_events} | {stats['n_windows']} | {stats['epochs']} | "
        f"{stats['sequences_per_second']:.0f} | {stats['sequences_per_second'] * mean_window:.0f} | {total:.0f} |"
    )


if __name__ == "__main__":
    main()

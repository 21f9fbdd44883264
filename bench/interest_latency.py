"""Interest scorer latency on CPU: encode + score p50/p99, fp32 vs int8 dynamic quantisation.

    .venv/bin/python bench/interest_latency.py [--requests 200] [--items 20000] [--threads N]

For 50- and 200-event histories and 100 and 500 candidates: a new user per request (encode the
sequence, then score every candidate in one batch) and a returning user (encoding cached, score
only). Default architecture (hidden 64, 2 layers, max_len 200), random weights: latency does not
depend on what the weights are. Prints a Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from interest_common import machine, serving_checkpoint, time_requests

from adserve.interest.scorer import InterestScorer

__all__ = ["main"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--hidden", type=int, default=64, help="model width (int8 pays off only when wide)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as root:
        path = serving_checkpoint(Path(root), args.items, hidden=args.hidden)
        scorers = {p: InterestScorer(path, precision=p, device="cpu") for p in ("fp32", "int8")}
        print(
            f"machine: {machine()}; catalogue {args.items} items; hidden {args.hidden}; "
            f"{args.requests} requests per cell"
        )
        print()
        print("| events | candidates | path | fp32 p50 / p99 ms | int8 p50 / p99 ms | int8 speed-up (p50) |")
        print("|---:|---:|---|---:|---:|---:|")
        for n_events in (50, 200):
            for n_candidates in (100, 500):
                for cached, label in ((False, "encode + score"), (True, "score (cached encoding)")):
                    cells = {
                        p: time_requests(s, n_events, n_candidates, args.requests, cached, args.items)
                        for p, s in scorers.items()
                    }
                    fp, q = cells["fp32"], cells["int8"]
                    print(
                        f"| {n_events} | {n_candidates} | {label} | {fp[0]:.2f} / {fp[1]:.2f} | "
                        f"{q[0]:.2f} / {q[1]:.2f} | {fp[0] / q[0]:.2f}x |"
                    )


if __name__ == "__main__":
    main()

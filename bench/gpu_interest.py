"""Interest model on CUDA: scorer latency, micro-batched throughput and training throughput.

    .venv/bin/python bench/gpu_interest.py [--requests 200] [--items 20000]

Same cells as bench/interest_latency.py (50/200 events x 100/500 candidates, fp32), then
concurrent requests through MicroBatcher vs one at a time, then stage-1 training throughput.
Without a CUDA device it says so and exits with status 0 (nothing to measure here).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from interest_common import candidates, context, machine, serving_checkpoint, time_requests

from adserve.interest.scorer import InterestScorer, MicroBatcher
from adserve.interest.synthetic import generate_behaviour
from adserve.interest.training import TrainConfig, train_interest

__all__ = ["main"]


async def _concurrent(scorer: InterestScorer, n_requests: int, n_items: int, batched: bool) -> float:
    """Requests per second for n_requests concurrent 200-event, 100-candidate requests."""
    pool = candidates(100, n_items)
    contexts = [context(f"c{i}", 200, n_items, seed=10_000 + i) for i in range(n_requests)]
    batcher = MicroBatcher(scorer, max_requests=64, max_wait_s=0.002)
    started = time.perf_counter()
    if batched:
        await asyncio.gather(*(batcher.score(c, pool) for c in contexts))
        await batcher.close()
    else:
        for c in contexts:
            scorer.score(c, pool)
    torch.cuda.synchronize()
    return n_requests / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--items", type=int, default=20_000)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(
            "gpu_interest: no CUDA device on this machine; nothing measured (CPU figures: bench/interest_latency.py)"
        )
        return
    card = torch.cuda.get_device_name(0)
    print(f"machine: {machine()}; GPU {card}")
    with tempfile.TemporaryDirectory() as root:
        path = serving_checkpoint(Path(root), args.items)
        scorer = InterestScorer(path, precision="fp32", device="cuda")
        print("\n| events | candidates | path | p50 ms | p99 ms |\n|---:|---:|---|---:|---:|")
        for n_events in (50, 200):
            for n_candidates in (100, 500):
                for cached, label in ((False, "encode + score"), (True, "score (cached encoding)")):
                    p50, p99 = time_requests(
                        scorer, n_events, n_candidates, args.requests, cached, args.items
                    )
                    print(f"| {n_events} | {n_candidates} | {label} | {p50:.2f} | {p99:.2f} |")
        one = asyncio.run(_concurrent(scorer, 256, args.items, batched=False))
        many = asyncio.run(_concurrent(InterestScorer(path, device="cuda"), 256, args.items, batched=True))
        print(
            f"\n256 concurrent requests (200 events, 100 candidates, new users): one at a time {one:.0f} req/s, "
            f"micro-batched {many:.0f} req/s ({many / one:.1f}x)"
        )
    sequences, _ = generate_behaviour(n_users=4000, n_items=5000, mean_length=50, seed=0)
    result = train_interest(
        sequences, train_config=TrainConfig(max_epochs=2, patience=2, device="cuda", progress=False)
    )
    stats = result.metrics["training"]
    print(
        f"\ntraining (4000 users, 5000 items, default architecture): {stats['sequences_per_second']:.0f} sequences/s"
    )


if __name__ == "__main__":
    main()

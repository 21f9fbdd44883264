"""The click head's arithmetic floor: its numpy products at serving shapes, on random arrays.

A decision scores every candidate with the click head (`adserve/interest/inference.py`,
`ClickKernel.logits`): attention of each candidate over the user's memory, then the MLP. This
times the same sequence of products at the default sizes (hidden 64, MLP 128 → 64 → 1) for N
candidates and a memory of L events, and the products alone, so the serving profile's share
for the head can be read against what the arithmetic itself costs on this CPU.

    .venv/bin/python bench/click_head_floor.py --candidates 100 --events 51
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--events", type=int, default=51, help="memory rows: the null slot and 50 events")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--mlp", type=int, nargs=2, default=(128, 64))
    parser.add_argument("--repeat", type=int, default=3000)
    args = parser.parse_args()
    n, length, d = args.candidates, args.events, args.hidden
    h1, h2 = args.mlp
    rng = np.random.default_rng(0)

    def array(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    query, keys, values, creative = array(n, d), array(length, d), array(length, d), array(n, d)
    w_attended, w_product, first, context = array(d, h1), array(d, h1), array(n, h1), array(h1)
    w2, b2, w3, b3 = array(h1, h2), array(h2), array(h2, 1), array(1)
    ones = np.ones(length, dtype=np.float32)

    def head() -> np.ndarray:
        scores = query @ keys.T
        weights = np.exp(scores - scores.max())
        attended = (weights @ values) / (weights @ ones)[:, None]
        hidden = attended @ w_attended
        hidden += (creative * attended) @ w_product
        hidden += first
        hidden += context
        np.maximum(hidden, 0.0, out=hidden)
        hidden = hidden @ w2 + b2
        np.maximum(hidden, 0.0, out=hidden)
        return (hidden @ w3 + b3)[:, 0].astype(np.float64)

    def products_only() -> None:
        attended = (query @ keys.T) @ values
        ((attended @ w_attended) + (attended @ w_product)) @ w2 @ w3

    macs = n * (d * length + length * d + 2 * d * h1 + h1 * h2 + h2)
    print(
        f"{n} candidates, {length} memory rows, hidden {d}, MLP {h1} → {h2} → 1: {macs / 1e6:.2f} M multiply-adds"
    )
    for name, fn in (("click head", head), ("its products alone", products_only)):
        for _ in range(200):
            fn()
        started = time.perf_counter()
        for _ in range(args.repeat):
            fn()
        seconds = (time.perf_counter() - started) / args.repeat
        print(f"{name}: {seconds * 1e6:.1f} µs per decision ({2 * macs / seconds / 1e9:.0f} GFLOP/s)")


if __name__ == "__main__":
    main()

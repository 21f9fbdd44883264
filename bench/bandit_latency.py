"""Bandit latency and memory: VW predict/learn at K = 10, 20, 50, 100 actions, RSS over 1M predictions.

    .venv/bin/python bench/bandit_latency.py [--predictions 1000000] [--max-seconds 300] [--json PATH]

Three timings per K, each over `--calls` calls after a warm-up on a policy that has learned
`--warmup` examples (so the weights are not all zero):
- `choose`: the full serving call (top-K, featurisation, VW parse/predict/finish, sampling);
- `vw predict`: VW alone on pre-built example text (parse + predict + finish_example);
- `learn`: one labelled example, featurisation included (what the learner job pays).
Memory: one process calls `choose` `--predictions` times at K = 20 with varying contexts and
scores, sampling RSS; flat RSS means no per-example leak (examples are finished).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from typing import Any

import numpy as np
import psutil

from adserve.bandit.features import example_lines
from adserve.bandit.policy import PolicyConfig, VWPolicy
from adserve.bandit.records import LoggedDecision
from adserve.domain import Candidate, DecisionContext, Pricing

__all__ = ["main"]

PLACEMENTS = ("homepage-top", "article-side", "search-results", "product-bottom")
DEVICES = ("mobile", "desktop", "tablet")
GEOS = ("DE", "FR", "US", "GB", "JP")
KEYWORDS = ("shoes", "running", "trail", "sale", "jacket", "rain", "kids", "gift")


def make_candidates(k: int) -> list[Candidate]:
    return [
        Candidate(
            creative_id=1000 + i,
            campaign_id=100 + i // 3,
            advertiser_id=10 + i // 10,
            pricing=Pricing.CPC if i % 4 else Pricing.CPM,
            bid=0.2 + 0.05 * (i % 17) if i % 4 else 2.0 + 0.5 * (i % 7),
            category=f"cat{i % 12}",
            brand=f"brand{i % 25}",
            price=5.0 + 3.0 * (i % 40),
        )
        for i in range(k)
    ]


def make_context(rng: np.random.Generator, now: float) -> DecisionContext:
    return DecisionContext(
        placement=PLACEMENTS[rng.integers(len(PLACEMENTS))],
        now=now,
        page_category=f"page{rng.integers(20)}",
        keywords=tuple(KEYWORDS[j] for j in rng.choice(len(KEYWORDS), size=2, replace=False)),
        device=DEVICES[rng.integers(len(DEVICES))],
        geo=GEOS[rng.integers(len(GEOS))],
        hour=int(rng.integers(24)),
        position=int(rng.integers(1, 4)),
    )


def make_record(rng: np.random.Generator, candidates: list[Candidate], now: float) -> LoggedDecision:
    k = len(candidates)
    scores = tuple(float(x) for x in rng.uniform(0.005, 0.08, size=k))
    chosen = int(rng.integers(k))
    clicked = bool(rng.random() < scores[chosen])
    revenue = (
        candidates[chosen].bid * clicked
        if candidates[chosen].pricing is Pricing.CPC
        else candidates[chosen].bid / 1000
    )
    return LoggedDecision(
        context=make_context(rng, now),
        candidates=tuple(candidates),
        click_probabilities=scores,
        pmf=(1.0 / k,) * k,
        chosen=chosen,
        clicked=clicked,
        revenue=revenue,
    )


def percentiles_us(samples: list[float]) -> dict[str, float]:
    values = np.array(samples) * 1e6
    return {"p50_us": float(np.percentile(values, 50)), "p99_us": float(np.percentile(values, 99))}


def time_k(k: int, calls: int, warmup: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    candidates = make_candidates(k)
    policy = VWPolicy(PolicyConfig(top_k=k, seed=seed))
    policy.learn([make_record(rng, candidates, float(t)) for t in range(warmup)])

    inputs = [(make_context(rng, 0.0), rng.uniform(0.005, 0.08, size=k)) for _ in range(calls)]
    choose_s = []
    for context, scores in inputs:
        start = time.perf_counter()
        policy.choose(context, candidates, scores, rng)
        choose_s.append(time.perf_counter() - start)

    texts = [example_lines(context, candidates) for context, _ in inputs]
    workspace = policy._workspace  # VW alone, no locking or featurisation: the floor
    predict_s = []
    for lines in texts:
        start = time.perf_counter()
        examples = workspace.parse(lines)
        workspace.predict(examples)
        workspace.finish_example(examples)
        predict_s.append(time.perf_counter() - start)

    records = [make_record(rng, candidates, float(warmup + t)) for t in range(calls)]
    learn_s = []
    for record in records:
        start = time.perf_counter()
        policy.learn([record])
        learn_s.append(time.perf_counter() - start)
    policy.close()
    return {
        "k": k,
        "choose": percentiles_us(choose_s),
        "vw_predict": percentiles_us(predict_s),
        "learn": percentiles_us(learn_s),
    }


def memory_run(predictions: int, max_seconds: float, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    candidates = make_candidates(20)
    policy = VWPolicy(PolicyConfig(top_k=20, seed=seed))
    policy.learn([make_record(rng, candidates, float(t)) for t in range(2000)])
    process = psutil.Process()
    contexts = [make_context(rng, 0.0) for _ in range(1000)]
    scores = rng.uniform(0.005, 0.08, size=(1000, 20))
    samples = []
    sample_every = 50_000
    start = time.perf_counter()
    done = 0
    for done in range(1, predictions + 1):
        j = done % 1000
        policy.choose(contexts[j], candidates, scores[j], rng)
        if done == 10_000 or done % sample_every == 0:
            samples.append((done, process.memory_info().rss / 2**20))
        if done % 1000 == 0 and time.perf_counter() - start > max_seconds:
            break
    elapsed = time.perf_counter() - start
    policy.close()
    rss = [mb for _, mb in samples]
    return {
        "predictions": done,
        "seconds": elapsed,
        "per_prediction_us": elapsed / done * 1e6,
        "rss_mib_samples": samples,
        "rss_after_10k_mib": rss[0],
        "rss_end_mib": rss[-1],
        "rss_max_mib": max(rss),
    }


def machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(
            line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")
        )
    except (OSError, subprocess.CalledProcessError, StopIteration):
        model = platform.processor() or "unknown CPU"
    return f"{model}, {os.cpu_count()} cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=2000)
    parser.add_argument("--predictions", type=int, default=1_000_000, help="0 skips the memory run")
    parser.add_argument("--max-seconds", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the raw figures here")
    args = parser.parse_args()

    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "latency": [time_k(k, args.calls, args.warmup, args.seed) for k in (10, 20, 50, 100)],
        "memory": memory_run(args.predictions, args.max_seconds, args.seed) if args.predictions else None,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    print(f"{result['date']} · {result['machine']}\n")
    print("| K | choose p50 / p99 (µs) | VW predict p50 / p99 (µs) | learn p50 / p99 (µs) |")
    print("|---|---|---|---|")
    for row in result["latency"]:
        cells = [
            f"{row[key]['p50_us']:,.0f} / {row[key]['p99_us']:,.0f}"
            for key in ("choose", "vw_predict", "learn")
        ]
        print(f"| {row['k']} | " + " | ".join(cells) + " |")
    memory = result["memory"]
    if memory is None:
        return
    print(
        f"\nmemory: {memory['predictions']:,} choose calls at K=20 in {memory['seconds']:.0f} s "
        f"({memory['per_prediction_us']:.0f} µs each); RSS {memory['rss_after_10k_mib']:.1f} MiB after 10k, "
        f"{memory['rss_end_mib']:.1f} MiB at the end, max {memory['rss_max_mib']:.1f} MiB"
    )
    print("RSS samples (calls, MiB): " + ", ".join(f"{n:,}: {mb:.1f}" for n, mb in memory["rss_mib_samples"]))


if __name__ == "__main__":
    main()

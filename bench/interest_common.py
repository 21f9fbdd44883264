"""Shared pieces of the interest-model benchmarks: machine line, a serving-sized checkpoint, timers.

Not a benchmark itself; imported by bench/interest_*.py and bench/gpu_interest.py.
"""

from __future__ import annotations

import platform
import subprocess
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from adserve.domain import BehaviourEvent, Candidate, DecisionContext, EventType, Pricing
from adserve.interest.checkpoint import save_checkpoint
from adserve.interest.data import ItemVocabulary
from adserve.interest.network import InterestConfig, InterestModel, suggest_item_buckets
from adserve.interest.scorer import InterestScorer

__all__ = ["candidates", "context", "machine", "percentiles", "serving_checkpoint", "time_requests"]


def machine() -> str:
    """'<UTC date>, <CPU model> (<n> cores), torch <version>'."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    cores = torch.get_num_threads()
    return f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {model} ({cores} threads), torch {torch.__version__}"


def serving_checkpoint(root: Path, n_items: int = 20_000, **overrides: object) -> Path:
    """A default-architecture model over an n_items catalogue (random weights: latency only)."""
    vocab = ItemVocabulary([f"item-{i}" for i in range(n_items)])
    config = replace(
        InterestConfig(), n_items=len(vocab), item_buckets=suggest_item_buckets(len(vocab)), **overrides
    )
    torch.manual_seed(0)
    model = InterestModel(config)
    with torch.no_grad():
        model.next_item.vocab_hash.copy_(vocab.hash_rows(config.item_buckets))
    return save_checkpoint(root, model.eval(), vocab, None, {}, {}, version="bench")


def history(n_events: int, n_items: int, seed: int) -> tuple[BehaviourEvent, ...]:
    rng = np.random.default_rng(seed)
    start = 1_700_000_000.0
    return tuple(
        BehaviourEvent(
            EventType.PRODUCT_VIEW,
            start + 60.0 * i,
            item_id=f"item-{int(rng.integers(n_items))}",
            category=f"cat-{int(rng.integers(50))}",
        )
        for i in range(n_events)
    )


def context(user: str, n_events: int, n_items: int, seed: int) -> DecisionContext:
    events = history(n_events, n_items, seed)
    return DecisionContext(
        placement="homepage-top",
        now=events[-1].ts + 30.0,
        device="mobile",
        hour=12,
        user_key=user,
        history=events,
    )


def candidates(n: int, n_items: int, seed: int = 0) -> list[Candidate]:
    rng = np.random.default_rng(seed)
    return [
        Candidate(
            creative_id=i,
            campaign_id=i // 3,
            advertiser_id=i // 10,
            pricing=Pricing.CPC,
            bid=1.0,
            category=f"cat-{int(rng.integers(50))}",
            brand=f"brand-{int(rng.integers(100))}",
            product_ids=(f"item-{int(rng.integers(n_items))}", f"item-{int(rng.integers(n_items))}"),
            price=float(rng.uniform(5, 200)),
        )
        for i in range(n)
    ]


def percentiles(samples_s: list[float]) -> tuple[float, float]:
    """(p50, p99) in milliseconds."""
    values = np.array(samples_s) * 1000.0
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


def time_requests(
    scorer: InterestScorer, n_events: int, n_candidates: int, requests: int, cached: bool, n_items: int
) -> tuple[float, float]:
    """p50/p99 ms of scorer.score: each request a new user (encode + score) or, cached, the same user."""
    pool = candidates(n_candidates, n_items)
    contexts = [context(f"u{i}", n_events, n_items, seed=i) for i in range(1 if cached else requests + 5)]
    for c in contexts[:5]:  # warm-up
        scorer.score(c, pool)
    samples = []
    for i in range(requests):
        c = contexts[0] if cached else contexts[i + 5]
        if scorer.device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        scorer.score(c, pool)
        if scorer.device.type == "cuda":
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - started)
    return percentiles(samples)

"""The interest-model training process: `python -m adserve.jobs.retrain --out FILE …`.

Started by the retrain job as a child process (lower CPU priority, a bounded number of torch
threads) so training never runs on a serving event loop. It loads the rolling window of logs,
trains warm-started from the champion, evaluates challenger, champion and the empirical CTR scorer
on the same holdout and
writes `{"path": …, "pair": …, "click_examples": …}` (or `{"skipped": reason}`) as JSON to --out.
It runs under the parent's settings (`--settings`, JSON), not its own environment's. Registering and
promoting are left to the parent (`adserve.jobs.gate.apply_gate`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

__all__ = ["main"]

NICENESS = 19  # the lowest priority: serving and Postgres go first


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m adserve.jobs.retrain")
    parser.add_argument("--out", required=True, help="write the result JSON here")
    parser.add_argument("--days", type=float, help="rolling window of logs (default: all)")
    parser.add_argument("--warm-start", help="the champion's version folder")
    parser.add_argument("--max-epochs", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--settings", help="the parent's settings as JSON (default: load them)")
    args = parser.parse_args(argv)
    os.nice(NICENESS)

    import msgspec
    import torch

    from adserve.db.engine import resolve_database_url
    from adserve.jobs.gate import evaluate_pair
    from adserve.learning.empirical_ctr import EmpiricalCTRScorer
    from adserve.learning.services import load_training_data, train_interest_version
    from adserve.settings import Settings, load_settings

    torch.set_num_threads(args.threads)
    if args.settings:
        settings = msgspec.json.decode(Path(args.settings).read_bytes(), type=Settings)
    else:
        settings = load_settings()
    url, _embedded = resolve_database_url(settings)
    data = asyncio.run(load_training_data(url, args.days, outcome_window_s=settings.bandit.reward_window_s))
    out = Path(args.out)
    if not data.sequences:
        out.write_text(json.dumps({"skipped": "no behaviour events in the window"}))
        return 0
    path, _metrics = train_interest_version(
        data,
        settings,
        seed=args.seed,
        max_epochs=args.max_epochs or None,
        warm_start=args.warm_start,
        progress=False,
    )
    serving = settings.serving
    empirical = EmpiricalCTRScorer(
        serving.ctr_prior_clicks, serving.ctr_prior_impressions, serving.history_lift
    )
    pair = evaluate_pair(path, args.warm_start, data.sequences, data.click_examples, empirical)
    click_examples = {
        "outcome_window_s": settings.bandit.reward_window_s,
        "impressions": len(data.click_examples),
        "clicks": sum(example.clicked for example in data.click_examples),
    }
    out.write_text(json.dumps({"path": str(path), "pair": pair, "click_examples": click_examples}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How steady the served fusion is on a shop's first clicks: train where the logs stood at a
cutoff, rank the impressions that came next.

    .venv/bin/python bench/fusion_fit.py --database-url postgresql://…/adserve \\
        [--cutoffs 1500,2000,2500,3000,9000] [--seeds 0,1] [--future 4000]

Reads the logs of a service that has run (a demo's database, say). For each cutoff (the number of
impressions whose outcome was known) and seed it trains an interest model the way the
`interest_retrain` job does (`load_training_data(until=…)`, `train_interest`, 3 epochs), then
scores the next `--future` impressions with:

- `served`: the version's own fusion (`ClickFusion.fit`, what `adserve serve` would load);
- `validation-only`: every weight fitted on the validation part alone, unbounded (the fit served
  before 2026-12-01);
- `without-click-head`: the served fit with the click head's logit left out.

and prints each one's AUC and its log loss against the base rate's (negative: better than a
constant), then the mean and the worst over all fits.
"""

from __future__ import annotations

import argparse
import asyncio
import math
from datetime import UTC, datetime

import numpy as np

from adserve.interest import training
from adserve.interest.evaluation import click_metrics
from adserve.interest.fusion import FEATURES, ClickFusion, fit_logistic, item_categories
from adserve.learning.services import load_training_data

__all__ = ["main"]

CLICK = FEATURES.index("click_logit")


def validation_only(x_val: np.ndarray, y_val: np.ndarray) -> ClickFusion:
    penalty = np.ones(len(FEATURES))
    penalty[0] = 1e-6
    start = np.zeros(len(FEATURES))
    rate = float(np.clip(y_val.mean(), 1e-4, 1 - 1e-4))
    start[0] = math.log(rate / (1 - rate))
    bounds = np.zeros(len(FEATURES), dtype=bool)
    return ClickFusion(tuple(fit_logistic(x_val, y_val, start=start, penalty=penalty, non_negative=bounds)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--cutoffs", default="1500,2000,2500,3000,9000")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--future", type=int, default=4000)
    parser.add_argument("--outcome-window-s", type=float, default=20.0, help="the service's reward window")
    args = parser.parse_args()
    window = args.outcome_window_s
    everything = asyncio.run(load_training_data(args.database_url, None, outcome_window_s=window))
    logged = sorted(everything.click_examples, key=lambda e: e.context.now)
    print(f"{len(logged):,} impressions, {sum(e.clicked for e in logged):,} clicks in the logs")
    results: dict[str, list[tuple[float, float]]] = {}
    for cutoff in (int(c) for c in args.cutoffs.split(",")):
        if cutoff >= len(logged):
            print(f"cutoff {cutoff}: the logs hold only {len(logged)} impressions")
            continue
        known_at = logged[cutoff].context.now
        until = datetime.fromtimestamp(known_at + window, UTC)
        data = asyncio.run(load_training_data(args.database_url, None, outcome_window_s=window, until=until))
        future = [e for e in logged if e.context.now > known_at + window][: args.future]
        y_future = np.array([float(e.clicked) for e in future])
        for seed in (int(s) for s in args.seeds.split(",")):
            config = training.TrainConfig(seed=seed, progress=False, max_epochs=3)
            result = training.train_interest(data.sequences, data.click_examples, train_config=config)
            if result.fusion is None:
                print(f"cutoff {cutoff} seed {seed}: no fusion (too few impressions or no click)")
                continue
            scorer = training._training_scorer(
                result.model, result.vocab, result.calibration, training.resolve_device("cpu")
            )
            train, val, _ = training.split_click_examples(data.click_examples)
            categories = item_categories(data.sequences.values())
            rows = training.fusion_rows(scorer, categories, train, val)
            x_val, y_val = rows.x[rows.click_held_out], rows.labels[rows.click_held_out]
            x_future = training._fusion_features(scorer, future)
            x_without_head = rows.x.copy()
            x_without_head[:, CLICK] = 0.0
            clicked = rows.labels[~rows.click_held_out]
            fits = {
                "served": result.fusion,
                "validation-only": validation_only(x_val, y_val),
                "without-click-head": ClickFusion.fit(x_without_head, rows.labels),
            }
            base = click_metrics(np.full(len(y_future), np.mean(clicked)), y_future)["logloss"]
            line = [
                f"cutoff {cutoff} ({int(clicked.sum())} training, {int(y_val.sum())} validation clicks) seed {seed}"
            ]
            for name, fit in fits.items():
                figures = click_metrics(fit(x_future), y_future)
                results.setdefault(name, []).append((figures["auc"], figures["logloss"] - base))
                line.append(
                    f"{name} AUC {figures['auc']:.3f} Δlog loss {1000 * (figures['logloss'] - base):+.2f}e-3"
                )
            print(" | ".join(line), flush=True)
    for name, per_fit in results.items():
        a = np.array(per_fit)
        print(
            f"{name:20s} AUC mean {a[:, 0].mean():.3f}, worst {a[:, 0].min():.3f} · "
            f"Δlog loss mean {1000 * a[:, 1].mean():+.2f}e-3, worst {1000 * a[:, 1].max():+.2f}e-3 "
            f"({len(a)} fits)"
        )


if __name__ == "__main__":
    main()

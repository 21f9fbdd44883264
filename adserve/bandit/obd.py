"""Real logged bandit data: train and evaluate a VW policy on the Open Bandit Dataset format.

A dataset directory holds one campaign CSV (`all.csv`, `men.csv`, `women.csv`, …: timestamp,
item_id, position, click, propensity_score, user_feature_*, user-item_affinity_*) and
`item_context.csv` (item_id, item_feature_0 numeric, item_feature_1.. categorical).

Each logged row becomes a `LoggedDecision` in this service's own terms, so the same featurisation,
learning and OPE code runs on it as on our own logs:
- context: position (1–3) and hour as shared features, the hashed user features as keywords;
- candidates: every item, as a CPC creative with bid 1 (revenue = click), item_feature_1/2 as
  category/brand and item_feature_0 (a standardised price) as price via exp(), a monotone map
  to the positive prices `price_bucket` expects;
- the interest-model score is the training split's click rate for every item: OBD has no
  interest model, so the policy must learn everything from clicks;
- the logged pmf is uniform over the items when the logged propensity says so (the random
  policy); otherwise the logged propensity sits on the chosen item and the rest is spread
  evenly (only the chosen entry matters to IPS and SNIPS).

`run_obd` learns on the first 70% of rows by time and evaluates on the last 30% with IPS,
SNIPS and DR (reward model: per-item click rate fit on the training split only).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from adserve.bandit.ope import EmpiricalCtrModel, evaluate, greedy_target, logging_target, policy_target
from adserve.bandit.policy import PolicyConfig, VWPolicy
from adserve.bandit.records import LoggedDecision
from adserve.domain import Candidate, DecisionContext, Pricing

__all__ = ["ObdData", "find_campaign_csv", "format_table", "load_obd", "main", "run_obd"]

ITEM_CONTEXT_CSV = "item_context.csv"


def find_campaign_csv(directory: Path) -> Path:
    """The one campaign CSV beside item_context.csv; an error names what was found otherwise."""
    found = sorted(p for p in Path(directory).glob("*.csv") if p.name != ITEM_CONTEXT_CSV)
    if len(found) != 1:
        names = [p.name for p in found] or "none"
        raise ValueError(
            f"{directory} must hold exactly one campaign CSV besides {ITEM_CONTEXT_CSV}; found {names}"
        )
    if not (Path(directory) / ITEM_CONTEXT_CSV).is_file():
        raise ValueError(f"{directory} has no {ITEM_CONTEXT_CSV}")
    return found[0]


def _read_items(path: Path) -> tuple[Candidate, ...]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    candidates = []
    for row in sorted(rows, key=lambda r: int(r["item_id"])):
        categorical = sorted(k for k in row if k.startswith("item_feature_") and k != "item_feature_0")
        values = [row[k] for k in categorical]
        candidates.append(
            Candidate(
                creative_id=int(row["item_id"]),
                campaign_id=int(row["item_id"]),
                advertiser_id=0,
                pricing=Pricing.CPC,
                bid=1.0,
                category=values[0] if values else None,
                brand=values[1] if len(values) > 1 else None,
                product_ids=tuple(values[2:]),
                price=math.exp(float(row["item_feature_0"])) if row.get("item_feature_0") else None,
            )
        )
    if [c.creative_id for c in candidates] != list(range(len(candidates))):
        raise ValueError(f"{path}: item ids must be 0..n-1")
    return tuple(candidates)


class ObdData:
    """One campaign's logged rows, oldest first, as `LoggedDecision`s over every item.

    `prior` is the click probability given as every item's interest score; set it with
    `with_prior` (run_obd uses the training split's click rate, so nothing leaks from the test).
    """

    def __init__(
        self, campaign_csv: Path, items: tuple[Candidate, ...], records: list[LoggedDecision]
    ) -> None:
        self.campaign_csv = campaign_csv
        self.items = items
        self.records = records

    def with_prior(self, records: list[LoggedDecision], prior: float) -> list[LoggedDecision]:
        scores = (prior,) * len(self.items)
        return [replace(r, click_probabilities=scores) for r in records]


def _logged_pmf(n_items: int, chosen: int, propensity: float) -> tuple[float, ...]:
    if math.isclose(propensity, 1.0 / n_items, rel_tol=1e-6):
        return (1.0 / n_items,) * n_items
    rest = (1.0 - propensity) / (n_items - 1)
    return tuple(propensity if i == chosen else rest for i in range(n_items))


def load_obd(directory: Path | str) -> ObdData:
    directory = Path(directory)
    campaign_csv = find_campaign_csv(directory)
    items = _read_items(directory / ITEM_CONTEXT_CSV)
    n_items = len(items)
    placement = f"obd-{campaign_csv.stem}"
    uniform_scores = (0.0,) * n_items
    records = []
    with campaign_csv.open(newline="") as f:
        reader = csv.DictReader(f)
        user_columns = sorted(c for c in reader.fieldnames or () if c.startswith("user_feature_"))
        for row in reader:
            when = datetime.fromisoformat(row["timestamp"])
            chosen = int(row["item_id"])
            clicked = row["click"].strip() in {"1", "1.0"}
            records.append(
                LoggedDecision(
                    context=DecisionContext(
                        placement=placement,
                        now=when.timestamp(),
                        keywords=tuple(f"{c.removeprefix('user_')}={row[c]}" for c in user_columns),
                        hour=when.hour,
                        position=int(row["position"]),
                    ),
                    candidates=items,
                    click_probabilities=uniform_scores,
                    pmf=_logged_pmf(n_items, chosen, float(row["propensity_score"])),
                    chosen=chosen,
                    clicked=clicked,
                    revenue=1.0 if clicked else 0.0,
                    decision_id=row.get("") or None,
                )
            )
    records.sort(key=lambda r: r.context.now)
    return ObdData(campaign_csv, items, records)


def _split_summary(records: list[LoggedDecision]) -> dict[str, Any]:
    return {
        "rows": len(records),
        "clicks": int(sum(r.clicked for r in records)),
        "from": datetime.fromtimestamp(records[0].context.now, tz=UTC).isoformat(),
        "to": datetime.fromtimestamp(records[-1].context.now, tz=UTC).isoformat(),
    }


def run_obd(
    directory: Path | str,
    seed: int = 0,
    train_fraction: float = 0.7,
    n_bootstrap: int = 1000,
    config: PolicyConfig | None = None,
) -> dict[str, Any]:
    """Train on the first `train_fraction` by time, evaluate on the rest; a JSON-ready dict.

    `result["policies"][name]["estimates"][estimator]["ctr"]` is {value, low, high} for
    name in {"vw_policy" (as it would serve, exploring), "vw_greedy", "logging"} and
    estimator in {"ips", "snips", "dr"}.
    """
    data = load_obd(directory)
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    cut = int(len(data.records) * train_fraction)
    if cut == 0 or cut == len(data.records):
        raise ValueError(f"{len(data.records)} rows are too few to split at {train_fraction}")
    prior = max(sum(r.clicked for r in data.records[:cut]) / cut, 1e-4)
    train = data.with_prior(data.records[:cut], prior)
    test = data.with_prior(data.records[cut:], prior)

    config = config or PolicyConfig(top_k=len(data.items), seed=seed)
    policy = VWPolicy(config, version=f"obd-{data.campaign_csv.stem}-seed{seed}")
    policy.learn(train)
    reward_model = EmpiricalCtrModel.fit(train)
    report = evaluate(
        test,
        {"vw_policy": policy_target(policy), "vw_greedy": greedy_target(policy), "logging": logging_target},
        reward_model=reward_model,
        n_bootstrap=n_bootstrap,
        seed=seed,
        metrics=("ctr",),
    )
    policy.close()
    ope = report.to_dict()
    logging_ctr = ope["policies"]["logging"]["estimates"]["ips"]["ctr"]["value"]
    return {
        "dataset": str(Path(directory)),
        "campaign_csv": data.campaign_csv.name,
        "items": len(data.items),
        "positions": sorted({r.context.position for r in data.records}),
        "seed": seed,
        "train": _split_summary(train),
        "test": _split_summary(test),
        "policy_config": config.to_dict(),
        "reward_model": "per-item click rate fit on the training split (EmpiricalCtrModel)",
        "interval": ope["interval"],
        "n_bootstrap": n_bootstrap,
        "logging_ctr": logging_ctr,
        "policies": ope["policies"],
    }


def format_table(result: dict[str, Any]) -> str:
    """A Markdown table of a `run_obd` result: CTR per policy and estimator with 95% intervals."""
    lines = [
        f"OBD `{result['campaign_csv']}`: {result['items']} items, train {result['train']['rows']} rows "
        f"({result['train']['clicks']} clicks), test {result['test']['rows']} rows "
        f"({result['test']['clicks']} clicks), seed {result['seed']}",
        "",
        "| policy | estimator | CTR | 95% CI | vs logging | ESS |",
        "|---|---|---|---|---|---|",
    ]
    for name, estimate in result["policies"].items():
        for estimator, by_metric in estimate["estimates"].items():
            ctr = by_metric["ctr"]
            if ctr["value"] is None:
                lines.append(f"| {name} | {estimator.upper()} | n/a | n/a | n/a | {estimate['ess']:,.0f} |")
                continue
            ratio = ctr["value"] / result["logging_ctr"] if result["logging_ctr"] else float("nan")
            lines.append(
                f"| {name} | {estimator.upper()} | {ctr['value']:.5f} | [{ctr['low']:.5f}, {ctr['high']:.5f}] "
                f"| {ratio:.2f}× | {estimate['ess']:,.0f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m adserve.bandit.obd",
        description="Train a VW policy on the first 70%% of an Open Bandit Dataset campaign, evaluate it off-policy "
        "on the rest.",
    )
    parser.add_argument("directory", type=Path, help="folder with one campaign CSV and item_context.csv")
    parser.add_argument("--json", type=Path, help="also write the full result as JSON here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples per interval")
    args = parser.parse_args(argv)
    try:
        result = run_obd(args.directory, seed=args.seed, n_bootstrap=args.bootstrap)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

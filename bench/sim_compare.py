"""The simulated market: every policy on one world and seed; writes BENCHMARKS.md's section.

    .venv/bin/python bench/sim_compare.py [--decisions 200000] [--seed 7] [--write]
    .venv/bin/python bench/sim_compare.py --from-dir bench/results/sim --write   # no rerun

Runs `adserve simulate --compare` (in-process; see adserve/sim/compare.py), keeps the CSV, PNG and
summary under bench/results/sim/, and with --write replaces the "## Simulated market" section.
"""

from __future__ import annotations

import argparse
import platform
import re
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Simulated market"
GOAL = 0.8  # the bar (its stretch goal is 0.9)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node()} · {cpu} · python {platform.python_version()}"


def section(out: Path, decisions: int, seed: int) -> str:
    summary = (out / "summary.md").read_text().strip()
    png = out / "compare.png"
    rel = png.relative_to(ROOT) if png.is_relative_to(ROOT) else png
    rows = {}
    for line in summary.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) > 2 and re.match(r"^[\d.]+$", cells[2]):
            rows[cells[0]] = float(cells[2])
    full = next((v for k, v in rows.items() if k.startswith("full system")), None)
    others = [v for k, v in rows.items() if not k.startswith(("full system", "oracle"))]
    if full is not None:
        met = full >= GOAL and all(full >= v for v in others)
        verdict = f"Goal (full system ≥ {GOAL} × oracle CTR over the last 20%, at least every ablation): " + (
            "**met**" if met else f"**not met** (full system {full:.2f} × oracle)"
        )
    else:
        verdict = "Goal: the full system was not part of this run."
    return f"""{SECTION}

`adserve simulate --compare --decisions {decisions} --seed {seed}` (rerun: `bench/sim_compare.py
--write`): the same world (default `WorldConfig`, seed {seed}) and the same traffic and click draws
through every policy, in-process. `full` is what `adserve serve` runs with configs/base.toml: the
production `InterestScorer` (fused, calibrated P(click); `adserve/interest/fusion.py`) retrained
every `jobs.retrain_s` (one simulated day) from the simulated logs (warm start; hidden 32, 1 block,
4 next-item and ≤ 10 click epochs, newest 60,000 impressions; the first version after 5,000
decisions, the empirical-CTR scorer before it), under the serving `VWPolicy` from `[bandit]`,
learning every `jobs.bandit_s` (30 simulated seconds) the decisions whose reward window
(30 simulated minutes) has closed, through the same SNIPS gate (`adserve/bandit/learner.py`).
`interest_greedy` is the same scorer with a greedy policy. The one difference from serving: the
objective is clicks (`bandit.objective = "clicks"`), because the comparison is stated in CTR
against the CTR oracle. "× oracle" is the realised CTR over the last 20% divided by the CTR
oracle's expected CTR on the same requests; "expected" uses the oracle's P(click) of the chosen ad
(same mean, less noise). Regret: expected clicks lost to the oracle over the whole run.

{summary}

![learning curves]({rel})

{verdict}

CSV per window and policy: `{(out / "compare.csv").relative_to(ROOT) if out.is_relative_to(ROOT) else out}`.
"""


def write_section_named(heading: str, body: str, path: Path = ROOT / "BENCHMARKS.md") -> None:
    """Replace the `heading` section (up to the next "## ") with `body`; append it when missing."""
    text = path.read_text()
    if heading not in text:
        path.write_text(text.rstrip() + "\n\n" + body.rstrip() + "\n")
        return
    start = text.index(heading)
    following = re.search(r"^## ", text[start + len(heading) :], flags=re.M)
    end = start + len(heading) + following.start() if following else len(text)
    path.write_text(text[:start] + body.rstrip() + "\n" + ("\n" + text[end:] if following else ""))


def write_section(body: str) -> None:
    write_section_named(SECTION, body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "sim")
    parser.add_argument("--from-dir", type=Path, help="render an existing run's summary instead of running")
    parser.add_argument("--write", action="store_true", help=f"replace '{SECTION}' in BENCHMARKS.md")
    args = parser.parse_args()
    out = args.from_dir or args.out
    if args.from_dir is None:
        from adserve.settings import load_settings
        from adserve.sim.compare import CompareConfig, compare, write_outputs

        config = CompareConfig.from_settings(load_settings(), decisions=args.decisions, seed=args.seed)
        write_outputs(compare(config), config, out)
    body = section(out.resolve(), args.decisions, args.seed)
    print(body)
    if args.write:
        write_section(body)
        print(f"rewrote '{SECTION}' in BENCHMARKS.md ({time.strftime('%Y-%m-%d %H:%M')} UTC, {machine()})")


if __name__ == "__main__":
    main()

"""`adserve simulate --compare`: one world, one seed, every policy, in-process (no HTTP, no database).

Policies (the same traffic and click draws for each; see `traffic.py` on common random numbers):

- `uniform`: every eligible creative equally likely (the floor);
- `nonpersonal`: empirical CTR per creative (no history) as the score, the serving VW policy;
- `bandit`: the serving VW policy over a constant score (no interest model);
- `interest_greedy`: the production `InterestScorer`, always its best (no exploration);
- `full`: what `adserve serve` runs: the production `InterestScorer` under the serving
  `VWPolicy` (configured from `[bandit]`), learning with the serving learner's semantics
  (`adserve.bandit.learner`): every `jobs.bandit_s` of simulated time, the decisions whose
  `bandit.reward_window_s` has closed are learned progressively by the learner lineage and
  promoted into the serving policy only through the SNIPS gate.

The interest model is retrained every `jobs.retrain_s` of simulated time (the first version once
`warmup` decisions are logged), warm-started from the champion, from the behaviour logs and the
newest impressions whose reward window has closed, and promoted only through the serving gate
(`adserve.jobs.gate.decide`: a first click head must beat the empirical CTR scorer). Until a
version that scores ads is promoted, the policies that need it serve with the empirical-CTR scorer
(the serving cold start, `[serving]`'s prior and history lift).

The objective is CTR by default (the goal is stated in CTR against the CTR oracle): the VW
policies run with `objective = "clicks"` (cost −1 on a click, the model's value = P(click)) and
`interest_greedy` serves the highest P(click); everything else in their configuration is the
serving one. `objective="revenue"` (`--objective revenue`) runs the service's default objective
instead (bid × P(click) for CPC, price / 1000 for CPM, in VW's cost and in the greedy choice),
judged by expected revenue against the revenue oracle (the highest expected revenue per request).

One module, past 450 lines, on purpose: every arm of the comparison is configured here from the
serving settings, so no arm can run with a configuration the others do not see.
"""

from __future__ import annotations

import csv
import logging
import math
import pickle
import platform
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from adserve.domain import Candidate, DecisionContext
from adserve.learning.empirical_ctr import EmpiricalCTRScorer
from adserve.sim.harness import (
    ConstantScorer,
    GreedyPolicy,
    SimDecision,
    SimResults,
    UniformRandomPolicy,
    run,
)
from adserve.sim.oracle import ClickModel, Oracle
from adserve.sim.world import World, WorldConfig

if TYPE_CHECKING:
    from adserve.bandit.policy import PolicyConfig
    from adserve.domain import Policy, Scorer
    from adserve.settings import Settings

__all__ = ["POLICIES", "CompareConfig", "PolicyRun", "compare", "load_runs", "summary_rows", "write_outputs"]

log = logging.getLogger(__name__)

POLICIES = ("uniform", "nonpersonal", "bandit", "interest_greedy", "full")
LABELS = {
    "uniform": "uniform random",
    "nonpersonal": "non-personalised (empirical CTR + VW)",
    "bandit": "bandit without interest model (VW, constant score)",
    "interest_greedy": "interest model, greedy (no exploration)",
    "full": "full system (interest model + VW)",
}


@dataclass(frozen=True, slots=True)
class CompareConfig:
    decisions: int = 200_000
    seed: int = 7
    windows: int = 20
    policies: tuple[str, ...] = POLICIES
    # interest model schedule and size: small, so a retrain takes seconds on 2 CPU cores
    warmup: int = 5_000  # decisions logged before the first interest model
    retrain_s: float = 86_400.0  # simulated seconds between retrains (jobs.retrain_s)
    click_window: int = 60_000  # newest impressions the click head and the fusion train on
    hidden: int = 32
    n_layers: int = 1
    max_len: int = 50
    epochs: int = 4  # next-item epochs per retrain (warm start carries the rest)
    click_epochs: int = 10
    train_seconds: float = 60.0
    torch_threads: int = 1
    # what the policies maximise: "clicks" (judged against the CTR oracle) or "revenue" (the
    # service's default, judged against the revenue oracle); it overrides [bandit]'s objective
    objective: Literal["clicks", "revenue"] = "clicks"
    # the serving bandit: [bandit] and its learner cadence
    bandit: dict[str, Any] = field(default_factory=dict)  # BanditSettings.policy_dict(); {} = defaults
    bandit_s: float = 30.0  # simulated seconds between learning steps (jobs.bandit_s)
    reward_window_s: float = 1_800.0  # bandit.reward_window_s
    # the empirical CTR scorer: the cold start and the gate's bar for a first click head (serving.*)
    empirical_prior_clicks: float = 1.0
    empirical_prior_impressions: float = 100.0
    empirical_history_lift: float = 1.0
    click_head_shortlist: int = 32  # serving.click_head_shortlist
    world: WorldConfig | None = None  # default: WorldConfig(seed=seed)
    click_model: ClickModel | None = None  # default: ClickModel()

    def __post_init__(self) -> None:
        unknown = set(self.policies) - set(POLICIES)
        if unknown:
            raise ValueError(f"unknown policies {sorted(unknown)}; known: {', '.join(POLICIES)}")
        if self.objective not in ("clicks", "revenue"):
            raise ValueError(f"objective must be 'clicks' or 'revenue', got {self.objective!r}")

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> CompareConfig:
        """The comparison of what `settings` would serve: its bandit and its learning cadence."""
        values: dict[str, Any] = {
            "bandit": settings.bandit.policy_dict(),
            "bandit_s": settings.jobs.bandit_s,
            "reward_window_s": settings.bandit.reward_window_s,
            "retrain_s": settings.jobs.retrain_s,
            "empirical_prior_clicks": settings.serving.ctr_prior_clicks,
            "empirical_prior_impressions": settings.serving.ctr_prior_impressions,
            "empirical_history_lift": settings.serving.history_lift,
            "click_head_shortlist": settings.serving.click_head_shortlist,
        }
        return cls(**(values | overrides))

    def policy_config(self) -> PolicyConfig:
        from adserve.bandit.policy import PolicyConfig

        base = PolicyConfig.from_dict(self.bandit) if self.bandit else PolicyConfig()
        return replace(base, seed=self.seed, cost=replace(base.cost, objective=self.objective))


@dataclass(slots=True)
class PolicyRun:
    name: str
    results: SimResults
    seconds: float
    model_versions: list[str] = field(default_factory=list)  # interest versions the gate promoted
    train_seconds: float = 0.0
    bandit_versions: int = 0
    bandit_rejected: int = 0
    interest_gate: list[str] = field(default_factory=list)  # every trained version's gate verdict


class _Switchable:
    """A scorer whose delegate is replaced when a new interest model is trained."""

    def __init__(self, initial: Scorer) -> None:
        self.current: Scorer = initial

    @property
    def version(self) -> str:  # type: ignore[override]
        return self.current.version

    def score(self, context: DecisionContext, candidates: list[Candidate]) -> np.ndarray:
        return self.current.score(context, candidates)


class _EmpiricalCounts:
    """Feeds `EmpiricalCTRScorer` running impression and click counts per creative."""

    def __init__(
        self, prior_clicks: float = 1.0, prior_impressions: float = 100.0, history_lift: float = 0.0
    ) -> None:
        from adserve.learning.empirical_ctr import CreativeCounts

        self.counts = CreativeCounts({}, {})
        self.scorer = EmpiricalCTRScorer(prior_clicks, prior_impressions, history_lift)
        self.scorer.update(self.counts)

    def __call__(self, decision: SimDecision, clicked: bool) -> None:
        creative = decision.chosen.creative_id
        self.counts.impressions[creative] = self.counts.impressions.get(creative, 0) + 1
        if clicked:
            self.counts.clicks[creative] = self.counts.clicks.get(creative, 0) + 1


class _ServingLearner:
    """The serving bandit's learner in simulated time (`adserve.bandit.learner`).

    `champion` is the policy that serves (the object the harness calls); `learner` is the lineage
    that learns every closed batch. Every `bandit_s` the decisions older than the reward window
    are learned progressively and gated; a promoted learner is saved and hot-swapped into the
    champion (`VWPolicy.reload`), as serving processes do.
    """

    def __init__(self, cfg: CompareConfig, workdir: Path) -> None:
        from adserve.bandit.policy import VWPolicy

        config = cfg.policy_config()
        self.champion = VWPolicy(config, version="untrained")
        self.learner = VWPolicy(config, version="untrained")
        self.cfg = cfg
        self.workdir = workdir
        self.pending: deque[Any] = deque()
        self.next_step: float | None = None
        self.versions = 0
        self.rejected = 0

    def __call__(self, decision: SimDecision, clicked: bool) -> None:
        from adserve.bandit.records import LoggedDecision

        now = decision.context.now
        self.pending.append(
            LoggedDecision(
                context=decision.context,
                candidates=tuple(decision.candidates),
                click_probabilities=tuple(np.clip(decision.scores, 0.0, 1.0).tolist()),
                pmf=decision.choice.pmf,
                chosen=decision.choice.index,
                clicked=clicked,
                revenue=decision.revenue,
                scorer_version=decision.scorer_version,
            )
        )
        if self.next_step is None:
            self.next_step = now + self.cfg.bandit_s
        if now >= self.next_step:
            self.next_step = now + self.cfg.bandit_s
            self.step(now)

    def step(self, now: float) -> None:
        from adserve.bandit.learner import gate, learn_progressively

        closed = []
        while self.pending and self.pending[0].context.now + self.cfg.reward_window_s <= now:
            closed.append(self.pending.popleft())
        if not closed:
            return
        first = self.versions == 0
        learner_pmfs, champion_pmfs = learn_progressively(
            self.learner, None if first else self.champion, closed
        )
        self.versions += 1
        if not first:
            verdict = gate(closed, learner_pmfs, champion_pmfs, seed=self.cfg.seed, metric="ctr")
            if not verdict.promote:
                self.rejected += 1
                return
        self.champion.reload(self.learner.save(self.workdir, f"v{self.versions:07d}"))


class _InterestTrainer:
    """Collects impressions, retrains the interest model on schedule, swaps it into the scorer."""

    def __init__(self, world: World, cfg: CompareConfig, scorer: _Switchable, workdir: Path) -> None:
        self.world = world
        self.cfg = cfg
        self.scorer = scorer
        self.workdir = workdir
        self.examples: deque[Any] = deque(maxlen=cfg.click_window)
        self.last_path: Path | None = None
        self.versions: list[str] = []
        self.train_seconds = 0.0
        self.next_at: float | None = None  # simulated time of the next retrain
        self.gate_reasons: list[str] = []
        # the empirical CTR scorer as serving configures it: the gate's bar for a first click head
        self.empirical = EmpiricalCTRScorer(
            cfg.empirical_prior_clicks, cfg.empirical_prior_impressions, cfg.empirical_history_lift
        )

    def __call__(self, decision: SimDecision, clicked: bool) -> None:
        from adserve.interest.data import ClickExample

        self.examples.append(ClickExample(decision.context, decision.chosen, bool(clicked)))
        now = decision.context.now
        if self.next_at is None and decision.index + 1 >= self.cfg.warmup:
            self.next_at = now
        if self.next_at is not None and now >= self.next_at:
            self.next_at = now + self.cfg.retrain_s
            self.retrain(decision.index + 1, now)

    def retrain(self, at: int, now: float) -> None:
        from adserve.interest.network import InterestConfig
        from adserve.interest.scorer import InterestScorer
        from adserve.interest.training import TrainConfig, train_interest
        from adserve.jobs.gate import evaluate_pair, verdict

        cfg = self.cfg
        started = time.perf_counter()
        sequences = {u.key: list(u.events) for u in self.world.users if u.consent and len(u.events) >= 3}
        model_config = InterestConfig(
            hidden=cfg.hidden,
            n_layers=cfg.n_layers,
            max_len=cfg.max_len,
            dropout=0.2,
            item_buckets=1 << 12,
            creative_buckets=1 << 10,
            click_mlp=(64,),
        )
        train_config = TrainConfig(
            seed=cfg.seed,
            max_epochs=cfg.epochs,
            patience=cfg.epochs,
            max_seconds=cfg.train_seconds,
            click_max_epochs=cfg.click_epochs,
            click_patience=2,
            device="cpu",
            progress=False,
        )
        # the serving training data: an impression is a click example once its reward window closed
        examples = [e for e in self.examples if e.context.now + cfg.reward_window_s <= now]
        result = train_interest(sequences, examples, model_config, train_config, warm_start=self.last_path)
        version = f"sim-{at:07d}"
        path = result.save(self.workdir, version)
        # the serving gate (adserve.jobs.gate), against the champion and the empirical CTR scorer
        decision = verdict(evaluate_pair(path, self.last_path, sequences, examples, self.empirical))
        self.gate_reasons.append(f"{version}: {decision.reason}")
        if decision.promote:
            interest = InterestScorer(
                path, device="cpu", cache_size=4_000, shortlist=cfg.click_head_shortlist
            )
            if interest.scores_ads:  # the serving rule (ModelWatcher): only a model fitted on impressions
                self.scorer.current = interest
            self.last_path = path
            self.versions.append(version)
        seconds = time.perf_counter() - started
        self.train_seconds += seconds
        click = result.report.get("click", {}).get("interest", {})
        log.info(
            "retrained %s on %d users, %d impressions in %.1fs: click %s, fusion %s; %s",
            version,
            len(sequences),
            len(examples),
            seconds,
            {k: round(v, 3) for k, v in click.items()},
            {k: round(v, 3) for k, v in result.metrics.get("fusion", {}).items()},
            decision.reason,
        )


def _run_policy(name: str, world: World, oracle: Oracle, cfg: CompareConfig, workdir: Path) -> PolicyRun:
    hooks: list[Any] = []
    trainer: _InterestTrainer | None = None
    learner: _ServingLearner | None = None
    scorer: Scorer
    policy: Policy
    if name == "uniform":
        scorer, policy = ConstantScorer(), UniformRandomPolicy()
    elif name == "bandit":
        learner = _ServingLearner(cfg, workdir / name)
        scorer, policy = ConstantScorer(0.02), learner.champion
        hooks.append(learner)
    else:
        if name == "nonpersonal":  # per-creative CTR, no history
            counts = _EmpiricalCounts(cfg.empirical_prior_clicks, cfg.empirical_prior_impressions)
        else:  # the serving cold start until an interest model is promoted
            counts = _EmpiricalCounts(
                cfg.empirical_prior_clicks, cfg.empirical_prior_impressions, cfg.empirical_history_lift
            )
        hooks.append(counts)
        scorer = counts.scorer
        if name != "nonpersonal":
            switchable = _Switchable(counts.scorer)
            trainer = _InterestTrainer(world, cfg, switchable, workdir / name)
            hooks.append(trainer)
            scorer = switchable
        if name == "interest_greedy":
            policy = GreedyPolicy("ctr" if cfg.objective == "clicks" else "revenue")
        else:
            learner = _ServingLearner(cfg, workdir / name)
            policy = learner.champion
            hooks.append(learner)
    started = time.perf_counter()
    results = run(
        world, scorer, policy, cfg.decisions, oracle=oracle, history_limit=cfg.max_len, on_outcome=hooks
    )
    seconds = time.perf_counter() - started
    return PolicyRun(
        name,
        results,
        seconds,
        trainer.versions if trainer else [],
        trainer.train_seconds if trainer else 0.0,
        learner.versions if learner else 0,
        learner.rejected if learner else 0,
        trainer.gate_reasons if trainer else [],
    )


def compare(cfg: CompareConfig, progress: Callable[[str], None] = print) -> list[PolicyRun]:
    """Runs every policy of `cfg` on the same world and seed; returns one `PolicyRun` each."""
    import torch

    torch.set_num_threads(cfg.torch_threads)
    world = World(cfg.world or WorldConfig(seed=cfg.seed))
    oracle = Oracle(world, cfg.click_model)
    runs = []
    workdir = Path(tempfile.mkdtemp(prefix="adserve-compare-"))
    try:
        for name in cfg.policies:
            progress(f"running {name}: {cfg.decisions:,} decisions …")
            policy_run = _run_policy(name, world, oracle, cfg, workdir)
            last = policy_run.results.last(0.2)
            progress(
                f"  {name}: {policy_run.seconds:.0f}s, CTR last 20% {last.ctr:.4f} "
                f"(expected {last.expected_ctr:.4f}, oracle {last.oracle_ctr:.4f}); expected revenue "
                f"{last.expected_revenue / max(last.oracle_revenue, 1e-12):.3f}× the revenue oracle"
            )
            runs.append(policy_run)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return runs


def summary_rows(runs: Sequence[PolicyRun], fraction: float = 0.2) -> list[dict[str, Any]]:
    """One row per policy, plus the oracle: CTR over the last `fraction` and totals."""
    rows = []
    for r in runs:
        last = r.results.last(fraction)
        rows.append(
            {
                "policy": r.name,
                "ctr_last": last.ctr,
                "expected_ctr_last": last.expected_ctr,
                "ratio_to_oracle": last.ctr / last.oracle_ctr if last.oracle_ctr else math.nan,
                "expected_ratio_to_oracle": last.expected_ctr / last.oracle_ctr
                if last.oracle_ctr
                else math.nan,
                "revenue": r.results.total_revenue,
                "revenue_ratio_to_oracle": last.expected_revenue / last.oracle_revenue
                if last.oracle_revenue
                else math.nan,
                "regret": r.results.regret,
                "ctr": r.results.ctr,
                "seconds": r.seconds,
                "retrains": f"{len(r.model_versions)}/{len(r.interest_gate)}",
            }
        )
    if runs:
        ref = runs[0].results
        last = ref.last(fraction)
        rows.append(
            {
                "policy": "oracle (expected)",
                "ctr_last": last.oracle_ctr,
                "expected_ctr_last": last.oracle_ctr,
                "ratio_to_oracle": 1.0,
                "expected_ratio_to_oracle": 1.0,
                "revenue": float(ref.oracle_revenue.sum()),  # the revenue oracle's
                "revenue_ratio_to_oracle": 1.0,
                "regret": 0.0,
                "ctr": ref.oracle_ctr,
                "seconds": 0.0,
                "retrains": "–",
            }
        )
    return rows


def format_table(rows: Sequence[dict[str, Any]], markdown: bool = True) -> str:
    header = ["policy", "CTR last 20%", "× oracle", "expected CTR last 20%", "expected × oracle",
              "revenue", "expected revenue × revenue oracle", "regret (clicks)", "interest promoted/trained",
              "seconds"]  # fmt: skip
    lines = []
    if markdown:
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
    else:
        lines.append("  ".join(f"{h:>12}" if i else f"{h:<52}" for i, h in enumerate(header)))
    for row in rows:
        cells = [
            LABELS.get(row["policy"], row["policy"]),
            f"{row['ctr_last']:.4f}",
            f"{row['ratio_to_oracle']:.2f}",
            f"{row['expected_ctr_last']:.4f}",
            f"{row['expected_ratio_to_oracle']:.2f}",
            f"{row['revenue']:,.0f}",
            f"{row['revenue_ratio_to_oracle']:.2f}",
            f"{row['regret']:,.0f}",
            str(row["retrains"]),
            f"{row['seconds']:.0f}",
        ]
        if markdown:
            lines.append("| " + " | ".join(cells) + " |")
        else:
            lines.append("  ".join(f"{c:>12}" if i else f"{c:<52}" for i, c in enumerate(cells)))
    return "\n".join(lines)


def write_outputs(runs: Sequence[PolicyRun], cfg: CompareConfig, out: Path) -> dict[str, Path]:
    """`compare.csv` (windows × policies), `compare.png` (learning curves), `summary.md`."""
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "compare.csv"
    with csv_path.open("w", newline="") as f:
        writer: csv.DictWriter | None = None
        for r in runs:
            for w in r.results.windows(cfg.windows):
                row = {"policy": r.name, **asdict(w)}
                if writer is None:
                    writer = csv.DictWriter(f, fieldnames=list(row))
                    writer.writeheader()
                writer.writerow(row)
    with (out / "runs.pkl").open("wb") as f:  # for `--merge` of runs made in parallel processes
        pickle.dump([replace(r, results=_without_pmf(r.results)) for r in runs], f)
    png_path = out / "compare.png"
    _plot(runs, cfg, png_path)
    summary_path = out / "summary.md"
    summary_path.write_text(
        f"seed {cfg.seed}, objective {cfg.objective}, {cfg.decisions:,} decisions, {time.strftime('%Y-%m-%d')}, "
        f"{platform.node()} ({platform.machine()}, python {platform.python_version()})\n\n"
        + format_table(summary_rows(runs))
        + "\n"
        + "".join(
            f"\ninterest gate, {r.name}:\n" + "".join(f"- {reason}\n" for reason in r.interest_gate)
            for r in runs
            if r.interest_gate
        )
    )
    return {"csv": csv_path, "png": png_path, "summary": summary_path}


def _plot(runs: Sequence[PolicyRun], cfg: CompareConfig, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_ctr, ax_regret) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=80)
    revenue = cfg.objective == "revenue"
    oracle_drawn = False
    for r in runs:
        windows = r.results.windows(cfg.windows)
        x = [w.end for w in windows]
        if revenue:  # per decision, and revenue lost to the revenue oracle so far
            ax_ctr.plot(
                x, [w.expected_revenue / w.decisions for w in windows], label=LABELS.get(r.name, r.name)
            )
            lost = np.cumsum([w.oracle_revenue - w.expected_revenue for w in windows])
            ax_regret.plot(x, lost, label=r.name)
        else:
            ax_ctr.plot(x, [w.expected_ctr for w in windows], label=LABELS.get(r.name, r.name))
            ax_regret.plot(x, [w.cumulative_regret for w in windows], label=r.name)
        if not oracle_drawn:
            oracle = (
                [w.oracle_revenue / w.decisions for w in windows]
                if revenue
                else [w.oracle_ctr for w in windows]
            )
            ax_ctr.plot(x, oracle, "k--", label="oracle")
            oracle_drawn = True
    ax_ctr.set_xlabel("decisions")
    ax_ctr.set_ylabel(
        "expected revenue per decision (per window)"
        if revenue
        else "CTR per window (oracle P(click) of the chosen ad)"
    )
    ax_ctr.set_ylim(bottom=0)
    ax_ctr.legend(fontsize=7)
    ax_regret.set_xlabel("decisions")
    ax_regret.set_ylabel(
        "cumulative revenue lost to the oracle (expected)"
        if revenue
        else "cumulative regret (expected clicks)"
    )
    fig.suptitle(
        f"adserve simulate --compare: seed {cfg.seed}, objective {cfg.objective}, {cfg.decisions:,} decisions",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _without_pmf(results: SimResults) -> SimResults:
    return replace(results, pmf=[])


def load_runs(directories: Sequence[Path]) -> list[PolicyRun]:
    """Runs saved by `write_outputs` in several folders (one policy per process), in POLICIES order."""
    runs: list[PolicyRun] = []
    for directory in directories:
        with (Path(directory) / "runs.pkl").open("rb") as f:
            runs += pickle.load(f)
    return sorted(runs, key=lambda r: POLICIES.index(r.name))

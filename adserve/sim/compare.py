"""`adserve simulate --compare`: one world, one seed, every policy, in-process (no HTTP, no database).

Policies (the same traffic and click draws for each; see `traffic.py` on common random numbers):

- `uniform`: every eligible creative equally likely (the floor);
- `nonpersonal`: empirical CTR per creative (no history) as the score, VW bandit exploring;
- `bandit`: VW over contextual features only, with a constant score (no interest model);
- `interest_greedy`: the interest model's P(click), always the best (no exploration);
- `full`: the interest model's scores fed to the VW bandit, which explores and learns online.

Learners learn from every outcome as it happens; the interest model is retrained on schedule
(every `retrain_every` decisions, warm-started from the previous version, in-process) from the
behaviour logs and the impressions served so far. Before its first version exists, the policies
that need it serve uniformly at random, which is also where their first clicks come from.

The objective is CTR (the goal is stated in CTR against the CTR oracle): VW's reward is the
click, and every candidate reaches VW (top-K covers the slot).
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
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from adserve.domain import Candidate, Choice, DecisionContext
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
    from adserve.domain import Policy, Scorer

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
    # interest model schedule and size: tiny, so a retrain takes seconds on 2 CPU cores
    warmup: int = 5_000  # uniform decisions before the first interest model
    retrain_every: int = 20_000
    click_window: int = 60_000  # newest impressions the click head trains on
    hidden: int = 32
    n_layers: int = 1
    max_len: int = 50
    epochs: int = 4  # next-item epochs per retrain (warm start carries the rest)
    click_epochs: int = 10
    train_seconds: float = 60.0
    # VW
    gamma_scale: float = 100.0
    learning_rate: float = 0.5
    torch_threads: int = 1
    # combine the click head with the next-item head's affinity for the creative's products
    affinity: bool = True
    affinity_fit: int = 15_000  # newest impressions the 3-weight combination is fitted on
    world: WorldConfig | None = None  # default: WorldConfig(seed=seed)
    click_model: ClickModel | None = None  # default: ClickModel()

    def __post_init__(self) -> None:
        unknown = set(self.policies) - set(POLICIES)
        if unknown:
            raise ValueError(f"unknown policies {sorted(unknown)}; known: {', '.join(POLICIES)}")


@dataclass(slots=True)
class PolicyRun:
    name: str
    results: SimResults
    seconds: float
    model_versions: list[str] = field(default_factory=list)
    train_seconds: float = 0.0


class _Switchable:
    """A scorer whose delegate is replaced when a new interest model is trained."""

    def __init__(self, initial: Scorer) -> None:
        self.current: Scorer = initial

    @property
    def version(self) -> str:  # type: ignore[override]
        return self.current.version

    def score(self, context: DecisionContext, candidates: list[Candidate]) -> np.ndarray:
        return self.current.score(context, candidates)


class _WarmupPolicy:
    """Uniform random until `ready()`, then the wrapped policy."""

    def __init__(self, policy: Policy, ready: Callable[[], bool]) -> None:
        self.policy = policy
        self.ready = ready
        self._uniform = UniformRandomPolicy()

    @property
    def version(self) -> str:  # type: ignore[override]
        return self.policy.version

    def choose(
        self,
        context: DecisionContext,
        candidates: list[Candidate],
        scores: np.ndarray,
        rng: np.random.Generator,
    ) -> Choice:
        if not self.ready():
            return self._uniform.choose(context, candidates, scores, rng)
        return self.policy.choose(context, candidates, scores, rng)


class _EmpiricalCounts:
    """Feeds `EmpiricalCTRScorer` running impression and click counts per creative."""

    def __init__(self) -> None:
        from adserve.serving.scoring import CreativeCounts, EmpiricalCTRScorer

        self.counts = CreativeCounts({}, {})
        self.scorer = EmpiricalCTRScorer(prior_clicks=1.0, prior_impressions=100.0, history_lift=0.0)
        self.scorer.update(self.counts)

    def __call__(self, decision: SimDecision, clicked: bool) -> None:
        creative = decision.chosen.creative_id
        self.counts.impressions[creative] = self.counts.impressions.get(creative, 0) + 1
        if clicked:
            self.counts.clicks[creative] = self.counts.clicks.get(creative, 0) + 1


def _vw_policy(cfg: CompareConfig, n_candidates: int) -> Any:
    from adserve.bandit.policy import PolicyConfig, VWPolicy

    return VWPolicy(
        PolicyConfig(
            top_k=max(n_candidates, 1),
            gamma_scale=cfg.gamma_scale,
            learning_rate=cfg.learning_rate,
            seed=cfg.seed,
        ),
        version="vw-online",
    )


class _VWLearner:
    """Learns every outcome at once: reward = click (cost -1 on a click, 0 otherwise)."""

    def __init__(self, policy: Any, ready: Callable[[], bool] = lambda: True) -> None:
        self.policy = policy
        self.ready = ready

    def __call__(self, decision: SimDecision, clicked: bool) -> None:
        from adserve.bandit.records import LoggedDecision

        self.policy.learn(
            [
                LoggedDecision(
                    context=decision.context,
                    candidates=tuple(decision.candidates),
                    click_probabilities=tuple(np.clip(decision.scores, 1e-6, 1 - 1e-6).tolist()),
                    pmf=decision.choice.pmf,
                    chosen=decision.choice.index,
                    clicked=clicked,
                    revenue=1.0 if clicked else 0.0,
                )
            ]
        )


class InterestAffinityScorer:
    """The interest model's two heads as one P(click).

    Click-head logit plus the next-item head's affinity for the creative: log of the probability
    that the user's next item is one of the creative's linked products. Which products a user
    views follows their brand affinity and latent taste, so the self-supervised head (trained on
    every behaviour event) carries what a few thousand clicks cannot teach the click head. The
    two are combined by a logistic regression (intercept and two weights) fitted on the newest
    impressions at each retrain, which also calibrates the result.
    """

    def __init__(self, scorer: Any) -> None:
        import torch

        self._torch = torch
        self.scorer = scorer
        self.version = f"{scorer.version}+affinity"
        self.weights = np.array([0.0, 1.0, 0.0])
        self._rows: dict[int, np.ndarray] = {}
        self._logp: OrderedDict[tuple, np.ndarray] = OrderedDict()
        head = scorer.model.next_item
        with torch.inference_mode():
            prior = head.bias.detach().clone().float()
            prior[0] = float("-inf")
            self._prior = torch.log_softmax(prior, dim=-1).cpu().numpy()

    def _next_item_logp(self, context: DecisionContext) -> np.ndarray:
        history = context.history
        if not history:
            return self._prior
        key = (context.user_key, len(history), history[-1].ts)
        hit = self._logp.get(key)
        if hit is not None:
            return hit
        encoding = self.scorer.encoding(context)
        torch = self._torch
        with torch.inference_mode():
            logits = self.scorer.model.next_item.logits(
                encoding.encoded[-1:], self.scorer.model.encoder.events
            )
            logp = torch.log_softmax(logits[0].float(), dim=-1).cpu().numpy()
        self._logp[key] = logp
        if len(self._logp) > 4_000:
            self._logp.popitem(last=False)
        return logp

    def _product_rows(self, candidate: Candidate) -> np.ndarray:
        rows = self._rows.get(candidate.creative_id)
        if rows is None:
            index = self.scorer.vocab.index
            rows = np.array([index[p] for p in candidate.product_ids if p in index], dtype=np.int64)
            self._rows[candidate.creative_id] = rows
        return rows

    def features(self, context: DecisionContext, candidates: Sequence[Candidate]) -> np.ndarray:
        """(N, 3): 1, click-head logit, next-item affinity."""
        click = self.scorer.click_logits_many([(context, candidates)])[0]
        logp = self._next_item_logp(context)
        affinity = np.empty(len(candidates))
        for i, candidate in enumerate(candidates):
            rows = self._product_rows(candidate)
            if rows.size:
                top = logp[rows].max()
                affinity[i] = top + np.log(np.exp(logp[rows] - top).sum())
            else:
                affinity[i] = -20.0
        return np.column_stack([np.ones(len(candidates)), click, np.maximum(affinity, -20.0)])

    def fit(self, examples: Sequence[Any]) -> None:
        """Logistic regression of the clicks on the features (a few Newton steps, light L2)."""
        if not examples or len({e.clicked for e in examples}) < 2:
            return
        x = np.vstack([self.features(e.context, [e.candidate]) for e in examples])
        y = np.array([float(e.clicked) for e in examples])
        w = np.array([math.log(y.mean() / (1 - y.mean())), 0.0, 0.0])
        for _ in range(25):
            p = 1 / (1 + np.exp(-(x @ w)))
            gradient = x.T @ (p - y) + 1e-3 * w
            hessian = (x * (p * (1 - p))[:, None]).T @ x + 1e-3 * np.eye(3)
            step = np.linalg.solve(hessian, gradient)
            w -= step
            if np.abs(step).max() < 1e-6:
                break
        self.weights = w

    def score(self, context: DecisionContext, candidates: list[Candidate]) -> np.ndarray:
        z = self.features(context, candidates) @ self.weights
        return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))


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
        self.next_at = cfg.warmup

    @property
    def ready(self) -> bool:
        return self.last_path is not None

    def __call__(self, decision: SimDecision, clicked: bool) -> None:
        from adserve.interest.data import ClickExample

        self.examples.append(ClickExample(decision.context, decision.chosen, bool(clicked)))
        if decision.index + 1 >= self.next_at:
            self.next_at += self.cfg.retrain_every
            self.retrain(decision.index + 1)

    def retrain(self, at: int) -> None:
        from adserve.interest.network import InterestConfig
        from adserve.interest.scorer import InterestScorer
        from adserve.interest.training import TrainConfig, train_interest

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
        result = train_interest(
            sequences, list(self.examples), model_config, train_config, warm_start=self.last_path
        )
        version = f"sim-{at:07d}"
        path = result.save(self.workdir, version)
        interest = InterestScorer(path, device="cpu", cache_size=4_000)
        if cfg.affinity:
            combined = InterestAffinityScorer(interest)
            combined.fit(list(self.examples)[-cfg.affinity_fit :])
            self.scorer.current = combined
            log.info(
                "affinity weights (intercept, click logit, next-item affinity): %s", combined.weights.round(3)
            )
        else:
            self.scorer.current = interest
        self.last_path = path
        self.versions.append(version)
        seconds = time.perf_counter() - started
        self.train_seconds += seconds
        click = result.report.get("click", {})
        log.info(
            "retrained %s on %d users, %d impressions in %.1fs: click %s",
            version,
            len(sequences),
            len(self.examples),
            seconds,
            {k: round(v.get("ne", float("nan")), 3) for k, v in click.items() if isinstance(v, dict)},
        )


def _run_policy(name: str, world: World, oracle: Oracle, cfg: CompareConfig, workdir: Path) -> PolicyRun:
    n_candidates = max(
        len(world.eligible_candidates(p, d, g))
        for p in world.placements
        for d in ("desktop", "mobile", "tablet")
        for g in ("US", "GB")
    )
    hooks: list[Any] = []
    trainer: _InterestTrainer | None = None
    scorer: Scorer
    policy: Policy
    if name == "uniform":
        scorer, policy = ConstantScorer(), UniformRandomPolicy()
    elif name == "nonpersonal":
        counts = _EmpiricalCounts()
        scorer, policy = counts.scorer, _vw_policy(cfg, n_candidates)
        hooks += [counts, _VWLearner(policy)]
    elif name == "bandit":
        scorer, policy = ConstantScorer(0.02), _vw_policy(cfg, n_candidates)
        hooks.append(_VWLearner(policy))
    else:
        switchable = _Switchable(ConstantScorer(0.02))
        trainer = _InterestTrainer(world, cfg, switchable, workdir / name)
        inner = GreedyPolicy("ctr") if name == "interest_greedy" else _vw_policy(cfg, n_candidates)
        scorer, policy = switchable, _WarmupPolicy(inner, lambda: trainer.ready)
        hooks.append(trainer)
        if name == "full":
            # VW learns from the uniform warm-up too: those are clean, fully explored logs.
            hooks.append(_VWLearner(inner))
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
                f"(expected {last.expected_ctr:.4f}, oracle {last.oracle_ctr:.4f})"
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
                "regret": r.results.regret,
                "ctr": r.results.ctr,
                "seconds": r.seconds,
                "retrains": len(r.model_versions),
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
                "revenue": float(ref.oracle_revenue.sum()),
                "regret": 0.0,
                "ctr": ref.oracle_ctr,
                "seconds": 0.0,
                "retrains": 0,
            }
        )
    return rows


def format_table(rows: Sequence[dict[str, Any]], markdown: bool = True) -> str:
    header = ["policy", "CTR last 20%", "× oracle", "expected CTR last 20%", "expected × oracle",
              "revenue", "regret (clicks)", "retrains", "seconds"]  # fmt: skip
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
        f"seed {cfg.seed}, {cfg.decisions:,} decisions, {time.strftime('%Y-%m-%d')}, "
        f"{platform.node()} ({platform.machine()}, python {platform.python_version()})\n\n"
        + format_table(summary_rows(runs))
        + "\n"
    )
    return {"csv": csv_path, "png": png_path, "summary": summary_path}


def _plot(runs: Sequence[PolicyRun], cfg: CompareConfig, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_ctr, ax_regret) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=80)
    oracle_drawn = False
    for r in runs:
        windows = r.results.windows(cfg.windows)
        x = [w.end for w in windows]
        ax_ctr.plot(x, [w.expected_ctr for w in windows], label=LABELS.get(r.name, r.name))
        ax_regret.plot(x, [w.cumulative_regret for w in windows], label=r.name)
        if not oracle_drawn:
            ax_ctr.plot(x, [w.oracle_ctr for w in windows], "k--", label="oracle")
            oracle_drawn = True
    ax_ctr.set_xlabel("decisions")
    ax_ctr.set_ylabel("CTR per window (oracle P(click) of the chosen ad)")
    ax_ctr.set_ylim(bottom=0)
    ax_ctr.legend(fontsize=7)
    ax_regret.set_xlabel("decisions")
    ax_regret.set_ylabel("cumulative regret (expected clicks)")
    fig.suptitle(f"adserve simulate --compare: seed {cfg.seed}, {cfg.decisions:,} decisions", fontsize=10)
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

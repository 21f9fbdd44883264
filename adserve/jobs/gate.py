"""Interest models: train a challenger, then gate it against the champion.

`train_and_gate` is the one way a new interest version comes to be, for the `interest_retrain`
job and `adserve train` alike: it trains a challenger in a child process (`adserve.jobs.retrain`:
lower CPU priority, bounded torch threads, so training never runs on a serving event loop),
warm-started from the champion, then registers it and promotes or rejects it here.

Both versions are evaluated by `evaluate_checkpoint` on the same data: next-item NDCG@10 by
leave-one-out (each user's last item is held out of training), over events whose items both
versions know (a model that knows fewer items would otherwise be ranked on an easier subset), and,
for versions that score ads, the served P(click)'s log loss on the newest 15% of impressions.

- A version that scores ads replaces one that does not (the first model fitted on impressions),
  and never the other way round, but only with a held-out click log loss below that of what
  serves ads meanwhile: the empirical CTR scorer (`adserve.learning.empirical_ctr.EmpiricalCTRScorer`,
  the service's own settings) fitted on the same impressions as the challenger (counts from the
  training part, calibrated on the validation part, where those counts are out of sample). A click head
  fitted on the first few dozen clicks can rank ads worse than per-creative click rates do; it
  waits for more data instead of serving.
- Two versions that score ads: the challenger needs a log loss no worse and a next-item NDCG@10
  that did not fall: no more than `NDCG_TOLERANCE` (relative) below the champion's, or, on a
  small holdout, no more than two standard errors of the difference (`ndcg_noise`), so that
  click quality is never bought with next-item quality and a few hundred users' sampling noise
  does not block a better click model.
- Two versions that do not: the challenger needs a higher NDCG@10.

Either way the reason, with both sets of figures, is recorded on its `model_versions` row.

`evaluate_pair` is CPU/GPU work and runs in the training process, never on a serving event loop;
`decide` and `apply_gate` are cheap and run in the caller.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import sys
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from adserve.jobs.runs import json_safe
from adserve.learning.empirical_ctr import CreativeCounts
from adserve.learning.registry import Registry

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from adserve.db.engine import Database
    from adserve.learning.empirical_ctr import EmpiricalCTRScorer
    from adserve.settings import JobsSettings, Settings

__all__ = [
    "GateDecision",
    "HoldoutFigures",
    "Retrained",
    "TrainingRun",
    "apply_gate",
    "decide",
    "empirical_click_logloss",
    "evaluate_pair",
    "holdout_figures",
    "ndcg_noise",
    "train_and_gate",
    "verdict",
]

log = logging.getLogger(__name__)

NDCG_TOLERANCE = 0.02


@dataclass(frozen=True, slots=True)
class HoldoutFigures:
    ndcg_at_10: float
    logloss: float | None  # None when the version does not score ads
    scores_ads: bool
    ndcg_users: int = 0  # users whose held-out item the NDCG averages over (0: unknown)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HoldoutFigures:
        scores_ads = data.get("scores_ads", data.get("click_trained", False))
        return cls(
            data["ndcg_at_10"], data.get("logloss"), bool(scores_ads), int(data.get("ndcg_users") or 0)
        )

    @property
    def ndcg_standard_error(self) -> float:
        """Upper bound of the standard error of the mean NDCG: each user's NDCG lies in [0, 1],
        so its variance is at most m(1 - m) for mean m."""
        if self.ndcg_users <= 0:
            return 0.0
        m = min(max(self.ndcg_at_10, 0.0), 1.0)
        return math.sqrt(m * (1.0 - m) / self.ndcg_users)


def ndcg_noise(challenger: HoldoutFigures, champion: HoldoutFigures) -> float:
    """Two standard errors of the difference of the two versions' NDCG@10 on the holdout."""
    return 2.0 * math.hypot(challenger.ndcg_standard_error, champion.ndcg_standard_error)


@dataclass(frozen=True, slots=True)
class GateDecision:
    promote: bool
    reason: str


def holdout_figures(
    path: str | Path, sequences: Mapping[str, Sequence], click_examples: Sequence
) -> HoldoutFigures:
    """One version's gate figures on the given data (heavy: run it in the training process)."""
    # imported here: torch takes seconds to import and only the training process needs it
    from adserve.interest.checkpoint import load_checkpoint
    from adserve.interest.training import evaluate_checkpoint

    scores_ads = load_checkpoint(path).fusion is not None
    report = evaluate_checkpoint(path, sequences, click_examples, device="cpu")
    logloss = report["click"].get("interest", {}).get("logloss") if scores_ads else None
    return HoldoutFigures(
        float(report["next_item"]["interest"]["ndcg@10"]), logloss, scores_ads, int(report["next_item_users"])
    )


def _known_to_both(
    sequences: Mapping[str, Sequence], challenger: str | Path, champion: str | Path
) -> dict[str, list]:
    """The sequences without item events one of the two versions has never seen."""
    # imported here: torch takes seconds to import and only the training process needs it
    from adserve.interest.checkpoint import load_checkpoint

    known = set(load_checkpoint(challenger).vocab.index) & set(load_checkpoint(champion).vocab.index)
    return {
        user: [e for e in events if e.item_id is None or e.item_id in known]
        for user, events in sequences.items()
    }


def empirical_click_logloss(scorer: EmpiricalCTRScorer, click_examples: Sequence) -> float | None:
    """The held-out click log loss of the empirical CTR scorer on the impressions the versions are
    judged on (the newest 15%), fitted on the impressions the challenger is: per-creative counts
    from the training part, and Platt-calibrated on the validation part (the impressions those
    counts did not include; the challenger's fusion takes its creative prior out of sample the
    same way).
    Without the calibration the bar would be its history lift's scale, not its ranking: a lift of
    10 multiplies P(click) by up to 11, which costs log loss while it ranks ads better. None
    without held-out impressions."""
    # imported here: torch takes seconds to import and only the training process needs it
    from adserve.interest.calibration import fit_calibrator
    from adserve.interest.evaluation import click_metrics
    from adserve.interest.training import split_click_examples

    train, validation, test = split_click_examples(click_examples)
    if not test:
        return None
    impressions: Counter[int] = Counter()
    clicks: Counter[int] = Counter()
    for example in train:
        impressions[example.candidate.creative_id] += 1
        clicks[example.candidate.creative_id] += example.clicked
    scorer.update(CreativeCounts(dict(impressions), dict(clicks)))

    def logits(examples: Sequence) -> np.ndarray:
        p = np.clip([scorer.score(e.context, [e.candidate])[0] for e in examples], 1e-6, 1 - 1e-6)
        return np.log(p / (1 - p))

    labels = np.array([float(e.clicked) for e in test])
    validation_labels = np.array([float(e.clicked) for e in validation])
    if not 0 < validation_labels.sum() < len(validation_labels):
        return click_metrics(1 / (1 + np.exp(-logits(test))), labels)["logloss"]
    calibrate = fit_calibrator(logits(validation), validation_labels, "platt")
    return click_metrics(calibrate(logits(test)), labels)["logloss"]


def evaluate_pair(
    challenger: str | Path,
    champion: str | Path | None,
    sequences: Mapping[str, Sequence],
    click_examples: Sequence,
    empirical: EmpiricalCTRScorer | None = None,
) -> dict[str, Any]:
    """Both versions on the same holdout, as JSON-ready dicts, and the held-out click log loss of
    `empirical` (what serves ads while no version scores them) when given."""
    if champion:
        sequences = _known_to_both(sequences, challenger, champion)
    pair: dict[str, Any] = {
        "challenger": asdict(holdout_figures(challenger, sequences, click_examples)),
        "champion": asdict(holdout_figures(champion, sequences, click_examples)) if champion else None,
    }
    if empirical is not None:
        pair["empirical_logloss"] = empirical_click_logloss(empirical, click_examples)
    return pair


def decide(
    challenger: HoldoutFigures, champion: HoldoutFigures | None, empirical_logloss: float | None = None
) -> GateDecision:
    ndcg = f"NDCG@10 {challenger.ndcg_at_10:.4f}"
    if champion is not None:
        ndcg += f" vs champion {champion.ndcg_at_10:.4f}"
    first_to_score_ads = challenger.scores_ads and (champion is None or not champion.scores_ads)
    if (
        first_to_score_ads
        and empirical_logloss is not None
        and not (challenger.logloss is not None and challenger.logloss < empirical_logloss)
    ):
        loss = "none" if challenger.logloss is None else f"{challenger.logloss:.4f}"
        return GateDecision(
            False,
            f"rejected: click log loss {loss} is not below the empirical CTR scorer's "
            f"{empirical_logloss:.4f}, which scores ads until a version does ({ndcg})",
        )
    clicks = ""
    if first_to_score_ads and empirical_logloss is not None:
        clicks = f"click log loss {challenger.logloss:.4f} vs empirical CTR {empirical_logloss:.4f}, "
    if champion is None:
        return GateDecision(True, f"first interest model ({clicks}{ndcg})")
    if challenger.scores_ads != champion.scores_ads:
        if challenger.scores_ads:
            return GateDecision(True, f"promoted: the first version that scores ads ({clicks}{ndcg})")
        return GateDecision(False, f"rejected: does not score ads, the champion does ({ndcg})")
    if not challenger.scores_ads:
        if challenger.ndcg_at_10 <= champion.ndcg_at_10:
            return GateDecision(False, f"rejected: next-item {ndcg} is not better")
        return GateDecision(True, f"promoted: {ndcg} (neither scores ads)")
    loss = f"click log loss {challenger.logloss:.4f} vs champion {champion.logloss:.4f}"
    if challenger.logloss is None or champion.logloss is None or challenger.logloss > champion.logloss:
        return GateDecision(False, f"rejected: {loss} is worse ({ndcg})")
    allowed_fall = max(champion.ndcg_at_10 * NDCG_TOLERANCE, ndcg_noise(challenger, champion))
    if challenger.ndcg_at_10 < champion.ndcg_at_10 - allowed_fall:
        return GateDecision(
            False, f"rejected: next-item {ndcg} fell by more than {allowed_fall:.4f} ({loss})"
        )
    return GateDecision(True, f"promoted: {loss}, {ndcg}")


def verdict(pair: Mapping[str, Any]) -> GateDecision:
    """The gate's decision on `evaluate_pair`'s figures (as stored on `model_versions`)."""
    champion = HoldoutFigures.from_dict(pair["champion"]) if pair.get("champion") else None
    return decide(HoldoutFigures.from_dict(pair["challenger"]), champion, pair.get("empirical_logloss"))


def _metrics(path: Path) -> dict[str, Any]:
    metrics_file = path / "metrics.json"
    return json.loads(metrics_file.read_text()).get("metrics", {}) if metrics_file.exists() else {}


async def apply_gate(database: Database, path: str | Path, pair: Mapping[str, Any]) -> GateDecision:
    """Registers the challenger at `path` and promotes or rejects it by `pair` (from evaluate_pair)."""
    path = Path(path)
    decision = verdict(pair)
    # NaN (a log loss on a holdout without clicks) is JSON null: Postgres rejects the NaN token.
    metrics = json_safe({**_metrics(path), "gate": dict(pair)})
    async with database.sessionmaker() as session:
        registry = Registry(session)
        await registry.register("interest", path.name, str(path), metrics)
        if decision.promote:
            await registry.promote("interest", path.name, decision.reason)
        else:
            await registry.reject("interest", path.name, decision.reason)
    return decision


@dataclass(frozen=True, slots=True)
class TrainingRun:
    """How the training process runs: the rolling window of logs (None: all), the epoch cap
    (None: early stopping decides), its torch threads and its time limit (None: none)."""

    days: float | None
    max_epochs: int | None = None
    seed: int = 0
    threads: int = 1
    timeout_s: float | None = None

    @classmethod
    def scheduled(cls, jobs: JobsSettings) -> TrainingRun:
        """The `interest_retrain` job's run, from `[jobs]`."""
        return cls(
            days=jobs.retrain_days,
            max_epochs=jobs.retrain_max_epochs or None,
            threads=jobs.retrain_threads,
            timeout_s=jobs.retrain_timeout_s,
        )


@dataclass(frozen=True, slots=True)
class Retrained:
    """One `train_and_gate`: the new version and the gate's verdict, or why nothing was trained."""

    champion: str | None  # the champion's version when training started
    path: Path | None = None
    decision: GateDecision | None = None
    holdout: dict[str, Any] | None = None  # both versions' gate figures (evaluate_pair)
    click_examples: dict[str, Any] | None = None  # the impressions trained on, and their outcome window
    skipped: str | None = None

    @property
    def version(self) -> str | None:
        return self.path.name if self.path else None


async def train_and_gate(database: Database, url: str, run: TrainingRun, settings: Settings) -> Retrained:
    """Trains a challenger on the logs at `url` (warm start from the champion) in a child
    process under the caller's `settings`, then registers it and promotes or rejects it by the
    gate."""
    async with database.sessionmaker() as session:
        champion = await Registry(session).champion("interest")
    warm_start = champion.path if champion else None
    with tempfile.TemporaryDirectory(prefix="adserve-retrain-") as folder:
        out = Path(folder) / "result.json"
        # The child trains under these settings, not whatever its environment would load: the
        # demo's short reward window, for one, is set in-process, not in the environment. The
        # folder is the caller's own (mode 0700) and is removed with the result.
        settings_file = Path(folder) / "settings.json"
        resolved = msgspec.structs.replace(settings.database, url=url)  # an embedded server's too
        settings_file.write_bytes(msgspec.json.encode(msgspec.structs.replace(settings, database=resolved)))
        await _run_training_process(url, run, warm_start, out, settings_file)
        result = json.loads(out.read_text())
    champion_version = champion.version if champion else None
    if "skipped" in result:
        return Retrained(champion_version, skipped=result["skipped"])
    decision = await apply_gate(database, result["path"], result["pair"])
    return Retrained(
        champion_version, Path(result["path"]), decision, result["pair"], result.get("click_examples")
    )


async def _run_training_process(
    url: str, run: TrainingRun, warm_start: str | None, out: Path, settings_file: Path
) -> None:
    command = [
        sys.executable,
        "-m",
        "adserve.jobs.retrain",
        "--out",
        str(out),
        "--settings",
        str(settings_file),
    ]
    command += ["--threads", str(run.threads), "--seed", str(run.seed)]
    if run.days is not None:
        command += ["--days", str(run.days)]
    if run.max_epochs:
        command += ["--max-epochs", str(run.max_epochs)]
    if warm_start:
        command += ["--warm-start", warm_start]
    threads = str(run.threads)
    # the child's own environment: the resolved URL (an embedded server's too) and thread caps
    env = {**os.environ, "ADSERVE_DATABASE_URL": url, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    process = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    try:
        _, stderr = await asyncio.wait_for(process.communicate(), run.timeout_s)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise TimeoutError(f"training process ran past {run.timeout_s:.0f} s") from None
    except asyncio.CancelledError:
        # The scheduler stepped down or shut down: no orphaned training process.
        process.kill()
        await process.wait()
        raise
    if process.returncode != 0:
        # The tail goes to the log only: a stack trace has no place in job_runs.
        log.error("training process failed:\n%s", stderr.decode(errors="replace")[-4000:])
        raise RuntimeError(f"training process exited with status {process.returncode}")

"""The Vowpal Wabbit contextual-bandit policy: choose, learn, save, load, hot-swap.

`VWPolicy` implements `adserve.domain.Policy` with `--cb_explore_adf`. Only the top-K candidates
by expected revenue (`expected_value`) go to VW, so latency does not grow with the catalogue;
the rest get probability 0. The pmf VW returns (renormalised) is the one sampled from and the
one returned in `Choice.pmf`, so the logged propensity is exactly the probability the choice was
made with.

Objective and cost
------------------
The service maximises expected revenue. VW minimises cost, so the cost of a logged action is
minus the revenue that decision earned, on one scale shared by every campaign:

    cost = -clip((revenue + conversion_weight × conversion_value) / revenue_scale, 0, 1)

where revenue is the bid on a CPC click (0 without a click) and bid/1000 for a CPM impression
(`rewards.decision_revenue`). Why this and not a click (0/1) reward: the ranking value is
bid × P(click), so a click on a 2.00 bid is worth twice one on a 1.00 bid; regressing on
revenue makes VW's greedy action the one with the highest expected revenue, the objective
itself, while a click reward would make it chase CTR and leave money behind. Why one global
scale (and not per-campaign normalisation): dividing each campaign's revenue by its own bid
would erase exactly the bid difference the objective is about; one `revenue_scale` (set it near
the largest CPC bid) keeps every cost in [-1, 0] and the ordering between campaigns intact.
Why clip: VW's squared-loss regression is importance weighted by 1/propensity, so one outlier
bid times a large weight would dominate the weights; bounded costs keep updates stable, and
SquareCB's exploration (gamma × gap in predicted cost) is only meaningful when costs live on a
fixed [0, 1]-sized range. Conversions are off by default (`conversion_weight` 0): they are the
advertiser's value, not the service's revenue, and can be blended in deliberately.

Learner and readers
-------------------
One process learns (`learn`, then `save` a version directory); serving processes `load` a
version and `reload` newer ones: the new workspace is built off to the side and swapped in one
reference assignment under the lock, so requests never see a half-loaded model.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import vowpalwabbit

from adserve.bandit.features import example_lines
from adserve.domain import Choice, expected_value

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from adserve.bandit.records import LoggedDecision
    from adserve.domain import Candidate, DecisionContext

__all__ = [
    "MODEL_FILE",
    "POLICY_FILE",
    "CostConfig",
    "Exploration",
    "PolicyConfig",
    "VWPolicy",
    "cost_of",
    "list_versions",
    "top_k_indices",
]

MODEL_FILE = "model.vw"
POLICY_FILE = "policy.json"


class Exploration(StrEnum):
    SQUARECB = "squarecb"
    EPSILON_GREEDY = "epsilon_greedy"
    SOFTMAX = "softmax"
    BAGGING = "bagging"


@dataclass(frozen=True, slots=True)
class CostConfig:
    """How a logged outcome becomes VW's cost (see the module docstring)."""

    revenue_scale: float = 1.0
    conversion_weight: float = 0.0

    def __post_init__(self) -> None:
        if not self.revenue_scale > 0:
            raise ValueError(f"revenue_scale must be > 0, got {self.revenue_scale}")
        if self.conversion_weight < 0:
            raise ValueError(f"conversion_weight must be >= 0, got {self.conversion_weight}")


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """Everything that defines a policy's behaviour; saved with every version.

    Only the parameters of the chosen `exploration` are passed to VW: `gamma_scale` and
    `gamma_exponent` (SquareCB), `epsilon` (epsilon-greedy, and the floor under bagging so every
    top-K action keeps support for off-policy evaluation), `softmax_lambda`, `bag_size`.
    """

    exploration: Exploration = Exploration.SQUARECB
    top_k: int = 20
    epsilon: float = 0.05
    gamma_scale: float = 10.0
    gamma_exponent: float = 0.5
    softmax_lambda: float = 10.0
    bag_size: int = 5
    learning_rate: float = 0.5
    bit_precision: int = 18
    interactions: tuple[str, ...] = ("SA", "VA", "SI")
    seed: int = 0
    cost: CostConfig = field(default_factory=CostConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "exploration", Exploration(self.exploration))
        object.__setattr__(self, "interactions", tuple(self.interactions))
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if not 0 <= self.epsilon <= 1:
            raise ValueError(f"epsilon must be in [0, 1], got {self.epsilon}")
        if self.bag_size < 1:
            raise ValueError(f"bag_size must be >= 1, got {self.bag_size}")

    def vw_args(self) -> list[str]:
        """The VW command line for this config (without model-file arguments)."""
        args = [
            "--cb_explore_adf",
            "--quiet",
            f"--random_seed={self.seed}",
            f"--bit_precision={self.bit_precision}",
            f"--learning_rate={self.learning_rate}",
        ]
        args += [f"--interactions={pair}" for pair in self.interactions]
        match self.exploration:
            case Exploration.SQUARECB:
                args += [
                    "--squarecb",
                    f"--gamma_scale={self.gamma_scale}",
                    f"--gamma_exponent={self.gamma_exponent}",
                ]
            case Exploration.EPSILON_GREEDY:
                args += [f"--epsilon={self.epsilon}"]
            case Exploration.SOFTMAX:
                args += ["--softmax", f"--lambda={self.softmax_lambda}"]
            case Exploration.BAGGING:
                args += [f"--bag={self.bag_size}", f"--epsilon={self.epsilon}"]
        return args

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["exploration"] = self.exploration.value
        data["interactions"] = list(self.interactions)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PolicyConfig:
        """Build from a settings table or a saved `policy.json`; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown bandit policy settings: {sorted(unknown)}; known: {sorted(known)}")
        values = dict(data)
        if "cost" in values and not isinstance(values["cost"], CostConfig):
            values["cost"] = CostConfig(**values["cost"])
        return cls(**values)


def cost_of(revenue: float, conversion_value: float, config: CostConfig) -> float:
    """VW's cost for one logged outcome: minus scaled, clipped revenue (module docstring)."""
    value = (revenue + config.conversion_weight * conversion_value) / config.revenue_scale
    return -min(max(value, 0.0), 1.0)


def top_k_indices(
    candidates: Sequence[Candidate], click_probabilities: Sequence[float], k: int
) -> np.ndarray:
    """Indices of the k candidates with the highest expected revenue, in their original order.

    Ties keep the earlier candidate (stable sort), so the learner rebuilds the same set from
    the logged scores that serving used.
    """
    if len(candidates) <= k:
        return np.arange(len(candidates))
    ev = np.array([expected_value(c, float(p)) for c, p in zip(candidates, click_probabilities, strict=True)])
    return np.sort(np.argsort(-ev, kind="stable")[:k])


def list_versions(root: Path) -> list[str]:
    """Saved policy versions under `<root>/bandit/`, oldest first (versions sort by time)."""
    base = Path(root) / "bandit"
    if not base.is_dir():
        return []
    return sorted(
        p.name for p in base.iterdir() if (p / POLICY_FILE).is_file() and not p.name.startswith(".")
    )


def _new_version() -> str:
    now = time.time()
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now % 1 * 1e6):06d}Z"


class VWPolicy:
    """A VW `cb_explore_adf` policy; thread-safe (one workspace behind one lock).

    `examples_learned` counts every example this model has learned, across saves and loads;
    `data_window` is the (first, last) decision time learned from, or None.
    """

    def __init__(self, config: PolicyConfig | None = None, version: str = "untrained") -> None:
        self.config = config or PolicyConfig()
        self.version = version
        self.examples_learned = 0
        self.data_window: tuple[float, float] | None = None
        self._lock = threading.Lock()
        self._workspace = vowpalwabbit.Workspace(arg_list=self.config.vw_args())

    # -- serving ---------------------------------------------------------------------------

    def pmf(
        self,
        context: DecisionContext,
        candidates: Sequence[Candidate],
        click_probabilities: Sequence[float] | np.ndarray,
    ) -> np.ndarray:
        """(N,) float64 pmf over all given candidates: VW's pmf on the top-K, 0 elsewhere."""
        if len(candidates) == 0:
            raise ValueError("cannot choose among zero candidates")
        if len(click_probabilities) != len(candidates):
            raise ValueError(
                f"{len(candidates)} candidates but {len(click_probabilities)} click probabilities"
            )
        scores = np.asarray(click_probabilities, dtype=np.float64)
        if not np.all((scores >= 0) & (scores <= 1)):  # also catches NaN, which would poison VW's text
            raise ValueError(
                f"click probabilities must lie in [0, 1], got {scores[~((scores >= 0) & (scores <= 1))]}"
            )
        top = top_k_indices(candidates, scores, self.config.top_k)
        lines = example_lines(context, [candidates[i] for i in top], scores[top].tolist())
        with self._lock:
            workspace = self._workspace
            examples = workspace.parse(lines)
            try:
                vw_pmf = workspace.predict(examples)
            finally:
                workspace.finish_example(examples)
        probabilities = np.asarray(vw_pmf, dtype=np.float64)
        pmf = np.zeros(len(candidates))
        # VW works in float32; renormalise so the logged pmf sums to 1 in float64
        pmf[top] = probabilities / probabilities.sum()
        return pmf

    def choose(
        self,
        context: DecisionContext,
        candidates: list[Candidate],
        click_probabilities: np.ndarray,
        rng: np.random.Generator,
    ) -> Choice:
        """Sample one candidate from `pmf`; the returned `Choice.pmf` is that exact pmf."""
        pmf = self.pmf(context, candidates, click_probabilities)
        index = int(rng.choice(len(pmf), p=pmf))
        greedy = int(np.argmax(pmf))
        return Choice(
            pmf=tuple(pmf.tolist()),
            index=index,
            explored=index != greedy,
            details={
                "greedy_index": float(greedy),
                "actions_scored": float(min(len(pmf), self.config.top_k)),
            },
        )

    # -- learning --------------------------------------------------------------------------

    def learn(self, records: Iterable[LoggedDecision]) -> int:
        """Learn from labelled decisions in decision-time order; returns how many were learned.

        Each example holds the top-K actions rebuilt from the logged scores (plus the chosen one
        if the top-K changed since serving), labelled on the chosen action with its cost and the
        logged propensity.
        """
        ordered = sorted(records, key=lambda r: r.context.now)
        for record in ordered:
            lines = self._labelled_lines(record)
            with self._lock:
                examples = self._workspace.parse(lines)
                try:
                    self._workspace.learn(examples)
                finally:
                    self._workspace.finish_example(examples)
        if ordered:
            first, last = ordered[0].context.now, ordered[-1].context.now
            if self.data_window is not None:
                first, last = min(first, self.data_window[0]), max(last, self.data_window[1])
            self.data_window = (first, last)
            self.examples_learned += len(ordered)
        return len(ordered)

    def _labelled_lines(self, record: LoggedDecision) -> list[str]:
        top = top_k_indices(record.candidates, record.click_probabilities, self.config.top_k)
        if record.chosen not in top:
            top = np.sort(np.append(top, record.chosen))
        chosen_position = int(np.searchsorted(top, record.chosen))
        cost = cost_of(record.revenue, record.conversion_value, self.config.cost)
        return example_lines(
            record.context,
            [record.candidates[i] for i in top],
            [record.click_probabilities[i] for i in top],
            labelled=(chosen_position, cost, record.propensity),
        )

    # -- persistence -----------------------------------------------------------------------

    def save(self, root: Path | str, version: str | None = None) -> Path:
        """Write `<root>/bandit/<version>/` (model.vw + policy.json) atomically; returns the dir.

        The directory appears complete or not at all (written beside it, then renamed), so a
        server polling for new versions never loads a half-written one.
        """
        version = version or _new_version()
        base = Path(root) / "bandit"
        target = base / version
        if target.exists():
            raise FileExistsError(f"policy version {version} already exists at {target}")
        staging = base / f".staging-{version}-{os.getpid()}"
        staging.mkdir(parents=True)
        try:
            with self._lock:
                self._workspace.save(str(staging / MODEL_FILE))
                metadata = {
                    "version": version,
                    "config": self.config.to_dict(),
                    "examples_learned": self.examples_learned,
                    "data_window": list(self.data_window) if self.data_window else None,
                    "saved_at": time.time(),
                    "vowpalwabbit": vowpalwabbit.__version__,
                    "vw_args": self.config.vw_args(),
                }
            (staging / POLICY_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True))
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self.version = version
        return target

    @classmethod
    def load(cls, directory: Path | str) -> VWPolicy:
        """Rebuild a policy from a version directory alone (config, counters and VW weights)."""
        policy = cls.__new__(cls)
        policy._lock = threading.Lock()
        policy._adopt(*cls._read(Path(directory)))
        return policy

    def reload(self, directory: Path | str) -> None:
        """Hot-swap to another saved version: build it off to the side, then swap one reference."""
        config, version, learned, window, workspace = self._read(Path(directory))
        with self._lock:
            old = self._workspace
            self._adopt(config, version, learned, window, workspace)
        old.finish()

    def _adopt(
        self,
        config: PolicyConfig,
        version: str,
        learned: int,
        window: tuple[float, float] | None,
        workspace: vowpalwabbit.Workspace,
    ) -> None:
        self.config, self.version, self.examples_learned = config, version, learned
        self.data_window, self._workspace = window, workspace

    @staticmethod
    def _read(
        directory: Path,
    ) -> tuple[PolicyConfig, str, int, tuple[float, float] | None, vowpalwabbit.Workspace]:
        metadata_path, model_path = directory / POLICY_FILE, directory / MODEL_FILE
        if not metadata_path.is_file() or not model_path.is_file():
            raise FileNotFoundError(
                f"{directory} is not a saved bandit policy (needs {POLICY_FILE} and {MODEL_FILE})"
            )
        metadata = json.loads(metadata_path.read_text())
        config = PolicyConfig.from_dict(metadata["config"])
        workspace = vowpalwabbit.Workspace(
            arg_list=[*config.vw_args(), "--initial_regressor", str(model_path)]
        )
        window = tuple(metadata["data_window"]) if metadata.get("data_window") else None
        return config, metadata["version"], int(metadata["examples_learned"]), window, workspace  # type: ignore[return-value]

    def close(self) -> None:
        with self._lock:
            self._workspace.finish()

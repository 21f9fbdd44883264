"""The champion/challenger gate for interest models.

Both versions are evaluated by `evaluate_checkpoint` on the same data: next-item NDCG@10 by
leave-one-out (each user's last item is held out of training) and, when both click heads were
trained, log loss on the newest 15% of impressions (a time split). The challenger is promoted only
if its NDCG@10 is higher and its log loss no worse; otherwise it is kept as rejected. Either way
the reason, with both sets of figures, is recorded on its `model_versions` row.

`evaluate_pair` is CPU/GPU work and runs in the training process (adserve/jobs/retrain.py), never
on a serving event loop; `decide` and `apply_gate` are cheap and run in the scheduler.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adserve.jobs.runs import json_safe
from adserve.learning.registry import Registry

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

__all__ = ["GateDecision", "HoldoutFigures", "apply_gate", "decide", "evaluate_pair", "holdout_figures"]


@dataclass(frozen=True, slots=True)
class HoldoutFigures:
    ndcg_at_10: float
    logloss: float | None  # None when the click head was never trained
    click_trained: bool

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HoldoutFigures:
        return cls(data["ndcg_at_10"], data.get("logloss"), bool(data["click_trained"]))


@dataclass(frozen=True, slots=True)
class GateDecision:
    promote: bool
    reason: str


def holdout_figures(
    path: str | Path, sequences: Mapping[str, Sequence], click_examples: Sequence
) -> HoldoutFigures:
    """One version's gate figures on the given data (heavy: run it in the training process)."""
    from adserve.interest.checkpoint import load_checkpoint
    from adserve.interest.training import evaluate_checkpoint

    click_trained = load_checkpoint(path).click_trained
    report = evaluate_checkpoint(path, sequences, click_examples, device="cpu")
    logloss = report["click"].get("interest", {}).get("logloss") if click_trained else None
    return HoldoutFigures(float(report["next_item"]["interest"]["ndcg@10"]), logloss, click_trained)


def evaluate_pair(
    challenger: str | Path,
    champion: str | Path | None,
    sequences: Mapping[str, Sequence],
    click_examples: Sequence,
) -> dict[str, dict[str, Any] | None]:
    """Both versions on the same holdout, as JSON-ready dicts."""
    return {
        "challenger": asdict(holdout_figures(challenger, sequences, click_examples)),
        "champion": asdict(holdout_figures(champion, sequences, click_examples)) if champion else None,
    }


def decide(challenger: HoldoutFigures, champion: HoldoutFigures | None) -> GateDecision:
    if champion is None:
        return GateDecision(True, f"first interest model (NDCG@10 {challenger.ndcg_at_10:.4f})")
    ndcg = f"NDCG@10 {challenger.ndcg_at_10:.4f} vs champion {champion.ndcg_at_10:.4f}"
    if challenger.ndcg_at_10 <= champion.ndcg_at_10:
        return GateDecision(False, f"rejected: next-item {ndcg} is not better")
    if challenger.logloss is not None and champion.logloss is not None:
        loss = f"click log loss {challenger.logloss:.4f} vs champion {champion.logloss:.4f}"
        if challenger.logloss > champion.logloss:
            return GateDecision(False, f"rejected: {loss} is worse ({ndcg})")
        return GateDecision(True, f"promoted: {ndcg}, {loss}")
    return GateDecision(True, f"promoted: {ndcg} (click log loss not compared: a click head is untrained)")


def _metrics(path: Path) -> dict[str, Any]:
    metrics_file = path / "metrics.json"
    return json.loads(metrics_file.read_text()).get("metrics", {}) if metrics_file.exists() else {}


async def apply_gate(
    sessionmaker: async_sessionmaker[AsyncSession], path: str | Path, pair: Mapping[str, Any]
) -> GateDecision:
    """Registers the challenger at `path` and promotes or rejects it by `pair` (from evaluate_pair)."""
    path = Path(path)
    champion = HoldoutFigures.from_dict(pair["champion"]) if pair.get("champion") else None
    decision = decide(HoldoutFigures.from_dict(pair["challenger"]), champion)
    # NaN (a log loss on a holdout without clicks) is JSON null: Postgres rejects the NaN token.
    metrics = json_safe({**_metrics(path), "gate": dict(pair)})
    async with sessionmaker() as session:
        registry = Registry(session)
        await registry.register("interest", path.name, str(path), metrics)
        if decision.promote:
            await registry.promote("interest", path.name, decision.reason)
        else:
            await registry.reject("interest", path.name, decision.reason)
    return decision

"""Self-describing interest-model checkpoints: `<root>/interest/<version>/{model.pt, metrics.json}`.

model.pt holds `{"format", "version", "model": state_dict, "config": asdict(InterestConfig),
"vocab": [item ids of output rows 1..V-1], "calibration": dict | None, "metrics": dict,
"data_window": dict, "train_config": dict}`; loading rebuilds the model from it alone.
Files are written to a temporary name and renamed, so a reader never sees half a checkpoint.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from adserve.interest.calibration import Calibrator, calibrator_from_dict
from adserve.interest.data import ItemVocabulary
from adserve.interest.fusion import ClickFusion
from adserve.interest.network import InterestConfig, InterestModel

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "LoadedCheckpoint",
    "config_from_dict",
    "load_checkpoint",
    "new_version",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = 1
MODEL_FILE = "model.pt"
METRICS_FILE = "metrics.json"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or inconsistent."""


@dataclass(frozen=True, slots=True)
class LoadedCheckpoint:
    model: InterestModel  # in eval() mode, on CPU
    config: InterestConfig
    vocab: ItemVocabulary
    calibration: Calibrator  # identity (plain sigmoid) when the click head was never trained
    click_trained: bool  # False: trained without impressions, P(click) is not meaningful
    fusion: ClickFusion | None  # the served P(click) (fusion.py); None without impressions
    metrics: dict[str, Any]
    data_window: dict[str, Any]
    version: str
    path: Path


def new_version(now: datetime | None = None) -> str:
    """A sortable version name from the UTC time, e.g. 20250101T120000Z."""
    return (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")


def config_from_dict(data: dict[str, Any]) -> InterestConfig:
    """InterestConfig from asdict() output; unknown keys are an error, missing keys take defaults."""
    known = {f.name for f in fields(InterestConfig)}
    unknown = set(data) - known
    if unknown:
        raise CheckpointError(f"checkpoint config has unknown field(s) {sorted(unknown)}")
    values = dict(data)
    if "click_mlp" in values:
        values["click_mlp"] = tuple(values["click_mlp"])
    return InterestConfig(**values)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def save_checkpoint(
    root: str | Path,
    model: InterestModel,
    vocab: ItemVocabulary,
    calibration: Calibrator | None,
    metrics: dict[str, Any],
    data_window: dict[str, Any],
    train_config: dict[str, Any] | None = None,
    version: str | None = None,
    fusion: ClickFusion | None = None,
) -> Path:
    """Write `<root>/interest/<version>/model.pt` and `metrics.json`; returns the version directory."""
    version = version or new_version()
    directory = Path(root) / "interest" / version
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": version,
        "model": state,
        "config": asdict(model.cfg),
        "vocab": list(vocab.item_ids),
        "calibration": calibration.to_dict() if calibration is not None else None,
        "fusion": fusion.to_dict() if fusion is not None else None,
        "metrics": metrics,
        "data_window": data_window,
        "train_config": train_config or {},
    }
    temporary = directory / f".{MODEL_FILE}.{os.getpid()}.tmp"
    torch.save(payload, temporary)
    os.replace(temporary, directory / MODEL_FILE)
    temporary = directory / f".{METRICS_FILE}.{os.getpid()}.tmp"
    temporary.write_text(
        json.dumps(_json_safe({"version": version, "metrics": metrics, "data_window": data_window}), indent=2)
    )
    os.replace(temporary, directory / METRICS_FILE)
    return directory


def load_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """Rebuild the model from a version directory (or its model.pt) alone, in eval mode on CPU.

    Raises CheckpointError with the path and the reason for anything missing or corrupt.
    """
    path = Path(path)
    file = path / MODEL_FILE if path.is_dir() else path
    if not file.is_file():
        raise CheckpointError(f"no interest model at {file}")
    try:
        payload = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a truncated or foreign file
        raise CheckpointError(f"cannot read interest model {file}: {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{file} is not an interest checkpoint of format {CHECKPOINT_FORMAT}")
    try:
        config = config_from_dict(payload["config"])
        vocab = ItemVocabulary(payload["vocab"])
        if len(vocab) != config.n_items:
            raise CheckpointError(f"vocabulary has {len(vocab)} rows, config says {config.n_items}")
        model = InterestModel(config)
        model.load_state_dict(payload["model"])
        calibration = calibrator_from_dict(payload.get("calibration"))
        fusion = ClickFusion.from_dict(payload.get("fusion"))
    except CheckpointError:
        raise
    except Exception as error:
        raise CheckpointError(f"interest model {file} is inconsistent: {error}") from error
    model.eval()
    return LoadedCheckpoint(
        model=model,
        config=config,
        vocab=vocab,
        calibration=calibration,
        click_trained=payload.get("calibration") is not None,
        fusion=fusion,
        metrics=payload.get("metrics", {}),
        data_window=payload.get("data_window", {}),
        version=file.parent.name,  # the directory is the registry's identity, even for a copied version
        path=file.parent,
    )

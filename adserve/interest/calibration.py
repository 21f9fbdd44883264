"""Turning click logits into calibrated probabilities, and measuring how calibrated they are.

Ads are ranked by bid × P(click), so a model that is 2x optimistic on one campaign's audience
steals its budget: the probabilities themselves must match observed click rates. Calibrators are
fitted on held-out recent impressions (never on the training rows) and stored in the checkpoint
as a small dict.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

__all__ = [
    "Calibrator",
    "IsotonicCalibrator",
    "PlattCalibrator",
    "calibration_ratio",
    "calibrator_from_dict",
    "fit_calibrator",
    "reliability_by_decile",
]

_EPS = 1e-6


class Calibrator(Protocol):
    method: str

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        """(N,) logits → (N,) float64 probabilities in [0, 1]."""
        ...

    def to_dict(self) -> dict[str, Any]: ...


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free


@dataclass(frozen=True, slots=True)
class PlattCalibrator:
    """p = sigmoid(a · logit + b)."""

    a: float = 1.0
    b: float = 0.0
    method: str = "platt"

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        return _sigmoid(self.a * np.asarray(logits, dtype=np.float64) + self.b)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "a": self.a, "b": self.b}

    @classmethod
    def fit(cls, logits: np.ndarray, labels: np.ndarray, iterations: int = 50) -> PlattCalibrator:
        """Newton's method on the log loss of (a, b), with Platt's smoothed targets so that a
        separable holdout does not send a to infinity."""
        x = np.asarray(logits, dtype=np.float64)
        y = np.asarray(labels, dtype=np.float64)
        positives, negatives = y.sum(), len(y) - y.sum()
        target = np.where(y > 0, (positives + 1) / (positives + 2), 1 / (negatives + 2))
        a, b = 1.0, 0.0
        for _ in range(iterations):
            p = _sigmoid(a * x + b)
            weight = np.maximum(p * (1 - p), 1e-12)
            gradient = np.array([((p - target) * x).sum(), (p - target).sum()])
            hessian = np.array(
                [
                    [(weight * x * x).sum() + 1e-9, (weight * x).sum()],
                    [(weight * x).sum(), weight.sum() + 1e-9],
                ]
            )
            step = np.linalg.solve(hessian, gradient)
            a, b = a - step[0], b - step[1]
            if np.abs(step).max() < 1e-10:
                break
        return cls(float(a), float(b))


@dataclass(frozen=True, slots=True)
class IsotonicCalibrator:
    """Monotone step function fitted by pool-adjacent-violators, linearly interpolated."""

    thresholds: tuple[float, ...]
    values: tuple[float, ...]
    method: str = "isotonic"

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        p = np.interp(np.asarray(logits, dtype=np.float64), self.thresholds, self.values)
        return np.clip(p, _EPS, 1 - _EPS)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "thresholds": list(self.thresholds), "values": list(self.values)}

    @classmethod
    def fit(cls, logits: np.ndarray, labels: np.ndarray) -> IsotonicCalibrator:
        order = np.argsort(logits, kind="stable")
        x = np.asarray(logits, dtype=np.float64)[order]
        y = np.asarray(labels, dtype=np.float64)[order]
        # blocks of (sum of labels, count, first x, last x), merged while they decrease
        sums: list[float] = []
        counts: list[float] = []
        lows: list[float] = []
        highs: list[float] = []
        for xi, yi in zip(x, y, strict=True):
            sums.append(yi)
            counts.append(1.0)
            lows.append(xi)
            highs.append(xi)
            while len(sums) > 1 and sums[-2] / counts[-2] >= sums[-1] / counts[-1]:
                total, count, high = sums.pop(), counts.pop(), highs.pop()
                lows.pop()
                sums[-1] += total
                counts[-1] += count
                highs[-1] = high
        thresholds, values = [], []
        for total, count, low, high in zip(sums, counts, lows, highs, strict=True):
            thresholds += [low, high] if high > low else [low]
            values += [total / count] * (2 if high > low else 1)
        return cls(tuple(thresholds), tuple(values))


def fit_calibrator(logits: np.ndarray, labels: np.ndarray, method: str = "platt") -> Calibrator:
    """Fit `method` ("platt" or "isotonic") on held-out logits and 0/1 labels."""
    if len(logits) != len(labels) or len(logits) == 0:
        raise ValueError("calibration needs as many labels as logits, and at least one")
    if method == "platt":
        return PlattCalibrator.fit(logits, labels)
    if method == "isotonic":
        return IsotonicCalibrator.fit(logits, labels)
    raise ValueError(f"unknown calibration method {method!r}; expected 'platt' or 'isotonic'")


def calibrator_from_dict(data: dict[str, Any] | None) -> Calibrator:
    """Rebuild a calibrator stored by `to_dict`; None gives the identity (plain sigmoid)."""
    if data is None:
        return PlattCalibrator()
    if data["method"] == "platt":
        return PlattCalibrator(float(data["a"]), float(data["b"]))
    if data["method"] == "isotonic":
        return IsotonicCalibrator(tuple(data["thresholds"]), tuple(data["values"]))
    raise ValueError(f"unknown calibration method {data['method']!r} in checkpoint")


def calibration_ratio(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Sum of predicted / sum of observed clicks (1.0 is calibrated; nan without clicks)."""
    clicks = float(np.sum(labels))
    return float(np.sum(probabilities)) / clicks if clicks > 0 else float("nan")


def reliability_by_decile(probabilities: np.ndarray, labels: np.ndarray) -> list[dict[str, float]]:
    """Rows sorted by prediction, cut into 10 equal-count bins: mean predicted vs observed rate."""
    order = np.argsort(probabilities, kind="stable")
    p = np.asarray(probabilities, dtype=np.float64)[order]
    y = np.asarray(labels, dtype=np.float64)[order]
    rows = []
    for decile, idx in enumerate(np.array_split(np.arange(len(p)), 10)):
        if len(idx) == 0:
            continue
        rows.append(
            {
                "decile": float(decile + 1),
                "mean_predicted": float(p[idx].mean()),
                "observed_rate": float(y[idx].mean()),
                "count": float(len(idx)),
            }
        )
    return rows

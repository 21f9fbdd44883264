from __future__ import annotations

import numpy as np
import pytest

from adserve.interest.calibration import (
    IsotonicCalibrator,
    PlattCalibrator,
    calibration_ratio,
    calibrator_from_dict,
    fit_calibrator,
    reliability_by_decile,
)


def _labels(logits: np.ndarray, a: float, b: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random(len(logits)) < 1 / (1 + np.exp(-(a * logits + b)))).astype(float)


def test_platt_recovers_a_known_distortion() -> None:
    logits = np.random.default_rng(1).normal(0, 2, 20_000)
    labels = _labels(logits, 0.5, -1.5)
    fitted = fit_calibrator(logits, labels, "platt")
    assert fitted.a == pytest.approx(0.5, abs=0.05)
    assert fitted.b == pytest.approx(-1.5, abs=0.08)
    assert calibration_ratio(fitted(logits), labels) == pytest.approx(1.0, abs=0.02)
    raw = 1 / (1 + np.exp(-logits))
    assert abs(calibration_ratio(raw, labels) - 1.0) > 0.5  # the uncalibrated scores were far off


def test_isotonic_is_monotone_and_calibrated_in_sample() -> None:
    logits = np.random.default_rng(2).normal(0, 1, 5000)
    labels = _labels(logits, 3.0, -2.0, seed=3)
    fitted = fit_calibrator(logits, labels, "isotonic")
    grid = np.linspace(-4, 4, 200)
    assert np.all(np.diff(fitted(grid)) >= 0)
    assert calibration_ratio(fitted(logits), labels) == pytest.approx(1.0, abs=0.01)


def test_isotonic_pools_violators_by_hand() -> None:
    fitted = IsotonicCalibrator.fit(np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.0, 1.0, 0.0, 1.0]))
    assert fitted.values == (0.0, 0.5, 0.5, 1.0)
    assert fitted(np.array([2.5]))[0] == pytest.approx(0.5)


def test_round_trip_through_dict() -> None:
    for calibrator in (PlattCalibrator(0.7, -0.2), IsotonicCalibrator((0.0, 1.0), (0.1, 0.4))):
        rebuilt = calibrator_from_dict(calibrator.to_dict())
        x = np.array([-1.0, 0.3, 2.0])
        assert np.allclose(rebuilt(x), calibrator(x))
    assert np.allclose(calibrator_from_dict(None)(np.array([0.0])), [0.5])
    with pytest.raises(ValueError, match="unknown calibration method"):
        fit_calibrator(np.zeros(3), np.zeros(3), "magic")


def test_ratio_and_deciles_by_hand() -> None:
    assert calibration_ratio(np.array([0.2, 0.3, 0.5]), np.array([0, 1, 1])) == pytest.approx(0.5)
    assert np.isnan(calibration_ratio(np.array([0.2]), np.array([0])))
    p = np.arange(20) / 20
    y = (np.arange(20) >= 10).astype(float)
    rows = reliability_by_decile(p, y)
    assert len(rows) == 10 and all(r["count"] == 2 for r in rows)
    assert rows[0]["mean_predicted"] == pytest.approx(0.025) and rows[0]["observed_rate"] == 0.0
    assert rows[-1]["observed_rate"] == 1.0

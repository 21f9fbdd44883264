"""Synthetic shop with a known click model (the oracle) for demos, tests and benchmarks.

Pure Python + numpy: nothing here imports torch, Litestar or SQLAlchemy.
"""

from __future__ import annotations

from adserve.sim.harness import (
    ConstantScorer,
    GreedyPolicy,
    OraclePolicy,
    OracleScorer,
    SimDecision,
    SimResults,
    UniformRandomPolicy,
    WindowStats,
    run,
)
from adserve.sim.oracle import BestChoice, ClickModel, ExpectedCTR, Oracle
from adserve.sim.traffic import AdOutcome, AdRequest, PageView, Traffic
from adserve.sim.world import Catalogue, Placement, World, WorldConfig

__all__ = [
    "AdOutcome",
    "AdRequest",
    "BestChoice",
    "Catalogue",
    "ClickModel",
    "ConstantScorer",
    "ExpectedCTR",
    "GreedyPolicy",
    "Oracle",
    "OraclePolicy",
    "OracleScorer",
    "PageView",
    "Placement",
    "SimDecision",
    "SimResults",
    "Traffic",
    "UniformRandomPolicy",
    "WindowStats",
    "World",
    "WorldConfig",
    "run",
]

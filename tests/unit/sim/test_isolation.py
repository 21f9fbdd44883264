"""The simulator stands alone (numpy only) and reproduces across processes and hash seeds."""

from __future__ import annotations

import json
import os
import subprocess
import sys

_PROGRAM = """
import hashlib, json, sys
from itertools import islice
from adserve.sim import ConstantScorer, Traffic, UniformRandomPolicy, World, WorldConfig, run

world = World(WorldConfig(seed=5, n_users=300))
digest = hashlib.sha256()
for page in islice(Traffic(world), 1500):
    digest.update(repr((page.ts, page.user.key, page.events, [r.click_draw for r in page.ad_requests])).encode())
results = run(world, ConstantScorer(), UniformRandomPolicy(), 1000)
digest.update(results.clicked.tobytes() + results.chosen_creative_id.tobytes())
heavy = sorted(m for m in ("torch", "litestar", "sqlalchemy", "vowpalwabbit") if m in sys.modules)
print(json.dumps({"digest": digest.hexdigest(), "heavy": heavy}))
"""


def _run_in_fresh_process(hash_seed: str) -> dict[str, object]:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    completed = subprocess.run(
        [sys.executable, "-c", _PROGRAM], env=env, capture_output=True, text=True, check=True, timeout=120
    )
    return json.loads(completed.stdout)


def test_simulator_imports_no_heavy_framework_and_is_reproducible_across_processes() -> None:
    first, second = _run_in_fresh_process("1"), _run_in_fresh_process("2")
    assert first["heavy"] == [] == second["heavy"]
    assert first["digest"] == second["digest"]

"""Serving the registry's champions: load at start, hot-swap when the champion changes.

Every serving process polls `model_versions` (cheap: one indexed row per kind) and, when a kind's
champion differs from what it serves, builds the new version off the event loop and swaps one
reference; requests in flight finish on the old one. A version that fails to load leaves the
current one serving and is reported on /ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from adserve.metrics import observe_model_load

if TYPE_CHECKING:
    import asyncpg

    from adserve.learning.empirical_ctr import EmpiricalCTRScorer
    from adserve.serving.pipeline import DecisionPipeline
    from adserve.settings import Settings

__all__ = ["ModelWatcher"]

log = logging.getLogger(__name__)

CHAMPIONS_SQL = "SELECT kind, version, path FROM model_versions WHERE status = 'champion'"


class ModelWatcher:
    def __init__(
        self, pool: asyncpg.Pool, pipeline: DecisionPipeline, fallback: EmpiricalCTRScorer, settings: Settings
    ) -> None:
        self.pool = pool
        self.pipeline = pipeline
        self.fallback = fallback
        self.settings = settings
        self.serving: dict[str, str] = {}  # kind -> version served
        self.errors: dict[str, str] = {}
        self.interest = None  # InterestScorerHolder once an interest model has loaded
        self._task: asyncio.Task | None = None

    def readiness(self) -> dict[str, str]:
        """Failures to load a champion are reported, while the previous model keeps serving."""
        return {f"{kind}_model": f"not loaded: {error}" for kind, error in self.errors.items()}

    async def start(self) -> None:
        await self.poll()
        self._task = asyncio.create_task(self._run(), name="model-watcher")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.serving.model_poll_s)
            await self.poll()

    async def poll(self) -> None:
        try:
            async with self.pool.acquire(timeout=2.0) as connection:
                rows = await connection.fetch(CHAMPIONS_SQL)
        except Exception:
            return
        for row in rows:
            if self.serving.get(row["kind"]) == row["version"]:
                continue
            if row["kind"] == "interest":  # recommendations use it even when it does not score ads
                await self._load_interest(row["version"], row["path"])
            elif row["kind"] == "bandit" and self.settings.serving.policy == "vw":
                await self._load_bandit(row["version"], row["path"])

    async def _load_interest(self, version: str, path: str) -> None:
        import torch

        from adserve.interest.scorer import InterestScorerHolder

        # One thread per forward pass: passes run one batch at a time in a worker thread beside
        # the event loop, and idle OpenMP workers spinning for more cost more CPU than they save.
        torch.set_num_threads(self.settings.serving.torch_threads)

        try:
            if self.interest is None:
                serving = self.settings.serving
                holder: Any = await asyncio.to_thread(
                    InterestScorerHolder,
                    path,
                    serving.interest_precision,
                    shortlist=serving.click_head_shortlist,
                )
                self.interest = holder
            else:
                await asyncio.to_thread(self.interest.load, path)
        except Exception as error:
            self.errors["interest"] = f"{version}: {error}"
            observe_model_load("interest", "failed")
            self.serving["interest"] = version  # do not retry a broken artifact every poll
            return
        self.errors.pop("interest", None)
        observe_model_load("interest", "loaded")
        self.serving["interest"] = version
        # A model fitted without impressions ranks items (recommendations) but does not score ads:
        # the empirical scorer keeps serving them (the cold start).
        scores_ads = self.settings.serving.scorer == "interest" and self.interest.current.scores_ads
        self.pipeline.scorer = self.interest if scores_ads else self.fallback
        log.info("interest model %s loaded; scoring with %s", version, self.pipeline.scorer.version)

    async def _load_bandit(self, version: str, path: str) -> None:
        from adserve.bandit.policy import VWPolicy

        try:
            policy = self.pipeline.policy
            if isinstance(policy, VWPolicy):
                await asyncio.to_thread(policy.reload, path)
            else:
                self.pipeline.policy = await asyncio.to_thread(VWPolicy.load, path)
        except Exception as error:
            self.errors["bandit"] = f"{version}: {error}"
            observe_model_load("bandit", "failed")
            self.serving["bandit"] = version
            return
        self.errors.pop("bandit", None)
        observe_model_load("bandit", "loaded")
        self.serving["bandit"] = version
        log.info("bandit policy %s loaded", version)

"""The bandit's one learner: the champion (or a fresh policy) + un-learned rewards → a new version
in `<models_dir>/bandit/<version>/`, registered in `model_versions` and gated.

`adserve.bandit.learner` holds the storage-free step (progressive validation and the gate) that the
simulator uses too; this module reads the rewards, saves the policy and writes the registry.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import text

from adserve.bandit.learner import gate, learn_progressively
from adserve.bandit.policy import PolicyConfig, VWPolicy
from adserve.learning.decisions import EPOCH, FAR_FUTURE, LoggedBatch, fetch_logged
from adserve.learning.registry import Registry

if TYPE_CHECKING:
    from adserve.db.engine import Database
    from adserve.db.tables import ModelVersion
    from adserve.settings import Settings

__all__ = ["LEARNER_LOCK_KEY", "LearnStep", "learn_once"]

# pg_try_advisory_lock key of the one learner (the CLI and the scheduled job never learn at once)
LEARNER_LOCK_KEY = 0x6164_6276_6C65_6172 & 0x7FFF_FFFF_FFFF_FFFF


@dataclass(frozen=True, slots=True)
class LearnStep:
    """What one call did: the version it registered (None when nothing was learned) and, when it
    did not run at all, why."""

    registered: ModelVersion | None = None
    skipped: str | None = None


async def learn_once(database: Database, settings: Settings, *, seed: int = 0) -> LearnStep:
    """One learning step of the one learner.

    Starts from the learner lineage (the newest registered version, whatever its status; a fresh
    `VWPolicy` configured from `[bandit]` before the first), feeds the un-learned rewarded
    decisions (at most `bandit.learn_batch_max`, oldest first; a decision is rewarded only once
    its reward window has closed, so clicks and non-clicks arrive together) to VW in time order,
    saves `<models_dir>/bandit/<version>/`, marks those rewards learned and registers the version.
    The first version becomes champion; later ones are promoted unless significantly worse than
    the champion (`adserve.bandit.learner.gate`), else kept as rejected with the reason. A
    rejected batch is not lost: the next step continues from the rejected version, and the
    champion keeps serving until a later version of the lineage passes the gate. Restarting the
    process resumes from the newest version on disk. Only one learner runs at a time (a Postgres
    advisory lock): a concurrent call is skipped.
    """
    async with database.pool.acquire() as connection:
        if not await connection.fetchval("SELECT pg_try_advisory_lock($1)", LEARNER_LOCK_KEY):
            return LearnStep(skipped="another learner is running")
        try:
            async with database.sessionmaker() as session:
                registry = Registry(session)
                champion = await registry.champion("bandit")
                lineage = await registry.latest("bandit")
            batch = await fetch_logged(connection, EPOCH, FAR_FUTURE, True, settings.bandit.learn_batch_max)
            if not batch.reward_ids:
                return LearnStep()
            return LearnStep(await _learn(database, settings, batch, champion, lineage, seed))
        finally:
            await connection.execute("SELECT pg_advisory_unlock($1)", LEARNER_LOCK_KEY)


async def _learn(
    database: Database,
    settings: Settings,
    batch: LoggedBatch,
    champion: ModelVersion | None,
    lineage: ModelVersion | None,
    seed: int,
) -> ModelVersion:
    records = batch.records
    if lineage is not None and Path(lineage.path).is_dir():
        policy = await asyncio.to_thread(VWPolicy.load, lineage.path)
    else:
        policy = VWPolicy(PolicyConfig.from_dict(settings.bandit.policy_dict()))
    baseline = None
    if champion is not None and Path(champion.path).is_dir():
        baseline = await asyncio.to_thread(VWPolicy.load, champion.path)
    try:
        learner_pmfs, champion_pmfs = await asyncio.to_thread(learn_progressively, policy, baseline, records)
        path = await asyncio.to_thread(policy.save, Path(settings.models_dir))
    finally:
        if baseline is not None:
            baseline.close()
    metrics: dict[str, Any] = {
        "examples": len(records),
        "skipped": len(batch.reward_ids) - len(records),
        "examples_learned": policy.examples_learned,
        "clicks": sum(r.clicked for r in records),
        "revenue": round(sum(r.revenue for r in records), 6),
        "data_window": [datetime.fromtimestamp(t, UTC).isoformat() for t in policy.data_window]
        if policy.data_window
        else None,
        "base_version": lineage.version if lineage else None,
        "champion_version": champion.version if champion else None,
        "scorer_versions": dict(policy.scorer_versions),
        "config": policy.config.to_dict(),
    }
    promote, reason = True, "first bandit version"
    if baseline is not None and records:
        verdict = gate(records, learner_pmfs, champion_pmfs, seed)
        promote, reason, metrics["gate"] = verdict.promote, verdict.reason, verdict.figures
    elif champion is not None and not records:
        promote, reason = False, "no decision could be rebuilt in this batch"
    policy.close()
    async with database.sessionmaker() as session:
        registry = Registry(session)
        await session.execute(
            text("UPDATE rewards SET learned = true WHERE decision_id = ANY(:ids)"), {"ids": batch.reward_ids}
        )
        await registry.register("bandit", path.name, str(path), metrics)  # commits both
        if promote:
            return await registry.promote("bandit", path.name, reason)
        return await registry.reject("bandit", path.name, reason)

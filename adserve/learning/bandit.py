"""The bandit's Postgres side: reward join, logged decisions, one learner, off-policy evaluation.

`adserve.bandit` is pure (VW, no SQL); this module reads and writes the rows it works on:

- `join_rewards_once`: decisions whose outcome is known → `rewards` rows (idempotent);
- `load_logged_decisions`: rewarded decisions → `LoggedDecision` records, in decision-time order;
- `learn_once`: the one learner: champion (or a fresh policy) + un-learned rewards → a new
  version in `<models_dir>/bandit/<version>/`, registered in `model_versions` and gated;
- `ope_from_logs`: IPS / SNIPS / DR of the logging, uniform, greedy, champion and a challenger
  policy on the logged decisions.

Each takes its database as a URL, an asyncpg pool, or the scheduler's `JobContext` (which the
`bandit_learning` job passes; called with one, `join_rewards_once` and `learn_once` return the
figures recorded on the job's `job_runs` row instead of a count / a registry row).

Which bid is revenue. Decisions log the candidates' ids, scores and pmf but not their bids; the
signed tracking token does carry the price as served, and the tracking layer stores it as the
charged `cost` of the impression (CPM: price/1000) or the valid click (CPC: the bid). The join
uses those charged costs, so a campaign whose bid or pricing changed after serving is rewarded
at the price it was served at. Only where nothing was charged (no impression or valid click:
revenue 0 for CPC either way) does it fall back to the campaign's current pricing and bid.
`LoggedDecision` candidates are rebuilt with today's creative and campaign rows for the same
reason (their bids at serving time are not logged); the pmf, propensity and scores are the logged
ones, so importance weights stay exact and only the features of a re-priced campaign move.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import numpy as np
from sqlalchemy import text

from adserve.bandit.records import LoggedDecision
from adserve.bandit.rewards import (
    DEFAULT_REWARD_WINDOW_S,
    ClickEvent,
    ConversionEvent,
    ServedDecision,
    join_rewards,
)
from adserve.db.engine import asyncpg_dsn
from adserve.domain import Candidate, Pricing, expected_value
from adserve.errors import NotFound
from adserve.learning.datasets import _context
from adserve.learning.registry import Registry

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from adserve.bandit.ope import OpeReport
    from adserve.db.tables import ModelVersion
    from adserve.settings import Settings

__all__ = [
    "LEARNER_LOCK_KEY",
    "join_rewards_once",
    "learn_once",
    "load_logged_decisions",
    "ope_from_logs",
]

log = logging.getLogger(__name__)

# pg_try_advisory_lock key of the one learner (the CLI and the scheduled job never learn at once)
LEARNER_LOCK_KEY = 0x6164_6276_6C65_6172 & 0x7FFF_FFFF_FFFF_FFFF
# decisions older than this that were never joined (the learner was down for longer) stay unlabelled
JOIN_LOOKBACK_S = 7 * 86400.0
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
FAR_FUTURE = datetime(9999, 1, 1, tzinfo=UTC)

PENDING_SQL = """
SELECT d.id, d.ts, d.chosen_creative_id, c.pricing, c.bid,
       i.cost AS impression_cost, i.decision_id IS NOT NULL AS impressed
FROM decisions d
LEFT JOIN rewards r ON r.decision_id = d.id
LEFT JOIN impressions i ON i.decision_id = d.id
LEFT JOIN campaigns c ON c.id = d.campaign_id
WHERE r.decision_id IS NULL AND d.chosen_creative_id IS NOT NULL
  AND d.ts >= $1::timestamptz - make_interval(secs => $3::float8)
  AND d.ts < $1::timestamptz - make_interval(secs => $2::float8)
ORDER BY d.ts
LIMIT $4::bigint
"""

INSERT_REWARDS_SQL = """
INSERT INTO rewards (decision_id, decision_ts, clicked, conversion_value, revenue, learned)
SELECT id, ts, clicked, conversion_value::numeric, revenue::numeric, false
FROM unnest($1::uuid[], $2::timestamptz[], $3::bool[], $4::float8[], $5::float8[])
     AS t(id, ts, clicked, conversion_value, revenue)
ON CONFLICT (decision_id) DO NOTHING
"""

LOGGED_SQL = """
SELECT d.id, d.ts, d.user_id, d.context, d.candidate_ids, d.scores, d.pmf, d.chosen_creative_id,
       d.scorer_version, COALESCE(p.key, 'placement-' || d.placement_id) AS placement, COALESCE(p.position, 0) AS position,
       r.clicked, r.revenue, r.conversion_value
FROM rewards r
JOIN decisions d ON d.id = r.decision_id
LEFT JOIN placements p ON p.id = d.placement_id
WHERE r.decision_ts >= $1::timestamptz AND r.decision_ts < $2::timestamptz
  AND (NOT $3::bool OR NOT r.learned)
ORDER BY r.decision_ts, r.decision_id
LIMIT $4::bigint
"""

CANDIDATES_SQL = """
SELECT cr.id, cr.campaign_id, cr.advertiser_id, cr.category, cr.brand, cr.product_ids, cr.price,
       c.pricing, c.bid
FROM creatives cr JOIN campaigns c ON c.id = cr.campaign_id
WHERE cr.id = ANY($1::bigint[])
"""


# -- connections -----------------------------------------------------------------------------


def _is_job_context(source: Any) -> bool:
    return hasattr(source, "sessionmaker") and hasattr(source, "pool") and hasattr(source, "settings")


@contextlib.asynccontextmanager
async def _connection(source: Any) -> AsyncIterator[asyncpg.Connection]:
    """A connection from a URL, an asyncpg pool, or a `JobContext` (its pool)."""
    if isinstance(source, str):
        connection = await asyncpg.connect(**asyncpg_dsn(source))
        try:
            yield connection
        finally:
            await connection.close()
        return
    pool = source.pool if _is_job_context(source) else source
    async with pool.acquire() as connection:
        yield connection


@contextlib.asynccontextmanager
async def _session(
    source: Any, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession] | None
) -> AsyncIterator[AsyncSession]:
    if sessionmaker is not None:
        async with sessionmaker() as session:
            yield session
        return
    from adserve.db.engine import create_engine, sessionmaker_for

    engine = create_engine(source if isinstance(source, str) else source.url, settings)
    try:
        async with sessionmaker_for(engine)() as session:
            yield session
    finally:
        await engine.dispose()


def _as_datetime(now: datetime | float | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if isinstance(now, int | float):
        return datetime.fromtimestamp(now, UTC)
    return now


# -- reward join -----------------------------------------------------------------------------


async def join_rewards_once(
    source: Any,
    now: datetime | float | None = None,
    reward_window_s: float | None = None,
    batch_max: int = 100_000,
) -> Any:
    """Labels every decision whose outcome is known at `now` and stores its `rewards` row.

    A decision is joined once its window has closed (default reward: no click) or as soon as a
    valid click inside the window is known; invalid clicks and clicks after the window never
    count (`adserve.bandit.rewards`). Inserts are ON CONFLICT DO NOTHING, so concurrent or
    repeated joins store each decision once. Returns the number of rows inserted (with a
    `JobContext`: the job's figures).
    """
    job = _is_job_context(source)
    if reward_window_s is None:
        reward_window_s = source.settings.bandit.reward_window_s if job else DEFAULT_REWARD_WINDOW_S
    at = _as_datetime(now)
    lookback = max(JOIN_LOOKBACK_S, 2 * reward_window_s)
    async with _connection(source) as connection:
        pending = await connection.fetch(PENDING_SQL, at, float(reward_window_s), lookback, batch_max)
        if not pending:
            return {"joined": 0, "pending": 0} if job else 0
        ids = [row["id"] for row in pending]
        click_rows = await connection.fetch(
            "SELECT decision_id, ts, valid, cost FROM clicks WHERE decision_id = ANY($1::uuid[])", ids
        )
        conversion_rows = await connection.fetch(
            "SELECT decision_id, value FROM conversions WHERE decision_id = ANY($1::uuid[])", ids
        )
        clicks = [ClickEvent(r["decision_id"], r["ts"].timestamp(), r["valid"]) for r in click_rows]
        click_cost: dict[Any, float] = {}
        for row in click_rows:
            if row["valid"] and row["cost"]:
                click_cost.setdefault(row["decision_id"], float(row["cost"]))
        decisions = [_served(row, click_cost.get(row["id"])) for row in pending]
        conversions = [ConversionEvent(r["decision_id"], float(r["value"] or 0.0)) for r in conversion_rows]
        rewards = join_rewards(decisions, clicks, at.timestamp(), reward_window_s, conversions)
        if not rewards:
            return {"joined": 0, "pending": len(pending)} if job else 0
        status = await connection.execute(
            INSERT_REWARDS_SQL,
            [r.decision_id for r in rewards],
            [datetime.fromtimestamp(r.decided_at, UTC) for r in rewards],
            [r.clicked for r in rewards],
            [r.conversion_value for r in rewards],
            [r.revenue for r in rewards],
        )
    inserted = int(status.split()[-1])
    if job:
        return {
            "joined": inserted,
            "clicked": sum(r.clicked for r in rewards),
            "revenue": round(sum(r.revenue for r in rewards), 6),
        }
    return inserted


def _served(row: asyncpg.Record, valid_click_cost: float | None) -> ServedDecision:
    """The decision as served: pricing and bid from what was charged, else the campaign's today."""
    impression_cost = float(row["impression_cost"] or 0.0)
    if impression_cost > 0:
        pricing, bid = Pricing.CPM, impression_cost * 1000.0
    elif valid_click_cost:
        pricing, bid = Pricing.CPC, valid_click_cost
    elif row["pricing"] is not None:
        pricing, bid = Pricing(row["pricing"]), float(row["bid"])
    else:  # campaign deleted and nothing charged: nothing earned
        pricing, bid = Pricing.CPC, 0.0
    return ServedDecision(
        decision_id=row["id"],
        decided_at=row["ts"].timestamp(),
        creative_id=row["chosen_creative_id"],
        pricing=pricing,
        bid=bid,
        impressed=bool(row["impressed"]),
    )


# -- logged decisions ------------------------------------------------------------------------


async def _fetch_logged(
    connection: asyncpg.Connection,
    since: datetime,
    until: datetime,
    only_unlearned: bool,
    limit: int | None,
) -> tuple[list[LoggedDecision], list[Any]]:
    """(records that could be rebuilt, every reward's decision id read)."""
    rows = await connection.fetch(LOGGED_SQL, since, until, only_unlearned, limit)
    creative_ids = sorted({cid for row in rows for cid in row["candidate_ids"] or ()})
    candidates: dict[int, Candidate] = {}
    if creative_ids:
        for row in await connection.fetch(CANDIDATES_SQL, creative_ids):
            candidates[row["id"]] = Candidate(
                creative_id=row["id"],
                campaign_id=row["campaign_id"],
                advertiser_id=row["advertiser_id"],
                pricing=Pricing(row["pricing"]),
                bid=float(row["bid"]),
                category=row["category"],
                brand=row["brand"],
                product_ids=tuple(row["product_ids"] or ()),
                price=None if row["price"] is None else float(row["price"]),
            )
    records, skipped = [], 0
    for row in rows:
        record = _record(row, candidates)
        if record is None:
            skipped += 1
        else:
            records.append(record)
    if skipped:
        log.info(
            "%d logged decisions skipped (a candidate creative was deleted or the row is malformed)", skipped
        )
    return records, [row["id"] for row in rows]


def _record(row: asyncpg.Record, candidates: dict[int, Candidate]) -> LoggedDecision | None:
    ids = list(row["candidate_ids"] or ())
    if row["chosen_creative_id"] not in ids or any(cid not in candidates for cid in ids):
        return None
    try:
        return LoggedDecision(
            context=_context(row),
            candidates=tuple(candidates[cid] for cid in ids),
            click_probabilities=tuple(float(s) for s in row["scores"]),
            pmf=tuple(float(p) for p in row["pmf"]),
            chosen=ids.index(row["chosen_creative_id"]),
            clicked=bool(row["clicked"]),
            revenue=float(row["revenue"] or 0.0),
            conversion_value=float(row["conversion_value"] or 0.0),
            decision_id=row["id"],
            scorer_version=row["scorer_version"],
        )
    except (ValueError, TypeError):
        return None


async def load_logged_decisions(
    source: Any,
    since: datetime | None = None,
    until: datetime | None = None,
    only_unlearned: bool = False,
    limit: int | None = None,
) -> list[LoggedDecision]:
    """Rewarded decisions in [since, until) as `LoggedDecision` records, oldest first.

    The context comes from the decision's logged context JSON and its placement; candidates from
    `candidate_ids` joined to today's creatives and campaigns (a decision one of whose candidates
    was deleted is skipped); click probabilities are the logged scores; pmf and chosen index are
    the logged ones; clicked, revenue and conversion value come from its `rewards` row.
    """
    async with _connection(source) as connection:
        records, _ = await _fetch_logged(
            connection, since or EPOCH, until or FAR_FUTURE, only_unlearned, limit
        )
    return records


# -- the learner -----------------------------------------------------------------------------


def _policy_config(settings: Settings):
    from adserve.bandit.policy import PolicyConfig

    return PolicyConfig.from_dict(settings.bandit.policy_dict())


async def learn_once(
    source: Any,
    settings: Settings | None = None,
    sessionmaker: async_sessionmaker[AsyncSession] | None = None,
    *,
    seed: int = 0,
) -> Any:
    """One learning step of the one learner; returns the new `model_versions` row or None.

    Starts from the learner lineage (the newest registered version, whatever its status; a fresh
    `VWPolicy` configured from `[bandit]` before the first), feeds the un-learned rewarded
    decisions (at most `bandit.learn_batch_max`, oldest first; a decision is rewarded only once
    its reward window has closed, so clicks and non-clicks arrive together) to VW in time order,
    saves `<models_dir>/bandit/<version>/`, marks those rewards learned and registers the version.
    The first version becomes champion; later ones are promoted unless significantly worse than
    the champion (`adserve.bandit.learner.gate`), else kept as rejected with the reason. A
    rejected batch is not lost: the next step continues from the rejected version, and the
    champion keeps serving until a later version of the lineage passes the gate. Restarting the
    process resumes from the newest version on disk. Only one learner runs at a
    time (a Postgres advisory lock): a concurrent call returns None.
    """
    job = _is_job_context(source)
    if job:
        settings, sessionmaker = source.settings, source.sessionmaker
    if settings is None:
        raise ValueError("learn_once needs settings")
    async with _connection(source) as lock_connection:
        if not await lock_connection.fetchval("SELECT pg_try_advisory_lock($1)", LEARNER_LOCK_KEY):
            return {"skipped": "another learner is running"} if job else None
        try:
            row = await _learn_locked(source, settings, sessionmaker, lock_connection, seed)
        finally:
            await lock_connection.execute("SELECT pg_advisory_unlock($1)", LEARNER_LOCK_KEY)
    if not job:
        return row
    if row is None:
        return {"learned": 0}
    return {
        "version": row.version,
        "status": row.status,
        "learned": row.metrics.get("examples"),
        "examples_learned": row.metrics.get("examples_learned"),
    }


async def _learn_locked(
    source: Any,
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession] | None,
    connection: asyncpg.Connection,
    seed: int,
) -> ModelVersion | None:
    from adserve.bandit.learner import gate, learn_progressively
    from adserve.bandit.policy import VWPolicy

    async with _session(source, settings, sessionmaker) as session:
        registry = Registry(session)
        champion = await registry.champion("bandit")
        lineage = await registry.latest("bandit")
    records, reward_ids = await _fetch_logged(
        connection, EPOCH, FAR_FUTURE, True, settings.bandit.learn_batch_max
    )
    if not reward_ids:
        return None
    if lineage is not None and Path(lineage.path).is_dir():
        policy = await asyncio.to_thread(VWPolicy.load, lineage.path)
    else:
        policy = VWPolicy(_policy_config(settings))
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
        "skipped": len(reward_ids) - len(records),
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
    async with _session(source, settings, sessionmaker) as session:
        registry = Registry(session)
        await session.execute(
            text("UPDATE rewards SET learned = true WHERE decision_id = ANY(:ids)"), {"ids": reward_ids}
        )
        row = await registry.register("bandit", path.name, str(path), metrics)  # commits both
        if promote:
            row = await registry.promote("bandit", path.name, reason)
        else:
            row = await registry.reject("bandit", path.name, reason)
    return row


# -- off-policy evaluation -------------------------------------------------------------------


def _ev_greedy(record: LoggedDecision) -> np.ndarray:
    """No exploration over the logged scores: all mass on the highest bid × P(click)."""
    values = [
        expected_value(c, p) for c, p in zip(record.candidates, record.click_probabilities, strict=True)
    ]
    target = np.zeros(len(values))
    target[int(np.argmax(values))] = 1.0
    return target


async def _interest_reward_model(connection, records, interest_model_dir, history_length: int = 50):
    """The interest model's P(click) for every candidate, with the user's history cut at the
    decision time (point in time), as DR's reward model."""
    from dataclasses import replace

    from adserve.interest.scorer import InterestScorer
    from adserve.learning.datasets import load_sequences

    scorer = await asyncio.to_thread(InterestScorer, interest_model_dir)
    first = min(r.context.now for r in records)
    last = max(r.context.now for r in records)
    sequences = await load_sequences(
        connection, datetime.fromtimestamp(first, UTC) - timedelta(days=90), datetime.fromtimestamp(last, UTC)
    )
    times = {user: [e.ts for e in events] for user, events in sequences.items()}

    def predict_all() -> dict[Any, np.ndarray]:
        predictions = {}
        for record in records:
            context = record.context
            user = context.user_key
            if user in sequences:
                cut = bisect.bisect_left(times[user], context.now)
                context = replace(context, history=tuple(sequences[user][max(0, cut - history_length) : cut]))
            predictions[record.decision_id] = scorer.score(context, list(record.candidates))
        return predictions

    predictions = await asyncio.to_thread(predict_all)
    return lambda record: predictions[record.decision_id]


async def ope_from_logs(
    source: Any,
    since: datetime | None = None,
    until: datetime | None = None,
    challenger_dir: str | Path | None = None,
    interest_model_dir: str | Path | None = None,
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> OpeReport:
    """Off-policy value (CTR and revenue per decision; IPS, SNIPS, DR with bootstrap 95%
    intervals and ESS) of, on the rewarded decisions logged in [since, until):

    - `logging`: the policy that served (every weight is 1);
    - `uniform`: uniform random over each decision's candidates;
    - `greedy`: no exploration — the greedy action of the challenger (else of the bandit
      champion), or without any VW policy the highest bid × P(click) of the logged scores;
    - `champion`: the registered bandit champion, as it would serve (when there is one);
    - `challenger`: the policy saved in `challenger_dir`, as it would serve (when given).

    DR's reward model is the logged scores (the serving scorer's P(click): the interest model's
    when it served) or, with `interest_model_dir`, that interest model re-scoring every candidate
    with the user's history as of the decision. Raises NotFound without rewarded decisions.
    """
    from adserve.bandit.ope import (
        evaluate,
        greedy_target,
        logged_score_model,
        policy_target,
        standard_targets,
    )
    from adserve.bandit.policy import VWPolicy

    async with _connection(source) as connection:
        records, _ = await _fetch_logged(connection, since or EPOCH, until or FAR_FUTURE, False, None)
        if not records:
            raise NotFound(
                "no rewarded decisions in that window: run `adserve learn` (the reward join) first"
            )
        champion_path = await connection.fetchval(
            "SELECT path FROM model_versions WHERE kind = 'bandit' AND status = 'champion'"
        )
        reward_model = (
            await _interest_reward_model(connection, records, interest_model_dir)
            if interest_model_dir
            else logged_score_model
        )
    champion = (
        await asyncio.to_thread(VWPolicy.load, champion_path)
        if champion_path and Path(champion_path).is_dir()
        else None
    )
    challenger = await asyncio.to_thread(VWPolicy.load, challenger_dir) if challenger_dir else None
    targets = standard_targets()
    greedy_from = challenger or champion
    targets["greedy"] = greedy_target(greedy_from) if greedy_from is not None else _ev_greedy
    if champion is not None:
        targets["champion"] = policy_target(champion)
    if challenger is not None:
        targets["challenger"] = policy_target(challenger)
    try:
        return await asyncio.to_thread(
            evaluate, records, targets, reward_model, n_bootstrap=n_bootstrap, seed=seed
        )
    finally:
        for policy in (champion, challenger):
            if policy is not None:
                policy.close()

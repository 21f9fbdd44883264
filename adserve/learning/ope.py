"""Off-policy evaluation of bandit policies on the rewarded decisions logged in Postgres."""

from __future__ import annotations

import asyncio
import bisect
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from adserve.bandit.ope import (
    OpeReport,
    evaluate,
    greedy_target,
    logged_score_model,
    policy_target,
    standard_targets,
)
from adserve.bandit.policy import VWPolicy
from adserve.domain import expected_value
from adserve.errors import NotFound
from adserve.learning.datasets import load_sequences
from adserve.learning.decisions import EPOCH, FAR_FUTURE, fetch_logged

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable

    import asyncpg

    from adserve.bandit.records import LoggedDecision
    from adserve.db.engine import Database

__all__ = ["ope_from_logs"]


def _ev_greedy(record: LoggedDecision) -> np.ndarray:
    """No exploration over the logged scores: all mass on the highest bid × P(click)."""
    values = [
        expected_value(c, p) for c, p in zip(record.candidates, record.click_probabilities, strict=True)
    ]
    target = np.zeros(len(values))
    target[int(np.argmax(values))] = 1.0
    return target


async def _interest_reward_model(
    connection: asyncpg.Connection,
    records: list[LoggedDecision],
    interest_model_dir: str | Path,
    history_length: int = 50,
) -> Callable[[LoggedDecision], np.ndarray]:
    """The interest model's P(click) for every candidate, with the user's history cut at the
    decision time (point in time), as DR's reward model."""
    # imported here: torch takes seconds to import and only this option needs it
    from adserve.interest.scorer import InterestScorer

    scorer = await asyncio.to_thread(InterestScorer, interest_model_dir)
    first = min(r.context.now for r in records)
    last = max(r.context.now for r in records)
    sequences = await load_sequences(
        connection, datetime.fromtimestamp(first, UTC) - timedelta(days=90), datetime.fromtimestamp(last, UTC)
    )
    times = {user: [e.ts for e in events] for user, events in sequences.items()}

    def predict_all() -> dict[Hashable | None, np.ndarray]:
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
    database: Database,
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
    async with database.pool.acquire() as connection:
        batch = await fetch_logged(connection, since or EPOCH, until or FAR_FUTURE, False, None)
        records = batch.records
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

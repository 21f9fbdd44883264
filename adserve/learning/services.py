"""Import, train, evaluate and register models from Postgres: shared by the CLI, admin and jobs."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg

from adserve.db.engine import asyncpg_dsn
from adserve.db.rows import make_row
from adserve.learning.datasets import load_impressions, load_sequences, store_imported_events

if TYPE_CHECKING:
    from adserve.db.engine import Database
    from adserve.settings import Settings
    from adserve.signing.identity import UserKeys

__all__ = [
    "IMPORT_NAMESPACE",
    "TrainingData",
    "import_events",
    "load_training_data",
    "train_interest_version",
]

IMPORT_NAMESPACE = uuid.UUID("0b5c9a8e-58a4-4a7e-9f0c-7d1f2f3e6a11")


@dataclass(frozen=True, slots=True)
class TrainingData:
    sequences: dict[str, list]
    click_examples: list
    since: datetime
    until: datetime


async def import_events(database: Database, path: Path, user_keys: UserKeys) -> int:
    """Loads a historical behaviour file (CSV or Parquet) into user_events under pseudonymous keys.

    Imported history counts as consented: the shop exports it for personalisation. Event ids are
    derived from (user, item, time, type), so importing the same file twice stores it once.
    """
    # imported here: adserve.interest imports torch, which takes seconds
    from adserve.interest.data import read_behaviour_file

    def rows():
        for row in read_behaviour_file(path):
            event = row.event
            key = user_keys.consented(row.user_id)
            event_id = uuid.uuid5(IMPORT_NAMESPACE, f"{key}|{event.item_id}|{event.ts}|{event.event_type}")
            yield make_row(
                "user_events",
                id=event_id,
                user_id=key,
                event_type=str(event.event_type),
                ts=datetime.fromtimestamp(event.ts, UTC),
                item_id=event.item_id,
                category=event.category,
                price=event.price,
                query=event.query,
            )

    async with database.pool.acquire() as connection:
        stored = await store_imported_events(connection, rows())
        await connection.execute(
            "INSERT INTO users (id, consent) SELECT DISTINCT user_id, true FROM user_events "
            "ON CONFLICT (id) DO NOTHING"
        )
    return stored


async def load_training_data(
    url: str, days: float | None, *, outcome_window_s: float, until: datetime | None = None
) -> TrainingData:
    """Behaviour sequences and point-in-time click examples for a rolling window. Takes a URL:
    the training process (adserve.jobs.retrain) calls it with no other connection open.

    Click examples are the impressions whose outcome is known: decided at least
    `outcome_window_s` (the bandit's reward window) before `until`. A newer impression has had
    no time to draw its click, and labelling it "not clicked" would teach the click head, fit its
    calibration and judge the gate on clicks that had not happened yet; behaviour events are
    used up to `until`."""
    # imported here: adserve.interest imports torch, which takes seconds
    from adserve.interest.data import make_click_example

    if outcome_window_s < 0:
        raise ValueError(f"outcome_window_s must be >= 0, got {outcome_window_s}")
    until = until or datetime.now(UTC) + timedelta(seconds=1)
    since = until - timedelta(days=days) if days else datetime(1970, 1, 1, tzinfo=UTC)
    outcomes_known_until = max(since, until - timedelta(seconds=outcome_window_s))
    connection = await asyncpg.connect(**asyncpg_dsn(url))
    try:
        sequences = await load_sequences(connection, since, until)
        impressions = await load_impressions(connection, since, outcomes_known_until)
    finally:
        await connection.close()
    examples = [
        make_click_example(
            impression.decision_ts,
            sequences.get(impression.user_key, ()) if impression.user_key else (),
            impression.candidate,
            impression.context,
            impression.clicked,
        )
        for impression in impressions
    ]
    return TrainingData(sequences=sequences, click_examples=examples, since=since, until=until)


def train_interest_version(
    data: TrainingData,
    settings: Settings,
    *,
    seed: int = 0,
    max_epochs: int | None = None,
    warm_start: str | None = None,
    progress: bool = True,
) -> tuple[Path, dict[str, Any]]:
    """Trains on `data` and writes models/interest/<version>/; returns the folder and metrics."""
    # imported here: torch takes seconds to import
    from adserve.interest.training import TrainConfig, train_interest

    config = TrainConfig(seed=seed, progress=progress, **({"max_epochs": max_epochs} if max_epochs else {}))
    result = train_interest(data.sequences, data.click_examples, train_config=config, warm_start=warm_start)
    path = result.save(Path(settings.models_dir))
    return path, result.metrics

"""Training data from Postgres is point-in-time correct: a decision sees only earlier events, and
an impression is a click example only once its outcome is known."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from adserve.learning.services import load_training_data
from tests.integration.conftest import decisions_logged
from tests.integration.serving.catalog_builder import CatalogBuilder, wait_for_placement
from tests.integration.serving.test_decisions import decide
from tests.integration.serving.test_tracking import path_of


def event(user: str, item: str, ts: datetime) -> dict:
    return {
        "event_id": str(uuid.uuid4()),
        "user_id": user,
        "type": "product_view",
        "item_id": item,
        "category": "pit",
        "ts": ts.isoformat(),
    }


async def test_a_later_event_never_leaks_into_a_decisions_features(
    client, sessionmaker, database_url
) -> None:
    async with sessionmaker() as session:
        builder = CatalogBuilder(session)
        await builder.campaign("pit", category="pit")
        key = await builder.placement("pit")
    await wait_for_placement(client, key)
    user = f"pit-{uuid.uuid4().hex[:6]}"
    now = datetime.now(UTC)
    before = event(user, "before-item", now - timedelta(hours=1))
    after = event(user, "after-item", now + timedelta(minutes=3))  # logged later, dated after
    await client.post("/v1/events", json={"consent": True, "events": [before]})
    decision = await decide(client, key, user=user, consent=True)
    await client.get(path_of(decision["impression_url"]))
    await client.post("/v1/events", json={"consent": True, "events": [after]})
    await decisions_logged(client)  # the decision row is queued without waiting

    data = await load_training_data(
        database_url, days=1, outcome_window_s=300, until=now + timedelta(minutes=10)
    )
    mine = [e for e in data.click_examples if e.candidate.creative_id == decision["creative"]["id"]]
    assert len(mine) == 1
    items = [e.item_id for e in mine[0].context.history]
    assert items == ["before-item"]
    # both events are in the user's sequence for next-item training
    assert {"before-item", "after-item"} <= {e.item_id for seq in data.sequences.values() for e in seq}


async def test_an_impression_is_a_click_example_only_once_its_click_window_has_closed(
    client, sessionmaker, database_url
) -> None:
    async with sessionmaker() as session:
        builder = CatalogBuilder(session)
        await builder.campaign("window", category="window")
        key = await builder.placement("window")
    await wait_for_placement(client, key)
    user = f"window-{uuid.uuid4().hex[:6]}"
    now = datetime.now(UTC)
    await client.post("/v1/events", json={"consent": True, "events": [event(user, "seen-item", now)]})
    decision = await decide(client, key, user=user, consent=True)
    await client.get(path_of(decision["impression_url"]))
    await decisions_logged(client)  # the decision row is queued without waiting; its impression is not

    def examples_of(data) -> list:
        return [e for e in data.click_examples if e.candidate.creative_id == decision["creative"]["id"]]

    until = now + timedelta(minutes=10)
    closed = await load_training_data(database_url, days=1, outcome_window_s=5 * 60, until=until)
    still_open = await load_training_data(database_url, days=1, outcome_window_s=20 * 60, until=until)
    assert len(examples_of(closed)) == 1
    # ten minutes old with a twenty-minute window: its click may still come, so it is no example yet
    assert examples_of(still_open) == []
    # the shopper's behaviour counts for next-item training either way
    assert "seen-item" in {
        e.item_id for e in still_open.sequences.get(examples_of(closed)[0].context.user_key, [])
    }

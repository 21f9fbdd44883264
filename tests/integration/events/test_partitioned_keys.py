"""The log tables' keys hold `ts` (partitioning), yet a decision still has one impression and one
valid click: a second one at another time is not stored (impression) or stored invalid (click)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from tests.integration.events.rows import click_row, create_campaign, impression_row


async def test_a_second_impression_of_a_decision_at_another_time_is_not_stored(make_writer, db):
    campaign = await create_campaign(db)
    writer = await make_writer()
    decision = uuid.uuid4()
    first = impression_row(campaign, 0.25, decision_id=decision)
    later = impression_row(campaign, 0.25, decision_id=decision, ts=datetime.now(UTC) + timedelta(days=1))
    assert await writer.write("impressions", [first]) == "stored"
    assert await writer.write("impressions", [later]) == "stored"
    assert await writer.write("impressions", [first, later]) == "stored"  # replays
    rows = await db.fetch("SELECT ts, cost::float8 AS cost FROM impressions WHERE decision_id = $1", decision)
    assert [(row["ts"], row["cost"]) for row in rows] == [(first[1], pytest.approx(0.25))]
    spent = await db.fetchval("SELECT spend_total::float8 FROM campaigns WHERE id = $1", campaign)
    assert spent == pytest.approx(0.25)


async def test_a_second_valid_click_on_another_day_is_a_duplicate(make_writer, db):
    campaign = await create_campaign(db, pricing="cpc")
    writer = await make_writer()
    decision = uuid.uuid4()
    first = click_row(campaign, decision, 0.4)
    next_day = click_row(campaign, decision, 0.4, ts=datetime.now(UTC) + timedelta(days=1))
    assert await writer.write("clicks", [first]) == "stored"
    assert await writer.write("clicks", [next_day]) == "stored"
    assert await writer.write("clicks", [next_day, first]) == "stored"  # replays
    rows = await db.fetch(
        "SELECT id, valid, invalid_reason FROM clicks WHERE decision_id = $1 ORDER BY ts", decision
    )
    assert [(r["id"], r["valid"], r["invalid_reason"]) for r in rows] == [
        (first[0], True, None),
        (next_day[0], False, "duplicate"),
    ]


@pytest.mark.parametrize(("pricing", "click_cost"), [("cpc", 0.01), ("cpm", 0.0)])
async def test_concurrent_flushes_store_one_impression_and_one_valid_click_per_decision(
    make_writer, db, pricing: str, click_cost: float
):
    """Two writers (two nodes) each store an impression and a valid click of the same decisions at
    the same moment, at different times (so different keys): one of each per decision is kept,
    and each click charged once. A CPM campaign's clicks carry no price, and are still counted
    once: a duplicate valid click would inflate its CTR and the bandit's rewards."""
    campaign = await create_campaign(db, pricing=pricing)
    first, second = await make_writer(), await make_writer()
    decisions = [uuid.uuid4() for _ in range(100)]
    later = datetime.now(UTC) + timedelta(seconds=1)

    def impressions(ts: datetime | None = None) -> list[tuple]:
        return [impression_row(campaign, 0.0, decision_id=d, **({"ts": ts} if ts else {})) for d in decisions]

    def clicks(ts: datetime | None = None) -> list[tuple]:
        return [click_row(campaign, d, click_cost, **({"ts": ts} if ts else {})) for d in decisions]

    for _ in range(3):
        await asyncio.gather(
            first.write("impressions", impressions()),
            second.write("impressions", impressions(later)),
            first.write("clicks", clicks()),
            second.write("clicks", clicks(later)),
        )
    per_decision = await db.fetch(
        "SELECT d, (SELECT count(*) FROM impressions WHERE decision_id = d) AS impressions, "
        "(SELECT count(*) FROM clicks WHERE decision_id = d AND valid) AS valid_clicks "
        "FROM unnest($1::uuid[]) AS d",
        decisions,
    )
    assert {(r["impressions"], r["valid_clicks"]) for r in per_decision} == {(1, 1)}
    spent = await db.fetchval("SELECT spend_total::float8 FROM campaigns WHERE id = $1", campaign)
    assert spent == pytest.approx(click_cost * len(decisions))

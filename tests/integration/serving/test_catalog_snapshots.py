"""A catalogue refresh keeps the previous snapshot's candidate objects where they are equal, so
what scorers and policies keep per candidate tuple is found by identity across refreshes."""

from __future__ import annotations

import asyncpg
import pytest

from adserve.db.engine import asyncpg_dsn
from adserve.serving.catalog import load_catalog
from tests.integration.serving.catalog_builder import CatalogBuilder


@pytest.fixture
async def builder(sessionmaker):
    async with sessionmaker() as session:
        yield CatalogBuilder(session)


async def test_a_refresh_keeps_equal_candidates_and_their_tuple_and_replaces_changed_ones(
    builder, database_url
) -> None:
    shoes = await builder.campaign("shoes", creatives=2, category="shoes")
    await builder.campaign("tents", creatives=1, category="camping")
    key = await builder.placement("slot")
    connection = await asyncpg.connect(**asyncpg_dsn(database_url))
    try:
        first = await load_catalog(connection)
        placement = first.placements[key]
        served = first.candidates_for(placement)
        assert [c.creative_id for c in served] == [e.id for e in first.creatives_for(placement)]

        # spend moved, nothing a candidate is made of: the same objects, the same tuple
        await connection.execute("UPDATE campaigns SET spend_today = spend_today + 1 WHERE id = $1", shoes)
        second = await load_catalog(connection, previous=first)
        assert second.creatives_for(placement) is not first.creatives_for(placement)  # new campaign state
        spends = {e.campaign.id: e.campaign.spend_today for e in second.creatives_for(placement)}
        assert spends[shoes] == 1.0
        assert second.candidates_for(placement) is served

        # a bid changed: that campaign's candidates are new (equal to nothing before), the others kept
        await connection.execute("UPDATE campaigns SET bid = 2.5 WHERE id = $1", shoes)
        third = await load_catalog(connection, previous=second)
        changed = third.candidates_for(placement)
        assert changed is not served and changed != served
        for old, new in zip(served, changed, strict=True):
            assert (new is old) == (new.campaign_id != shoes)
            assert new.bid == (2.5 if new.campaign_id == shoes else old.bid)

        # without a previous snapshot, nothing is shared
        fresh = await load_catalog(connection)
        assert fresh.candidates_for(placement) == changed
        assert not any(a is b for a, b in zip(fresh.candidates_for(placement), changed, strict=True))
    finally:
        await connection.close()

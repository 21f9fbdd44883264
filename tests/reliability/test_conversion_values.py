"""Second paragraph: purchases up to 1e9 overflowed daily_stats.conversion_value (NUMERIC(18, 6),
below 10^12) and stopped the rollup. Totals are NUMERIC without a precision, and a purchase's
value is range-checked where it enters."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from adserve.jobs.tasks import rollup_daily_stats
from tests.reliability.conftest import make_served_campaign, serve

NOON = datetime(2025, 7, 1, 12, 0, tzinfo=UTC)
PURCHASES = 1_500
TOP_VALUE = 1e9


async def test_a_day_of_top_value_purchases_rolls_up(own_pool) -> None:
    ids = await make_served_campaign(own_pool)
    decision_id = await serve(own_pool, ids, NOON - timedelta(hours=2))
    await own_pool.execute(
        "INSERT INTO conversions (id, decision_id, ts, campaign_id, value) "
        "SELECT gen_random_uuid(), $1, $2, $3, $4 FROM generate_series(1, $5)",
        decision_id,
        NOON - timedelta(hours=1),
        ids["campaign_id"],
        TOP_VALUE,
        PURCHASES,
    )
    figures = await rollup_daily_stats(own_pool, days=1, now=NOON)
    assert "failed" not in figures
    row = await own_pool.fetchrow(
        "SELECT conversions, conversion_value FROM daily_stats WHERE campaign_id = $1", ids["campaign_id"]
    )
    assert row["conversions"] == PURCHASES
    assert row["conversion_value"] == PURCHASES * int(TOP_VALUE)  # exact, beyond 10^12


@pytest.mark.parametrize(("price", "status"), [(TOP_VALUE, 202), (TOP_VALUE + 1, 400), (-0.01, 400)])
async def test_purchase_values_are_range_checked(client, price, status) -> None:
    event = {
        "event_id": str(uuid.uuid4()),
        "user_id": "big-spender",
        "type": "purchase",
        "ts": datetime.now(UTC).isoformat(),
        "item_id": "yacht",
        "price": price,
    }
    response = await client.post("/v1/events", json={"consent": True, "events": [event]})
    assert response.status_code == status, response.text

"""Rollups into daily_stats by local day; reruns recompute instead of adding."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime, timedelta

from adserve.jobs.tasks import purge_user_events, rollup_daily_stats
from tests.integration.jobs.conftest import make_campaign

NOON = datetime(2025, 6, 15, 12, 0, tzinfo=UTC)


async def _placement(pool) -> int:
    return await pool.fetchval(
        "INSERT INTO placements (key, width, height) VALUES ($1, 300, 250) RETURNING id",
        f"slot-{uuid.uuid4().hex[:8]}",
    )


async def _creative(pool, advertiser_id: int, campaign_id: int) -> int:
    return await pool.fetchval(
        "INSERT INTO creatives (campaign_id, advertiser_id, width, height, title, image_url, landing_url) "
        "VALUES ($1, $2, 300, 250, 'ad', 'https://cdn.example.com/a.png', 'https://example.com') RETURNING id",
        campaign_id,
        advertiser_id,
    )


async def _serve(pool, ts, campaign_id, creative_id, placement_id, *, shown=True, cost=0.0) -> uuid.UUID:
    decision_id = uuid.uuid4()
    await pool.execute(
        "INSERT INTO decisions (id, ts, request_id, placement_id, context, candidate_ids, scores, pmf, "
        "chosen_creative_id, campaign_id, propensity, scorer_version, policy_version) "
        "VALUES ($1, $2, $3, $4, $5::jsonb, $6, '{0.1}', '{1.0}', $7, $8, 1.0, 'test', 'test')",
        decision_id,
        ts,
        uuid.uuid4(),
        placement_id,
        json.dumps({}),
        [creative_id],
        creative_id,
        campaign_id,
    )
    if shown:
        await pool.execute(
            "INSERT INTO impressions (decision_id, ts, creative_id, campaign_id, placement_id, cost) "
            "VALUES ($1, $2, $3, $4, $5, $6)",
            decision_id,
            ts + timedelta(seconds=1),
            creative_id,
            campaign_id,
            placement_id,
            cost,
        )
    return decision_id


async def _click(
    pool, decision_id, ts, campaign_id, creative_id, placement_id, *, valid, cost=0.0
) -> uuid.UUID:
    click_id = uuid.uuid4()
    await pool.execute(
        "INSERT INTO clicks (id, decision_id, ts, creative_id, campaign_id, placement_id, valid, "
        "invalid_reason, cost) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        click_id,
        decision_id,
        ts,
        creative_id,
        campaign_id,
        placement_id,
        valid,
        None if valid else "replay",
        cost if valid else 0.0,
    )
    return click_id


async def _stats(pool, campaign_id: int) -> list[dict]:
    rows = await pool.fetch(
        "SELECT day, decisions, impressions, clicks, invalid_clicks, conversions, conversion_value, spend "
        "FROM daily_stats WHERE campaign_id = $1 ORDER BY day",
        campaign_id,
    )
    return [dict(r) for r in rows]


async def test_rollup_counts_every_outcome_and_reruns_do_not_double_count(jobs_pool) -> None:
    advertiser_id, campaign_id = await make_campaign(jobs_pool, f"Rollup {uuid.uuid4().hex[:6]}")
    creative_id = await _creative(jobs_pool, advertiser_id, campaign_id)
    placement_id = await _placement(jobs_pool)
    ids = (campaign_id, creative_id, placement_id)
    first = await _serve(jobs_pool, NOON, *ids)
    second = await _serve(jobs_pool, NOON + timedelta(minutes=5), *ids)
    await _serve(jobs_pool, NOON + timedelta(minutes=6), *ids, shown=False)
    click = await _click(jobs_pool, first, NOON + timedelta(minutes=1), *ids, valid=True, cost=0.5)
    await _click(jobs_pool, second, NOON + timedelta(minutes=7), *ids, valid=False)
    await jobs_pool.execute(
        "INSERT INTO conversions (id, decision_id, click_id, ts, campaign_id, value) VALUES ($1, $2, $3, $4, $5, 40)",
        uuid.uuid4(),
        first,
        click,
        NOON + timedelta(hours=2),
        campaign_id,
    )
    # Yesterday's decision lands on its own day.
    await _serve(jobs_pool, NOON - timedelta(days=1), *ids)

    figures = await rollup_daily_stats(jobs_pool, days=2, now=NOON + timedelta(hours=3))
    assert figures["rows"] >= 2
    expected_today = {
        "day": date(2025, 6, 15),
        "decisions": 3,
        "impressions": 2,
        "clicks": 1,
        "invalid_clicks": 1,
        "conversions": 1,
        "conversion_value": 40.0,
        "spend": 0.5,
    }
    stats = await _stats(jobs_pool, campaign_id)
    assert [s["day"] for s in stats] == [date(2025, 6, 14), date(2025, 6, 15)]
    assert {
        k: (float(v) if k in ("spend", "conversion_value") else v) for k, v in stats[1].items()
    } == expected_today
    assert stats[0]["decisions"] == 1 and stats[0]["impressions"] == 1

    await rollup_daily_stats(jobs_pool, days=2, now=NOON + timedelta(hours=3))
    assert await _stats(jobs_pool, campaign_id) == stats

    # A late click arrives; the next run recomputes the day.
    await _click(jobs_pool, second, NOON + timedelta(hours=4), *ids, valid=True, cost=0.5)
    await rollup_daily_stats(jobs_pool, days=2, now=NOON + timedelta(hours=5))
    today = (await _stats(jobs_pool, campaign_id))[1]
    assert today["clicks"] == 2 and float(today["spend"]) == 1.0 and today["impressions"] == 2


async def test_rollup_uses_the_campaigns_local_day(jobs_pool) -> None:
    advertiser_id, campaign_id = await make_campaign(
        jobs_pool, f"LA {uuid.uuid4().hex[:6]}", "America/Los_Angeles"
    )
    creative_id = await _creative(jobs_pool, advertiser_id, campaign_id)
    placement_id = await _placement(jobs_pool)
    # 03:00 UTC on the 15th is the evening of the 14th in Los Angeles.
    await _serve(jobs_pool, datetime(2025, 6, 15, 3, 0, tzinfo=UTC), campaign_id, creative_id, placement_id)
    await rollup_daily_stats(jobs_pool, days=2, now=NOON)
    assert [s["day"] for s in await _stats(jobs_pool, campaign_id)] == [date(2025, 6, 14)]


async def test_retention_purge_deletes_only_events_older_than_the_window(jobs_pool) -> None:
    now = datetime(2025, 9, 1, tzinfo=UTC)
    user = f"u-{uuid.uuid4().hex[:8]}"
    ages = {"old": 91, "edge": 89, "new": 1}
    for label, days in ages.items():
        await jobs_pool.execute(
            "INSERT INTO user_events (id, user_id, event_type, ts, item_id) VALUES ($1, $2, 'product_view', $3, $4)",
            uuid.uuid4(),
            user,
            now - timedelta(days=days),
            label,
        )
    figures = await purge_user_events(jobs_pool, retention_days=90, now=now)
    assert figures["deleted"] >= 1
    left = await jobs_pool.fetch("SELECT item_id FROM user_events WHERE user_id = $1 ORDER BY item_id", user)
    assert [r["item_id"] for r in left] == ["edge", "new"]

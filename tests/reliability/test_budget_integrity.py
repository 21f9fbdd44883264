"""Issue 13, finding 1 and "Budget integrity": budgets hold under replayed, delayed and concurrent
tracking hits from two processes.

Finding 1: a CPC campaign with total and daily budget 1.00 and bid 0.50 served 40 decisions while
it had budget; firing every impression URL and then every click URL with a browser user agent
charged 20.00. Now billed spend stays within budget + max(1 % of it, one bid) (in fact within the
budget: charging is capped), every click beyond it is stored as delivered but not billed
(`unbilled`), and served decisions reserve their expected cost in Postgres so that every process
stops serving before the budget is committed.

"Two processes" are two app instances on the session database: separate pools, log writers,
catalogue snapshots and local reservations, sharing only Postgres, as two `adserve serve`
processes do (bench/overspend.py runs the real thing).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from adserve.app import create_app
from adserve.db.engine import asyncpg_dsn
from adserve.domain import Pricing
from adserve.jobs.tasks import rollup_daily_stats
from adserve.serving.catalog import CampaignState, CreativeEntry
from adserve.serving.eligibility import EligibilityRequest, eligible_creatives
from adserve.settings import ServingSettings
from adserve.signing.tokens import TokenKind, TrackingClaims, TrackingSigner
from tests.integration.conftest import bearer, decisions_logged
from tests.integration.serving.catalog_builder import CatalogBuilder, wait_for_placement
from tests.integration.serving.test_decisions import decide
from tests.integration.serving.test_tracking import BROWSER, path_of

BUDGET = 1.0
BID = 0.5
ALLOWED_OVERSPEND = max(0.01 * BUDGET, BID)  # the bound: 1 % of the budget or one bid
# A row's unbilled amount; read through JSON so that the same test runs, and fails on the
# amounts, against the schema before the column existed.
UNBILLED = "coalesce((to_jsonb(r)->>'unbilled')::numeric, 0)"


async def fetch(database_url: str, sql: str, *args):
    connection = await asyncpg.connect(**asyncpg_dsn(database_url))
    try:
        return await connection.fetch(sql, *args)
    finally:
        await connection.close()


async def ledger(database_url: str, campaign_id: int) -> dict[str, float]:
    """What the campaign was charged (its counter and its rows) and what was delivered unbilled."""
    rows = await fetch(
        database_url,
        f"""
        WITH delivered AS (
            SELECT cost, {UNBILLED} AS unbilled, false AS click FROM impressions r WHERE campaign_id = $1
            UNION ALL
            SELECT cost, {UNBILLED}, true FROM clicks r WHERE campaign_id = $1 AND valid
        )
        SELECT (SELECT spend_total FROM campaigns WHERE id = $1)::float8 AS spend_total,
               (SELECT spend_today FROM campaigns WHERE id = $1)::float8 AS spend_today,
               coalesce(sum(cost), 0)::float8 AS billed,
               coalesce(sum(unbilled), 0)::float8 AS unbilled,
               count(*) FILTER (WHERE unbilled > 0) AS unbilled_deliveries,
               count(*) FILTER (WHERE click) AS valid_clicks
        FROM delivered
        """,
        campaign_id,
    )
    return dict(rows[0])


async def make_campaign(client, sessionmaker, **fields) -> tuple[int, str, int]:
    """(campaign id, placement key, placement id): one creative, a placement no other test uses."""
    async with sessionmaker() as session:
        builder = CatalogBuilder(session)
        campaign_id = await builder.campaign("budget", **fields)
        key = await builder.placement("slot")
    await wait_for_placement(client, key)
    return campaign_id, key, builder.built.placements["slot"]


async def fire_impression(client, decision) -> int:
    return (await client.get(path_of(decision["impression_url"]))).status_code


async def fire_click(client, decision) -> int:
    response = await client.get(path_of(decision["click_url"]), headers=BROWSER, follow_redirects=False)
    return response.status_code


async def serve(client, key: str, n: int, user: str = "shopper") -> list[dict]:
    decisions = [await decide(client, key, user=f"{user}-{index}") for index in range(n)]
    return [decision for decision in decisions if decision["creative"] is not None]


@pytest.fixture(scope="module")
async def other(settings):
    """A second serving process on the same database."""
    async with AsyncTestClient(create_app(settings)) as second:
        yield second


# --------------------------------------------------------------------------------------------
# Finding 1


async def test_finding_1_forty_clicked_decisions_bill_at_most_the_budget(
    client, sessionmaker, database_url
) -> None:
    campaign_id, key, _ = await make_campaign(
        client, sessionmaker, bid=BID, total_budget=BUDGET, daily_budget=BUDGET
    )
    served = await serve(client, key, 40)
    assert len(served) == 40  # all served while it still had budget, as in the finding

    assert {await fire_impression(client, decision) for decision in served} == {200}
    assert {await fire_click(client, decision) for decision in served} == {302}

    charged = await ledger(database_url, campaign_id)
    assert charged["spend_total"] <= BUDGET + ALLOWED_OVERSPEND, charged  # was 20.00
    assert charged["spend_total"] <= BUDGET  # in fact capped at the budget
    assert charged["billed"] == pytest.approx(charged["spend_total"])
    assert charged["spend_today"] == pytest.approx(charged["spend_total"])
    assert charged["valid_clicks"] == 40  # every click is delivered and counted …
    assert charged["billed"] + charged["unbilled"] == pytest.approx(40 * BID)  # … billed or not
    assert charged["unbilled_deliveries"] == 40 - round(charged["billed"] / BID)


# --------------------------------------------------------------------------------------------
# Replayed and delayed tracking hits, two processes


async def test_replayed_click_and_impression_urls_are_billed_once(
    client, other, sessionmaker, database_url
) -> None:
    campaign_id, key, _ = await make_campaign(
        client, sessionmaker, bid=BID, total_budget=BUDGET, daily_budget=BUDGET
    )
    first, second, third = await serve(client, key, 3)
    for decision in (first, second, third):
        assert await fire_impression(client, decision) == 200
        assert await fire_impression(other, decision) == 200  # the same pixel, again, elsewhere
    # The same click URL fired twice at once on two processes, and once more later.
    assert await asyncio.gather(fire_click(client, first), fire_click(other, first)) == [302, 302]
    assert await fire_click(client, first) == 302
    rows = await fetch(
        database_url,
        f"SELECT valid, invalid_reason, cost::float8, {UNBILLED}::float8 FROM clicks r "
        "WHERE decision_id = $1 ORDER BY valid DESC",
        uuid.UUID(first["decision_id"]),
    )
    assert [tuple(row) for row in rows] == [
        (True, None, BID, 0.0),
        (False, "duplicate", 0.0, 0.0),
        (False, "duplicate", 0.0, 0.0),
    ]
    # The second click spends the budget; replays of the first are not deliveries at all, and the
    # third decision's click is delivered but cannot be billed.
    assert await fire_click(other, second) == 302
    assert await fire_click(other, first) == 302
    assert await fire_click(client, third) == 302
    assert await fire_click(other, third) == 302
    charged = await ledger(database_url, campaign_id)
    assert charged["spend_total"] == pytest.approx(BUDGET)  # 1.50 before: the third click billed
    assert (charged["valid_clicks"], charged["unbilled"], charged["unbilled_deliveries"]) == (3, BID, 1)
    impressions = await fetch(
        database_url, "SELECT count(*) AS n FROM impressions WHERE campaign_id = $1", campaign_id
    )
    assert impressions[0]["n"] == 3


async def test_delayed_tokens_fired_after_others_spent_the_budget_are_not_billed(
    client, other, sessionmaker, settings, database_url
) -> None:
    campaign_id, key, placement_id = await make_campaign(
        client, sessionmaker, bid=BID, total_budget=BUDGET, daily_budget=BUDGET
    )
    delayed = await serve(client, key, 6, user="slow")  # URLs held back by their browsers
    await wait_for_placement(other, key)
    quick = await serve(other, key, 2, user="quick")
    assert len(delayed) == 6 and len(quick) == 2
    for decision in quick:  # the other process's traffic spends the whole budget first
        assert await fire_impression(other, decision) == 200
        assert await fire_click(other, decision) == 302
    assert (await ledger(database_url, campaign_id))["spend_total"] == pytest.approx(BUDGET)

    for decision in delayed:
        assert await fire_impression(client, decision) == 200
        assert await fire_click(client, decision) == 302
    charged = await ledger(database_url, campaign_id)
    assert charged["spend_total"] == pytest.approx(BUDGET)  # 4.00 before
    assert (charged["valid_clicks"], charged["unbilled_deliveries"]) == (8, 6)
    assert charged["unbilled"] == pytest.approx(6 * BID)

    # A URL fired after an hour (its token past serving.token_ttl_s) is not delivered at all.
    signer = TrackingSigner(settings.secret_key, settings.serving.token_ttl_s)
    stale = int(time.time()) - settings.serving.token_ttl_s - 5
    claims = {
        "decision_id": uuid.uuid4(),
        "creative_id": delayed[0]["creative"]["id"],
        "campaign_id": campaign_id,
        "placement_id": placement_id,
        "user_key": None,
        "issued_at": stale,
        "pricing": Pricing.CPC,
        "cost_micros": 500_000,
    }
    impression = signer.sign(TrackingClaims(kind=TokenKind.IMPRESSION, **claims))
    click = signer.sign(TrackingClaims(kind=TokenKind.CLICK, **claims))
    assert (await client.get(f"/i/{impression}")).status_code == 400
    assert (await client.get(f"/c/{click}", headers=BROWSER, follow_redirects=False)).status_code == 302
    rows = await fetch(
        database_url,
        f"SELECT valid, invalid_reason, cost::float8, {UNBILLED}::float8 FROM clicks r WHERE decision_id = $1",
        claims["decision_id"],
    )
    assert [tuple(row) for row in rows] == [(False, "expired", 0.0, 0.0)]
    assert await ledger(database_url, campaign_id) == charged


async def test_two_processes_clicking_concurrently_never_bill_past_the_budget(
    client, other, sessionmaker, database_url
) -> None:
    budget = 2.0
    campaign_id, key, _ = await make_campaign(
        client, sessionmaker, bid=BID, total_budget=budget, daily_budget=budget
    )
    await wait_for_placement(other, key)
    served = await serve(client, key, 20, user="a") + await serve(other, key, 20, user="b")
    assert len(served) == 40
    processes = (client, other)
    # Every token is fired at the other process than the one that served it, all at once.
    await asyncio.gather(
        *(fire_impression(processes[index % 2], decision) for index, decision in enumerate(served))
    )
    await asyncio.gather(
        *(fire_click(processes[(index + 1) % 2], decision) for index, decision in enumerate(served))
    )
    charged = await ledger(database_url, campaign_id)
    assert charged["spend_total"] <= budget  # 20.00 before
    assert charged["spend_total"] == pytest.approx(budget)
    assert charged["billed"] == pytest.approx(charged["spend_total"])
    assert charged["valid_clicks"] == 40
    assert charged["unbilled"] == pytest.approx(40 * BID - budget)


# --------------------------------------------------------------------------------------------
# Reservations


def _snapshot_reserved(process, campaign_id: int) -> float:
    """The reservations a process's catalogue snapshot holds for the campaign."""
    for entry in process.app.state.catalog.catalog.creatives.values():
        if entry.campaign.id == campaign_id:
            return entry.campaign.reserved
    return 0.0


async def _until(condition, deadline_s: float = 10.0) -> None:
    stop = time.monotonic() + deadline_s
    while not await condition():
        assert time.monotonic() < stop, "condition not reached"
        await asyncio.sleep(0.05)  # polling interval of a condition wait


async def test_served_decisions_reserve_budget_for_every_process_until_their_tokens_expire(
    client, other, sessionmaker, settings, database_url
) -> None:
    # CPM at 100 per mille: each decision may cost 0.10, so a 1.00 budget has room for 10.
    campaign_id, key, _ = await make_campaign(
        client, sessionmaker, pricing="cpm", bid=100.0, total_budget=BUDGET
    )
    await wait_for_placement(other, key)

    async def in_postgres() -> tuple[float, float, int]:
        """(reserved in buckets, reserved by decision rows, decisions served)"""
        await decisions_logged(client, other)
        rows = await fetch(
            database_url,
            "SELECT (SELECT coalesce(sum(amount), 0) FROM budget_reservations WHERE campaign_id = $1)::float8,"
            " coalesce(sum(reserved), 0)::float8, count(*) FROM decisions WHERE campaign_id = $1",
            campaign_id,
        )
        return tuple(rows[0])

    def caught_up(process):
        async def check() -> bool:
            return _snapshot_reserved(process, campaign_id) >= (await in_postgres())[0] - 1e-9

        return check

    assert len(await serve(other, key, 5, user="b")) == 5
    buckets, rows, served = await in_postgres()
    assert rows == pytest.approx(0.1 * served) and buckets == pytest.approx(rows)  # probes included

    await _until(caught_up(client))  # process A's next snapshot holds B's reservations
    await serve(client, key, 10, user="a")
    assert (await in_postgres())[2] <= 10  # never more than the budget's worth in flight
    await _until(caught_up(other))
    assert await serve(other, key, 3, user="b2") == []
    assert await serve(client, key, 3, user="a2") == []
    committed = await in_postgres()
    assert committed[0] == pytest.approx(0.1 * committed[2]) and committed[0] <= BUDGET + 1e-9

    # A delivered impression takes its decision's reservation back out, and is billed.
    first = (
        await fetch(database_url, "SELECT id FROM decisions WHERE campaign_id = $1 LIMIT 1", campaign_id)
    )[0][0]
    signer = TrackingSigner(settings.secret_key, settings.serving.token_ttl_s)
    row = (await fetch(database_url, "SELECT * FROM decisions WHERE id = $1", first))[0]
    token = signer.sign(
        TrackingClaims(
            TokenKind.IMPRESSION,
            first,
            row["chosen_creative_id"],
            campaign_id,
            row["placement_id"],
            row["user_id"],
            int(row["ts"].timestamp()),
            Pricing.CPM,
            100_000,
        )
    )
    assert (await client.get(f"/i/{token}")).status_code == 200
    assert (await in_postgres())[0] == pytest.approx(committed[0] - 0.1)
    assert (await ledger(database_url, campaign_id))["spend_total"] == pytest.approx(0.1)

    # Once their tokens have expired the reservations lapse, and serving resumes.
    await fetch(
        database_url,
        "UPDATE budget_reservations SET served_minute = served_minute - make_interval(secs => $2 + 120) "
        "WHERE campaign_id = $1",
        campaign_id,
        float(settings.serving.token_ttl_s),
    )

    async def serves_again() -> bool:
        return bool(await serve(client, key, 1, user="after"))

    await _until(serves_again)


def test_token_lifetime_default_bounds_reservations(settings) -> None:
    assert ServingSettings().token_ttl_s == 3600 == settings.serving.token_ttl_s


async def test_expired_impression_token_is_refused_and_not_stored(
    client, sessionmaker, settings, database_url
) -> None:
    campaign_id, key, placement_id = await make_campaign(
        client, sessionmaker, pricing="cpm", bid=4.0, total_budget=BUDGET
    )
    (decision,) = await serve(client, key, 1)
    signer = TrackingSigner(settings.secret_key, settings.serving.token_ttl_s)
    claims = TrackingClaims(
        TokenKind.IMPRESSION,
        uuid.UUID(decision["decision_id"]),
        decision["creative"]["id"],
        campaign_id,
        placement_id,
        None,
        int(time.time()) - settings.serving.token_ttl_s - 5,
        Pricing.CPM,
        4_000,
    )
    response = await client.get(f"/i/{signer.sign(claims)}")
    assert response.status_code == 400 and "expired" in response.text
    rows = await fetch(
        database_url, "SELECT count(*) AS n FROM impressions WHERE campaign_id = $1", campaign_id
    )
    assert rows[0]["n"] == 0


# --------------------------------------------------------------------------------------------
# Daily budgets, CPM, and the reports


async def test_daily_budget_and_cpm_caps_and_reports_show_billed_and_unbilled(
    client, sessionmaker, settings, database_url, tenants
) -> None:
    # CPC with only a daily budget: five clicks at 0.50 against 1.00 a day.
    cpc_id, cpc_key, _ = await make_campaign(client, sessionmaker, bid=BID, daily_budget=BUDGET)
    for decision in await serve(client, cpc_key, 5):
        await fire_impression(client, decision)
        await fire_click(client, decision)
    cpc = await ledger(database_url, cpc_id)
    assert (cpc["spend_total"], cpc["spend_today"], cpc["unbilled"]) == pytest.approx((1.0, 1.0, 1.5))

    # CPM at 100 per mille against 0.25: impressions fired for decisions never reserved (tokens
    # signed directly, as a replayed log might) are still billed only up to the budget.
    cpm_id, _, placement_id = await make_campaign(
        client, sessionmaker, pricing="cpm", bid=100.0, total_budget=0.25
    )
    signer = TrackingSigner(settings.secret_key, settings.serving.token_ttl_s)
    creative_id = (await fetch(database_url, "SELECT id FROM creatives WHERE campaign_id = $1", cpm_id))[0][0]
    for _ in range(5):
        token = signer.sign(
            TrackingClaims(
                TokenKind.IMPRESSION,
                uuid.uuid4(),
                creative_id,
                cpm_id,
                placement_id,
                None,
                int(time.time()),
                Pricing.CPM,
                100_000,
            )
        )
        assert (await client.get(f"/i/{token}")).status_code == 200
    cpm = await ledger(database_url, cpm_id)
    assert (cpm["spend_total"], cpm["billed"], cpm["unbilled"], cpm["unbilled_deliveries"]) == pytest.approx(
        (0.2, 0.2, 0.3, 3)
    )

    pool = await asyncpg.create_pool(**asyncpg_dsn(database_url), min_size=1, max_size=1)
    try:
        await rollup_daily_stats(pool, days=1)
    finally:
        await pool.close()
    response = await client.get(
        "/admin/v1/reports?group_by=campaign&limit=500", headers=bearer(tenants.admin_key)
    )
    assert response.status_code == 200, response.text
    rows = {row["campaign_id"]: row for row in response.json()["items"]}
    assert (rows[cpc_id]["spend"], rows[cpc_id]["unbilled"]) == pytest.approx((1.0, 1.5))
    assert (rows[cpm_id]["spend"], rows[cpm_id]["unbilled"]) == pytest.approx((0.2, 0.3))
    advertiser = (await fetch(database_url, "SELECT advertiser_id FROM campaigns WHERE id = $1", cpm_id))[0][
        0
    ]
    daily = await client.get(
        f"/admin/v1/analytics/daily?days=1&advertiser_id={advertiser}", headers=bearer(tenants.admin_key)
    )
    assert daily.status_code == 200, daily.text
    (today,) = daily.json()["items"]
    assert (today["spend"], today["unbilled"]) == pytest.approx((0.2, 0.3))


# --------------------------------------------------------------------------------------------
# The serving side, without a database

NOW = datetime(2026, 6, 1, 18, 0, tzinfo=UTC)


def _campaign(**overrides) -> CampaignState:
    from adserve.serving.catalog import Targeting

    fields = {
        "id": 1,
        "advertiser_id": 1,
        "pricing": Pricing.CPC,
        "bid": BID,
        "total_budget": BUDGET,
        "daily_budget": None,
        "start_at": None,
        "end_at": None,
        "timezone": ZoneInfo("UTC"),
        "targeting": Targeting(),
        "frequency_cap": None,
        "frequency_window_s": None,
        "spend_total": 0.0,
        "spend_today": 0.0,
        "spend_day": NOW.date(),
        **overrides,
    }
    return CampaignState(**fields)


def _verdict(state: CampaignState, reserved: dict[int, float] | None = None) -> str | None:
    entry = CreativeEntry(1, state, 300, 250, "t", "https://i", "https://l", None)  # type: ignore[arg-type]
    result = eligible_creatives([entry], EligibilityRequest(now=NOW, reserved=reserved or {}))
    return next(iter(result.removed), None)


def test_eligibility_counts_reservations_as_committed_spend() -> None:
    assert _verdict(_campaign(reserved=0.5)) is None  # 0.5 + one more click at 0.5 fits 1.0
    assert _verdict(_campaign(reserved=0.51)) == "total_budget"
    assert _verdict(_campaign(reserved=0.3), {1: 0.21}) == "total_budget"  # this process's own
    assert _verdict(_campaign(total_budget=None, daily_budget=1.0, reserved=0.6)) == "daily_budget"
    # pacing (at 18:00 up to 19/24 of the day's budget) follows billed spend only
    assert _verdict(_campaign(total_budget=None, daily_budget=10.0, reserved=8.0)) is None
    assert _verdict(_campaign(total_budget=None, daily_budget=10.0, spend_today=8.0)) == "pacing"


def test_expected_cost_and_the_local_ledger() -> None:
    from adserve.serving.budget import SNAPSHOT_MARGIN_S, LocalReservations, expected_cost

    assert expected_cost(_campaign(), 0.02) == pytest.approx(0.01)
    assert expected_cost(_campaign(), 7.0) == BID  # a score is clamped to a probability
    assert expected_cost(_campaign(pricing=Pricing.CPM, bid=4.0), 0.02) == pytest.approx(0.004)
    assert expected_cost(_campaign(total_budget=None), 0.5) == 0.0  # nothing to hold back

    clock = [100.0]
    ledger_ = LocalReservations(clock=lambda: clock[0])
    ledger_.add(1, 0.25)
    clock[0] = 105.0
    ledger_.add(1, 0.5)
    ledger_.add(2, 0.0)  # nothing reserved, nothing kept
    assert dict(ledger_.since(100.5)) == {1: 0.75}  # within the margin: kept
    assert dict(ledger_.since(100.0 + SNAPSHOT_MARGIN_S + 0.5)) == {1: 0.5}  # past it: in the snapshot
    assert dict(ledger_.since(200.0)) == {}


async def test_reservations_lapse_with_their_tokens_and_the_job_deletes_them(own_pool) -> None:
    """A bucket counts while a token issued within its minute may still be valid, then lapses;
    the budget_reset job deletes lapsed buckets."""
    from adserve.jobs.tasks import reset_daily_budgets
    from adserve.serving.catalog import load_catalog
    from tests.reliability.conftest import make_served_campaign

    ttl = ServingSettings().token_ttl_s
    ids = await make_served_campaign(own_pool)
    await own_pool.execute("UPDATE campaigns SET total_budget = 10 WHERE id = $1", ids["campaign_id"])
    now = (await own_pool.fetchval("SELECT now()")).replace(second=0, microsecond=0)
    for age_s, amount in ((0, 0.25), (ttl - 30, 0.5), (ttl + 180, 4.0)):
        await own_pool.execute(
            "INSERT INTO budget_reservations (campaign_id, served_minute, amount) VALUES ($1, $2, $3)",
            ids["campaign_id"],
            now - timedelta(seconds=age_s),
            amount,
        )
    async with own_pool.acquire() as connection:
        catalog = await load_catalog(connection, ttl)
    assert catalog.creatives[ids["creative_id"]].campaign.reserved == pytest.approx(0.75)

    figures = await reset_daily_budgets(own_pool, reservation_ttl_s=ttl)
    assert figures["reservations_deleted"] == 1
    left = await own_pool.fetch(
        "SELECT amount::float8 FROM budget_reservations WHERE campaign_id = $1 ORDER BY amount",
        ids["campaign_id"],
    )
    assert [row[0] for row in left] == [0.25, 0.5]

"""Behaviour analytics on real Postgres: interest profiles (events and model), trending, CTR scoping."""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from adserve.db.tables import UserEvent
from tests.integration.conftest import _make_key, bearer, decisions_logged
from tests.integration.serving.catalog_builder import CatalogBuilder, wait_for_placement
from tests.integration.serving.test_decisions import decide
from tests.integration.serving.test_tracking import BROWSER, path_of

API = "/admin/v1/analytics"
DEVICES = {"a": "mobile", "b": "tablet"}


def event(user: str, kind: str, category: str | None, item: str | None, ts: datetime) -> dict:
    return {
        "event_id": str(uuid.uuid4()),
        "user_id": user,
        "type": kind,
        "item_id": item,
        "category": category,
        "ts": ts.isoformat(),
    }


async def post_events(client, events: list[dict]) -> None:
    response = await client.post("/v1/events", json={"consent": True, "events": events})
    assert response.status_code in (200, 201, 202), response.text
    assert response.json()["stored"] == len(events)


async def user_key_of(sessionmaker, event_id: str) -> str:
    async with sessionmaker() as session:
        return await session.scalar(select(UserEvent.user_id).where(UserEvent.id == uuid.UUID(event_id)))


# ---- interest profile ----


async def test_interest_profile_from_events_is_recency_weighted(client, tenants, sessionmaker) -> None:
    now = datetime.now(UTC)
    tag = secrets.token_hex(3)
    raw = f"profile-{tag}"
    recent, old = f"recent-{tag}", f"old-{tag}"
    events = [event(raw, "product_view", recent, f"r{i}-{tag}", now - timedelta(minutes=i)) for i in range(3)]
    # The same number of views, but 30 days ago: a weight of 2^-30/7 each.
    events += [
        event(raw, "product_view", old, f"o{i}-{tag}", now - timedelta(days=30, minutes=i)) for i in range(3)
    ]
    events.append(event(raw, "search", None, None, now))
    await post_events(client, events)
    user_key = await user_key_of(sessionmaker, events[0]["event_id"])
    assert user_key and raw not in user_key

    response = await client.get(f"{API}/users/{user_key}/interests", headers=bearer(tenants.admin_key))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["source"] == "events" and body["model_version"] is None
    assert body["events"] == len(events)
    weights = {row["category"]: row["weight"] for row in body["categories"]}
    assert list(weights) == [recent, old]
    assert weights[recent] > 0.9 and sum(weights.values()) == pytest.approx(1.0, abs=1e-5)

    top1 = await client.get(f"{API}/users/{user_key}/interests?top=1", headers=bearer(tenants.admin_key))
    assert [row["category"] for row in top1.json()["categories"]] == [recent]


async def test_interest_profile_access_and_input(client, tenants) -> None:
    path = f"{API}/users/{'a' * 32}/interests"
    assert (await client.get(path)).status_code == 401
    for key in (tenants.a.manager_key, tenants.a.viewer_key, tenants.site_key):
        assert (await client.get(path, headers=bearer(key))).status_code == 403
    admin = bearer(tenants.admin_key)
    assert (await client.get(path, headers=admin)).status_code == 404  # no events for that key
    for bad in ("short", "UPPERCASE0123456789", "x" * 65, "abc%27%3B--drop0000"):
        response = await client.get(f"{API}/users/{bad}/interests", headers=admin)
        assert response.status_code in (400, 404), (bad, response.status_code)
    for query in ("top=0", "top=51", "top=x", "source=oracle"):
        response = await client.get(f"{path}?{query}", headers=admin)
        assert response.status_code == 400, (query, response.text)


async def test_interest_profile_from_the_model(
    client, app, tenants, sessionmaker, tmp_path, monkeypatch
) -> None:
    from adserve.interest.network import InterestConfig
    from adserve.interest.scorer import InterestScorerHolder
    from adserve.interest.synthetic import generate_behaviour
    from adserve.interest.training import TrainConfig, train_interest

    admin = bearer(tenants.admin_key)
    sequences, _ = generate_behaviour(n_users=60, n_items=30, n_categories=4, mean_length=10, seed=3)
    tiny = InterestConfig(
        n_items=2, item_buckets=256, category_buckets=32, creative_buckets=64, brand_buckets=16,
        context_buckets=64, max_len=16, hidden=16, n_layers=1, n_heads=2, dropout=0.1, click_mlp=(8,),
    )  # fmt: skip
    fast = TrainConfig(max_epochs=2, patience=1, click_max_epochs=1, click_patience=1, progress=False)
    result = train_interest(sequences, (), model_config=tiny, train_config=fast)
    holder = InterestScorerHolder(result.save(tmp_path, version="analytics-v1"))

    history = next(iter(sequences.values()))[-10:]
    raw = f"model-profile-{secrets.token_hex(3)}"
    now = datetime.now(UTC)
    events = [
        event(raw, str(e.event_type), e.category, e.item_id, now - timedelta(minutes=len(history) - i))
        for i, e in enumerate(history)
    ]
    await post_events(client, events)
    user_key = await user_key_of(sessionmaker, events[0]["event_id"])
    path = f"{API}/users/{user_key}/interests"

    monkeypatch.setattr(app.state.models, "interest", None)
    assert (await client.get(f"{path}?source=model", headers=admin)).status_code == 409
    assert (await client.get(path, headers=admin)).json()["source"] == "events"

    monkeypatch.setattr(app.state.models, "interest", holder)
    response = await client.get(path, headers=admin)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["source"] == "model" and body["model_version"] == "analytics-v1"
    assert body["categories"] and all(row["category"].startswith("cat-") for row in body["categories"])
    assert sum(row["weight"] for row in body["categories"]) == pytest.approx(1.0, abs=1e-4)
    forced = await client.get(f"{path}?source=events", headers=admin)
    assert forced.json()["source"] == "events"


# ---- trending ----


async def test_trending_counts_by_day_with_change(client, tenants) -> None:
    now = datetime.now(UTC)
    today = datetime(now.year, now.month, now.day, tzinfo=UTC)
    tag = secrets.token_hex(3)
    rising, item = f"rising-{tag}", f"sku-{tag}"
    events = [event(f"t1-{tag}", "product_view", rising, item, today - timedelta(hours=12))]
    events += [
        event(f"t{i}-{tag}", "product_view", rising, item, today + timedelta(seconds=i)) for i in range(3)
    ]
    if today + timedelta(seconds=3) > now:  # just after midnight: keep every event in the past
        events = [{**e, "ts": min(datetime.fromisoformat(e["ts"]), now).isoformat()} for e in events]
    await post_events(client, events)
    headers = bearer(tenants.a.viewer_key)  # any staff key reads trends (no advertiser data in them)

    response = await client.get(f"{API}/trending?kind=category&days=2&limit=500", headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["date_to"] == today.date().isoformat() and body["kind"] == "category"
    row = next(r for r in body["items"] if r["key"] == rising)
    assert row["total"] == 4
    assert [(d["count"], d["change"]) for d in row["days"]] == [(1, 1), (3, 2)]
    assert row["days"][1]["change_pct"] == pytest.approx(2.0) and row["last_day_change"] == 2

    items = (await client.get(f"{API}/trending?kind=item&days=1&limit=500", headers=headers)).json()
    assert next(r for r in items["items"] if r["key"] == item)["total"] == 3

    page = (await client.get(f"{API}/trending?kind=category&days=2&limit=1&offset=0", headers=headers)).json()
    assert len(page["items"]) == 1 and page["total"] >= 1 and page["limit"] == 1


@pytest.mark.parametrize(
    "query", ["days=0", "days=91", "days=abc", "kind=brand", "limit=0", "limit=501", "offset=-1"]
)
async def test_trending_rejects_bad_params(client, tenants, query) -> None:
    response = await client.get(f"{API}/trending?{query}", headers=bearer(tenants.admin_key))
    assert response.status_code == 400, response.text


async def test_trending_needs_a_staff_key(client, tenants) -> None:
    assert (await client.get(f"{API}/trending")).status_code == 401
    assert (await client.get(f"{API}/trending", headers=bearer(tenants.site_key))).status_code == 403


# ---- CTR ----


@pytest.fixture
async def traffic(client, sessionmaker):
    """Two advertisers, each with its own placement, served, impressed and (some) clicked with a
    request context of its own."""
    tag = secrets.token_hex(3)
    sides = {}
    async with sessionmaker() as session:
        for side in ("a", "b"):
            builder = CatalogBuilder(session)
            await builder.campaign(f"ctr-{side}", bid=0.5, total_budget=100.0)
            key = await builder.placement(f"ctr-{side}")
            manager = await _make_key(session, "manager", builder.built.advertiser_id)
            sides[side] = {"builder": builder.built, "placement": key, "manager": manager}
    plan = {"a": (4, 1), "b": (2, 2)}  # impressions, valid clicks
    for side, (impressions, clicks) in plan.items():
        await wait_for_placement(client, sides[side]["placement"])
        for n in range(impressions):
            context = {
                "device": DEVICES[side],
                "page_category": f"page-{side}-{tag}",
                "segments": [f"seg-{side}-{tag}", f"shared-{tag}"],
            }
            decision = await decide(
                client, sides[side]["placement"], user=f"ctr-{side}-{n}-{tag}", consent=True, context=context
            )
            assert decision["creative"], decision
            assert (await client.get(path_of(decision["impression_url"]))).status_code == 200
            if n < clicks:
                click = await client.get(
                    path_of(decision["click_url"]), headers=BROWSER, follow_redirects=False
                )
                assert click.status_code == 302
    await decisions_logged(client)  # the CTR keys come from the decision rows, which are queued
    return tag, sides


async def test_ctr_by_each_key_for_an_advertiser(client, tenants, traffic) -> None:
    tag, sides = traffic
    advertiser = sides["a"]["builder"].advertiser_id
    admin = bearer(tenants.admin_key)

    async def rows(by: str) -> dict[str, dict]:
        response = await client.get(f"{API}/ctr?by={by}&days=1&advertiser_id={advertiser}", headers=admin)
        assert response.status_code == 200, response.text
        return {row["key"]: row for row in response.json()["items"]}

    assert (await rows("device")) == {
        "mobile": {
            "key": "mobile",
            "impressions": 4,
            "clicks": 1,
            "ctr": 0.25,
        }
    }
    assert (await rows("page_category"))[f"page-a-{tag}"]["impressions"] == 4
    placement = await rows("placement")
    assert list(placement) == [sides["a"]["placement"]] and placement[sides["a"]["placement"]]["clicks"] == 1
    segments = await rows("segment")  # each impression counts once per segment
    assert {k: (v["impressions"], v["clicks"]) for k, v in segments.items()} == {
        f"seg-a-{tag}": (4, 1),
        f"shared-{tag}": (4, 1),
    }


async def test_ctr_is_scoped_to_the_managers_advertiser(client, tenants, traffic) -> None:
    tag, sides = traffic
    a, b = sides["a"], sides["b"]
    response = await client.get(f"{API}/ctr?by=segment&days=7&limit=500", headers=bearer(a["manager"]))
    assert response.status_code == 200
    body = response.json()
    assert body["advertiser_id"] == a["builder"].advertiser_id
    keys = {row["key"] for row in body["items"]}
    assert f"seg-a-{tag}" in keys and f"seg-b-{tag}" not in keys
    assert next(r for r in body["items"] if r["key"] == f"shared-{tag}")["impressions"] == 4  # A's only

    other = b["builder"].advertiser_id
    denied = await client.get(f"{API}/ctr?by=device&advertiser_id={other}", headers=bearer(a["manager"]))
    assert denied.status_code == 404
    b_view = await client.get(f"{API}/ctr?by=device&days=7&limit=500", headers=bearer(b["manager"]))
    assert {r["key"] for r in b_view.json()["items"]} == {"tablet"}

    admin = await client.get(f"{API}/ctr?by=segment&days=1&limit=500", headers=bearer(tenants.admin_key))
    shared = next(r for r in admin.json()["items"] if r["key"] == f"shared-{tag}")
    assert (shared["impressions"], shared["clicks"]) == (6, 3)  # admins see every advertiser


async def test_daily_series_is_scoped_and_counts_spend(client, tenants, traffic) -> None:
    _, sides = traffic
    response = await client.get(f"{API}/daily?days=1", headers=bearer(sides["b"]["manager"]))
    assert response.status_code == 200, response.text
    (today,) = response.json()["items"]
    assert (today["impressions"], today["clicks"]) == (2, 2)
    assert today["ctr"] == 1.0 and today["spend"] == pytest.approx(1.0)  # two CPC clicks at 0.5


@pytest.mark.parametrize(
    "query",
    ["by=creative", "by=", "days=0", "days=365", "limit=0", "limit=10000", "offset=-5", "advertiser_id=0"],
)
async def test_ctr_rejects_bad_params(client, tenants, query) -> None:
    response = await client.get(f"{API}/ctr?{query}", headers=bearer(tenants.admin_key))
    assert response.status_code == 400, response.text


async def test_ctr_needs_a_staff_key(client, tenants) -> None:
    assert (await client.get(f"{API}/ctr")).status_code == 401
    assert (await client.get(f"{API}/ctr", headers=bearer(tenants.site_key))).status_code == 403
    assert (await client.get(f"{API}/daily", headers=bearer(tenants.site_key))).status_code == 403

"""The bandit's Postgres side: decisions served through the API, impressions and clicks through the
tracking URLs, then the reward join, the learner, off-policy evaluation, the CLI and the admin
endpoint, all on the session's real Postgres. Time is moved with `now` arguments, never waited.

The tests run in file order: the reward-join test is the first to join this module's decisions.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import asyncpg
import msgspec
import numpy as np
import pytest
from litestar.testing import AsyncTestClient

from adserve.app import create_app
from adserve.bandit.policy import POLICY_FILE, PolicyConfig, VWPolicy
from adserve.db.engine import asyncpg_dsn, open_database
from adserve.domain import Candidate, DecisionContext, Pricing
from adserve.learning.decisions import CANDIDATES_SQL, load_logged_decisions
from adserve.learning.learner import learn_once
from adserve.learning.ope import ope_from_logs
from adserve.learning.registry import Registry
from adserve.learning.rewards import join_rewards_once
from tests.integration.conftest import bearer, decisions_logged
from tests.integration.serving.catalog_builder import CatalogBuilder, wait_for_placement

BROWSER = {"user-agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36"}
BOT = {"user-agent": "python-requests/2.32 (bot)"}
WINDOW = 1800.0
REPO = Path(__file__).resolve().parents[3]


async def query(url: str, sql: str, *args):
    connection = await asyncpg.connect(**asyncpg_dsn(url))
    try:
        return await connection.fetch(sql, *args)
    finally:
        await connection.close()


def path_of(url: str) -> str:
    return "/" + url.split("/", 3)[3]


async def serve(client, keys: list[str], user: str, device: str = "mobile") -> list[dict]:
    response = await client.post(
        "/v1/decisions",
        json={
            "user_id": user,
            "consent": True,
            "placements": keys,
            "context": {"page_category": "shoes", "keywords": ["running"], "device": device, "geo": "DE"},
        },
    )
    assert response.status_code == 200, response.text
    return response.json()["decisions"]


async def impress(client, decision: dict) -> None:
    assert (await client.get(path_of(decision["impression_url"]))).status_code == 200


async def click(client, decision: dict, headers=BROWSER) -> None:
    response = await client.get(path_of(decision["click_url"]), headers=headers, follow_redirects=False)
    assert response.status_code == 302


async def backdate(url: str, decision_id: str, seconds: float) -> None:
    """Move a decision and its tracking rows into the past, so its reward window has closed (the
    join labels a decision only then) without waiting for the clock."""
    for table, column in (("decisions", "id"), ("impressions", "decision_id"), ("clicks", "decision_id")):
        await query(
            url,
            f"UPDATE {table} SET ts = ts - make_interval(secs => $2) WHERE {column} = $1",
            uuid.UUID(decision_id),
            seconds,
        )


async def latest_ts(url: str, ids: list[uuid.UUID]) -> datetime:
    return (await query(url, "SELECT max(ts) AS t FROM decisions WHERE id = ANY($1::uuid[])", ids))[0]["t"]


async def rewards_of(url: str, ids: list[uuid.UUID]) -> dict[uuid.UUID, asyncpg.Record]:
    rows = await query(url, "SELECT * FROM rewards WHERE decision_id = ANY($1::uuid[])", ids)
    return {row["decision_id"]: row for row in rows}


@pytest.fixture(scope="module")
async def database(database_url, settings):
    async with open_database(database_url, settings) as opened:
        yield opened


@pytest.fixture(scope="module")
async def world(client, sessionmaker, settings):
    """Two placements on one page: the CPC campaign (bid 0.8, 3 creatives) wins the first, the
    CPM one (price 4.0) the second (one campaign per page). Eight pages through a greedy app
    (epsilon-greedy at epsilon 0: the session's app serves the default VW policy, whose
    exploration picks the CPM ad for a first placement about once in a hundred), four through an
    app serving the VW policy (exploring)."""
    async with sessionmaker() as session:
        builder = CatalogBuilder(session)
        cpc = await builder.campaign("cpc", creatives=3, category="shoes", bid=0.8, total_budget=1000.0)
        cpm = await builder.campaign("cpm", creatives=1, pricing="cpm", bid=4.0, total_budget=1000.0)
        second = await builder.placement("second", position=1)
        first = await builder.placement("first")
    greedy_settings = msgspec.structs.replace(
        settings, serving=msgspec.structs.replace(settings.serving, policy="epsilon_greedy", epsilon=0.0)
    )
    async with AsyncTestClient(create_app(greedy_settings)) as greedy_client:
        await wait_for_placement(greedy_client, first)
        await wait_for_placement(greedy_client, second)
        pages = [
            await serve(greedy_client, [first, second], f"shopper-{i}", ("mobile", "desktop")[i % 2])
            for i in range(8)
        ]
    # the greedy app's writer stored its rows when it closed
    for page in pages:
        for decision in page:
            await impress(client, decision)
    cpc_decisions = [page[0] for page in pages]
    cpm_decisions = [page[1] for page in pages]

    vw_settings = msgspec.structs.replace(
        settings, serving=msgspec.structs.replace(settings.serving, policy="vw")
    )
    async with AsyncTestClient(create_app(vw_settings)) as vw_client:
        await wait_for_placement(vw_client, first)
        vw_pages = [await serve(vw_client, [first], f"vw-{i}") for i in range(4)]
    vw_decisions = [page[0] for page in vw_pages]
    for decision in vw_decisions:
        await impress(client, decision)
    return {
        "first": first,
        "second": second,
        "cpc_campaign": cpc,
        "cpm_campaign": cpm,
        "cpc": cpc_decisions,
        "cpm": cpm_decisions,
        "vw": vw_decisions,
        "ids": [uuid.UUID(d["decision_id"]) for d in cpc_decisions + cpm_decisions + vw_decisions],
    }


async def test_vw_serving_logs_the_vw_pmf_and_its_chosen_probability(world, database_url, settings) -> None:
    ids = [uuid.UUID(d["decision_id"]) for d in world["vw"]]
    rows = await query(
        database_url,
        "SELECT d.*, p.key, p.position FROM decisions d JOIN placements p ON p.id = d.placement_id "
        "WHERE d.id = ANY($1::uuid[])",
        ids,
    )
    assert len(rows) == 4
    for row in rows:
        index = list(row["candidate_ids"]).index(row["chosen_creative_id"])
        assert row["propensity"] == row["pmf"][index]
        assert sum(row["pmf"]) == pytest.approx(1.0, abs=1e-12)
        if row["policy_version"] == "untrained":
            policy = VWPolicy(PolicyConfig.from_dict(settings.bandit.policy_dict()))
        else:  # a champion registered by an earlier test was hot-swapped in
            path = (
                await query(
                    database_url,
                    "SELECT path FROM model_versions WHERE kind = 'bandit' AND version = $1",
                    row["policy_version"],
                )
            )[0]["path"]
            policy = VWPolicy.load(path)
        by_id = {r["id"]: r for r in await query(database_url, CANDIDATES_SQL, list(row["candidate_ids"]))}
        candidates = [
            Candidate(
                creative_id=cid,
                campaign_id=by_id[cid]["campaign_id"],
                advertiser_id=by_id[cid]["advertiser_id"],
                pricing=Pricing(by_id[cid]["pricing"]),
                bid=float(by_id[cid]["bid"]),
                category=by_id[cid]["category"],
                brand=by_id[cid]["brand"],
                product_ids=tuple(by_id[cid]["product_ids"]),
                price=by_id[cid]["price"],
            )
            for cid in row["candidate_ids"]
        ]
        context = row["context"] if isinstance(row["context"], dict) else msgspec.json.decode(row["context"])
        decision_context = DecisionContext(
            placement=row["key"],
            now=row["ts"].timestamp(),
            page_category=context["page_category"],
            keywords=tuple(context["keywords"]),
            device=context["device"],
            geo=context["geo"],
            hour=context["hour"],
            position=row["position"],
        )
        expected = policy.pmf(decision_context, candidates, list(row["scores"]), row["scorer_version"])
        np.testing.assert_allclose(row["pmf"], expected, rtol=0, atol=1e-12)
        assert row["propensity"] == pytest.approx(float(expected[index]), abs=1e-12)
        policy.close()


async def test_reward_join_edges(client, world, database_url, database) -> None:
    won, invalid, late = world["cpc"][0], world["cpc"][1], world["cpc"][2]
    await click(client, won)
    await click(client, invalid, headers=BOT)
    # a valid click 2000 s after its decision: outside the 1800 s window (stamped directly, as
    # the tracker would stamp a click that came that late)
    late_id = uuid.UUID(late["decision_id"])
    await query(
        database_url,
        "INSERT INTO clicks (id, decision_id, ts, valid) "
        "SELECT $1, id, ts + interval '2000 seconds', true FROM decisions WHERE id = $2",
        uuid.uuid4(),
        late_id,
    )
    ids = world["ids"]
    decided = await latest_ts(database_url, ids)

    # windows still open: nothing is labelled, not even the clicked decision, so positives never
    # reach the learner ahead of the negatives of the same moment
    assert (
        await join_rewards_once(database, now=decided + timedelta(seconds=5), reward_window_s=WINDOW)
    ).joined == 0
    assert await rewards_of(database_url, ids) == {}

    # the advertiser re-prices after serving: rewards keep the price the decision was served at
    await query(database_url, "UPDATE campaigns SET bid = 2.0 WHERE id = $1", world["cpc_campaign"])
    await query(database_url, "UPDATE campaigns SET bid = 9.0 WHERE id = $1", world["cpm_campaign"])

    closed = decided + timedelta(seconds=WINDOW + 1)
    joined = (await join_rewards_once(database, now=closed, reward_window_s=WINDOW)).joined
    assert joined >= len(ids) - 1
    rewards = await rewards_of(database_url, ids)
    assert set(rewards) == set(ids)
    assert rewards[uuid.UUID(won["decision_id"])]["clicked"] is True
    assert float(rewards[uuid.UUID(won["decision_id"])]["revenue"]) == pytest.approx(0.8)  # as served
    assert rewards[uuid.UUID(won["decision_id"])]["learned"] is False
    assert rewards[uuid.UUID(invalid["decision_id"])]["clicked"] is False  # invalid click never counts
    assert rewards[late_id]["clicked"] is False  # late click does not count
    for decision in world["cpc"][1:]:
        assert rewards[uuid.UUID(decision["decision_id"])]["revenue"] == 0  # CPC without click: 0
    for decision in world["cpm"]:
        reward = rewards[uuid.UUID(decision["decision_id"])]
        assert float(reward["revenue"]) == pytest.approx(0.004)  # CPM price/1000 as served, not 9.0/1000
        assert reward["clicked"] is False
    # idempotent: joining again labels nothing twice
    assert (await join_rewards_once(database, now=closed, reward_window_s=WINDOW)).joined == 0

    records = await load_logged_decisions(database, decided - timedelta(hours=1), closed)
    mine = {r.decision_id: r for r in records if r.decision_id in set(ids)}
    assert len(mine) == len(ids)
    assert [r.context.now for r in records] == sorted(r.context.now for r in records)
    clicked = mine[uuid.UUID(won["decision_id"])]
    assert clicked.clicked and clicked.revenue == pytest.approx(0.8)
    # candidates are rebuilt from today's rows (their bids are not logged); revenue is as served
    assert clicked.chosen_candidate.pricing is Pricing.CPC and clicked.chosen_candidate.bid == 2.0
    assert clicked.context.placement == world["first"] and clicked.context.device in ("mobile", "desktop")
    assert clicked.context.page_category == "shoes" and clicked.context.keywords == ("running",)
    # the default serving policy (VW) logged its pmf; the propensity is its entry for the choice
    assert sum(clicked.pmf) == pytest.approx(1.0, abs=1e-9)
    assert clicked.propensity == clicked.pmf[clicked.chosen] > 0


async def test_learner_saves_registers_marks_learned_and_resumes(
    client, world, database_url, database, settings, sessionmaker
) -> None:
    first = (await learn_once(database, settings)).registered
    assert first is not None and first.kind == "bandit"
    assert first.status == "champion"
    assert (Path(first.path) / POLICY_FILE).is_file()
    assert Path(first.path).parent == Path(settings.models_dir) / "bandit"
    assert first.metrics["examples"] >= len(world["ids"])
    rewards = await rewards_of(database_url, world["ids"])
    assert all(r["learned"] for r in rewards.values())
    async with sessionmaker() as session:
        assert (await Registry(session).champion("bandit")).version == first.version
    assert (await learn_once(database, settings)).registered is None  # nothing new

    # more traffic, then a second learner run in a fresh call (a restart): it starts from the
    # saved champion, so the count of examples the model has learned keeps growing
    pages = [await serve(client, [world["first"], world["second"]], f"later-{i}") for i in range(3)]
    new_ids = [uuid.UUID(d["decision_id"]) for page in pages for d in page]
    for page in pages:
        for decision in page:
            await impress(client, decision)
    await click(client, pages[0][0])
    decided = await latest_ts(database_url, new_ids)
    await join_rewards_once(database, now=decided + timedelta(seconds=WINDOW + 1), reward_window_s=WINDOW)
    second = (await learn_once(database, settings)).registered
    assert second is not None and second.version != first.version
    assert second.metrics["base_version"] == first.version
    assert (
        second.metrics["examples_learned"] == first.metrics["examples_learned"] + second.metrics["examples"]
    )
    assert second.metrics["examples"] >= len(new_ids)
    assert second.status in ("champion", "rejected") and second.reason
    assert "gate" in second.metrics and set(second.metrics["gate"]) == {"new", "champion"}
    reloaded = VWPolicy.load(second.path)
    assert reloaded.examples_learned == second.metrics["examples_learned"]
    reloaded.close()


async def test_ope_from_logs_estimates_every_policy(world, database_url, database) -> None:
    decided = await latest_ts(database_url, world["ids"])
    report = await ope_from_logs(
        database, decided - timedelta(hours=1), decided + timedelta(hours=1), n_bootstrap=200
    )
    assert report.n >= len(world["ids"])
    assert {"logging", "uniform", "greedy", "champion"} <= set(report.policies)
    for name, estimate in report.policies.items():
        assert math.isfinite(estimate.ess) and 0 <= estimate.ess <= report.n
        for estimator in ("ips", "dr"):
            for metric in ("ctr", "revenue"):
                interval = estimate.estimates[estimator][metric]
                assert all(map(math.isfinite, (interval.value, interval.low, interval.high))), (
                    name,
                    estimator,
                )
                assert interval.low <= interval.high
        snips = estimate.estimates["snips"]["revenue"]
        # SNIPS is undefined only where no logged choice has weight under the policy (ESS 0)
        assert math.isfinite(snips.value) or estimate.ess == 0
    logging = report.policies["logging"]
    assert logging.ess == pytest.approx(report.n)  # every weight is 1 on-policy
    assert logging.estimates["ips"]["ctr"].value == logging.estimates["snips"]["ctr"].value


async def test_cli_learn_and_ope(client, world, database_url, tmp_path) -> None:
    # one clicked decision whose reward window has closed, so the CLI's own reward join has work
    page = await serve(client, [world["first"]], "cli-shopper")
    await decisions_logged(client)
    await impress(client, page[0])
    await click(client, page[0])
    await backdate(database_url, page[0]["decision_id"], 2 * WINDOW)
    env = {**os.environ, "ADSERVE_DATABASE_URL": database_url, "ADSERVE_MODELS_DIR": str(tmp_path / "models")}
    env["PYTHONPATH"] = str(REPO)

    def run(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "adserve", *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    learned = run("learn")
    print(learned)  # shown with -s: what an operator sees
    assert "reward join: " in learned and "bandit " in learned and "learned " in learned, learned
    assert (tmp_path / "models" / "bandit").is_dir()
    evaluated = run("ope", "--days", "1", "--json", str(tmp_path / "ope.json"))
    print(evaluated)
    assert "| policy | estimator |" in evaluated and "| logging | SNIPS |" in evaluated
    assert "| greedy | DR |" in evaluated and "| champion | IPS |" in evaluated
    data = msgspec.json.decode((tmp_path / "ope.json").read_bytes())
    assert set(data["policies"]) >= {"logging", "uniform", "greedy", "champion"}
    assert data["policies"]["logging"]["estimates"]["snips"]["revenue"]["value"] is not None


async def test_admin_ope_endpoint_is_admin_only(client, world, tenants) -> None:
    response = await client.get("/admin/v1/ope?days=1", headers=bearer(tenants.admin_key))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["n"] >= len(world["ids"])
    assert {"logging", "uniform", "greedy"} <= set(body["policies"])
    logging = body["policies"]["logging"]
    assert set(logging["estimates"]) == {"ips", "snips", "dr"}
    assert set(logging["estimates"]["dr"]) == {"ctr", "revenue"}
    assert logging["ess"] > 0
    forbidden = await client.get("/admin/v1/ope?days=1", headers=bearer(tenants.a.manager_key))
    assert forbidden.status_code == 403
    assert (await client.get("/admin/v1/ope?days=0", headers=bearer(tenants.admin_key))).status_code == 400


async def test_scheduled_job_joins_and_learns_through_its_context(
    client, world, database_url, settings, sessionmaker
) -> None:
    from adserve.jobs.tasks import JobContext, learn_bandit

    page = await serve(client, [world["first"]], "job-shopper")
    await decisions_logged(client)
    await impress(client, page[0])
    await click(client, page[0])
    await backdate(database_url, page[0]["decision_id"], 2 * WINDOW)
    pool = await asyncpg.create_pool(**asyncpg_dsn(database_url), min_size=1, max_size=2)
    try:
        figures = await learn_bandit(JobContext(database_url, settings, pool, sessionmaker))
    finally:
        await pool.close()
    assert figures["join"]["joined"] >= 1 and figures["join"]["clicked"] >= 1
    assert figures["learn"]["learned"] >= 1 and figures["learn"]["status"] in ("champion", "rejected")
    msgspec.json.encode(figures)  # recorded on the job_runs row as JSON

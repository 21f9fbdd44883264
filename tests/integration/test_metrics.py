"""/metrics through a real app on the session's Postgres: protected, and the key series move."""

from __future__ import annotations

import asyncio
import gc
import re
import time

import asyncpg
import msgspec
import pytest
from litestar.testing import AsyncTestClient

from adserve.app import create_app
from adserve.db.engine import asyncpg_dsn
from adserve.jobs.runs import RetryPolicy, run_recorded
from tests.integration.conftest import bearer, decisions_logged
from tests.integration.serving.catalog_builder import CatalogBuilder, wait_for_placement

TOKEN = "metrics-token-" + "m" * 20


def _series(exposition: str, name: str, **labels: str) -> float | None:
    """The value of one sample (`name` with exactly these labels, in any order), None if absent."""
    for line in exposition.splitlines():
        match = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        if not match or match[1] != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match[2] or ""))
        if found == labels:
            return float(match[3])
    return None


def _with_metrics(settings, enabled: bool = True):
    return msgspec.structs.replace(
        settings, metrics=msgspec.structs.replace(settings.metrics, enabled=enabled, token=TOKEN)
    )


@pytest.fixture(scope="module")
async def metrics_client(settings):
    async with AsyncTestClient(create_app(_with_metrics(settings))) as client:
        yield client


async def _scrape(client) -> str:
    response = await client.get("/metrics", headers=bearer(TOKEN))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return response.text


async def test_metrics_are_404_by_default_and_401_without_the_token(client, metrics_client) -> None:
    assert (await client.get("/metrics", headers=bearer(TOKEN))).status_code == 404  # not enabled
    assert (await metrics_client.get("/metrics")).status_code == 401
    wrong = await metrics_client.get("/metrics", headers=bearer("x" * len(TOKEN)))
    assert wrong.status_code == 401
    assert wrong.headers["www-authenticate"] == "Bearer"


async def test_requests_move_the_latency_histogram_of_their_route(metrics_client, sessionmaker) -> None:
    async with sessionmaker() as session:
        builder = CatalogBuilder(session)
        await builder.campaign("metrics", creatives=2)
        key = await builder.placement("metrics-slot")
    await wait_for_placement(metrics_client, key)
    labels = {"method": "POST", "route": "/v1/decisions", "status": "200"}
    before = (
        _series(await _scrape(metrics_client), "adserve_http_request_duration_seconds_count", **labels) or 0
    )
    for user in ("metrics-user-1", "metrics-user-2"):
        response = await metrics_client.post("/v1/decisions", json={"user_id": user, "placements": [key]})
        assert response.status_code == 200, response.text
        assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])
    assert (await metrics_client.get("/health")).status_code == 200
    exposition = await _scrape(metrics_client)
    assert _series(exposition, "adserve_http_request_duration_seconds_count", **labels) == before + 2
    assert _series(
        exposition, "adserve_http_request_duration_seconds_count", method="GET", route="/health", status="200"
    )


async def test_writer_and_serving_state_are_read_at_scrape_time(metrics_client, tenants) -> None:
    exposition = await _scrape(metrics_client)
    assert _series(exposition, "adserve_writer_queue_rows") is not None
    assert _series(exposition, "adserve_writer_spool_bytes") is not None
    assert _series(exposition, "adserve_writer_online") == 1
    assert _series(exposition, "adserve_writer_caught_up") == 1
    assert _series(exposition, "adserve_writer_rows_written_total", table="decisions") is not None
    serving = [line for line in exposition.splitlines() if line.startswith("adserve_serving_info{")]
    assert any('component="scorer"' in line and 'kind="empirical"' in line for line in serving), serving
    assert any('component="policy"' in line and 'kind="vw"' in line for line in serving), serving


async def test_the_request_id_is_always_ours(metrics_client) -> None:
    planted = "0f" * 16  # a client's or proxy's id could be anything, a hashed user id too
    answered = (await metrics_client.get("/health", headers={"X-Request-ID": planted})).headers[
        "x-request-id"
    ]
    assert answered != planted and re.fullmatch(r"[0-9a-f]{32}", answered)


async def test_job_runs_are_counted_by_job_and_status(metrics_client, database_url) -> None:
    before = await _scrape(metrics_client)
    started = time.time() - 1.0  # Postgres's clock and ours, both on this machine
    pool = await asyncpg.create_pool(**asyncpg_dsn(database_url), min_size=1, max_size=2)

    async def fails() -> None:
        raise RuntimeError("planted failure")

    try:
        assert await run_recorded(
            pool, "metrics_probe", lambda: asyncio.sleep(0), RetryPolicy(max_attempts=1)
        )
        assert not await run_recorded(pool, "metrics_probe", fails, RetryPolicy(max_attempts=1))
    finally:
        await pool.close()
    after = await _scrape(metrics_client)
    for status in ("ok", "failed"):
        labels = {"job": "metrics_probe", "status": status}
        previous = _series(before, "adserve_job_runs_total", **labels) or 0
        assert _series(after, "adserve_job_runs_total", **labels) == previous + 1
    assert _series(after, "adserve_job_run_duration_seconds_count", job="metrics_probe") == 2 + (
        _series(before, "adserve_job_run_duration_seconds_count", job="metrics_probe") or 0
    )
    # read from job_runs, so a separate `adserve worker`'s runs show on every serving node too
    for status in ("ok", "failed"):
        finished = _series(
            after, "adserve_job_last_finished_timestamp_seconds", job="metrics_probe", status=status
        )
        assert finished is not None and finished >= started


async def test_a_raw_id_in_a_path_never_becomes_a_label(metrics_client, tenants) -> None:
    planted = "planted-user-8d1f"
    erased = await metrics_client.delete(f"/v1/users/{planted}", headers=bearer(tenants.site_key))
    assert erased.status_code == 200, erased.text
    exposition = await _scrape(metrics_client)
    assert planted not in exposition
    labels = {"method": "DELETE", "route": "/v1/users/{user_id}", "status": "200"}
    assert _series(exposition, "adserve_http_request_duration_seconds_count", **labels)


async def test_a_line_logged_while_handling_a_request_carries_its_id(settings, caplog) -> None:
    """Postgres unreachable: /metrics still answers, and its warning names the request it belongs to."""
    unreachable = msgspec.structs.replace(
        settings,
        database=msgspec.structs.replace(settings.database, url="postgresql://postgres@127.0.0.1:1/none"),
    )
    async with AsyncTestClient(create_app(_with_metrics(unreachable))) as client:
        response = await client.get("/metrics", headers=bearer(TOKEN))
    assert response.status_code == 200
    warned = [record for record in caplog.records if "job_runs not read" in record.getMessage()]
    assert warned and warned[0].request_id == response.headers["x-request-id"]


async def test_decisions_are_counted_by_outcome_and_removal_rule(metrics_client, sessionmaker) -> None:
    async with sessionmaker() as session:
        builder = CatalogBuilder(session)
        await builder.campaign("counted", creatives=2, targeting={"geo": ["DE"]})
        key = await builder.placement("counted-slot")
    await wait_for_placement(metrics_client, key)
    before = await _scrape(metrics_client)
    for geo in ("DE", "FR"):
        body = {"user_id": "counted-user", "placements": [key], "context": {"geo": geo}}
        assert (await metrics_client.post("/v1/decisions", json=body)).status_code == 200
    after = await _scrape(metrics_client)

    def moved(name: str, **labels: str) -> float:
        return (_series(after, name, **labels) or 0) - (_series(before, name, **labels) or 0)

    assert moved("adserve_decisions_total", outcome="served") == 1
    assert moved("adserve_decisions_total", outcome="no_eligible_creative") == 1
    assert moved("adserve_eligibility_removed_total", rule="geo") == 2
    assert moved("adserve_scoring_seconds_count") == 1 and moved("adserve_policy_choose_seconds_count") == 1
    await decisions_logged(metrics_client)
    flushed = await _scrape(metrics_client)
    assert (_series(flushed, "adserve_writer_flush_seconds_count", table="decisions") or 0) > (
        _series(before, "adserve_writer_flush_seconds_count", table="decisions") or 0
    )


async def test_garbage_collections_are_timed_by_generation(metrics_client) -> None:
    before = await _scrape(metrics_client)
    gc.collect()  # one full collection of this process, the app's with it
    after = await _scrape(metrics_client)
    full_before = _series(before, "adserve_gc_pause_seconds_count", generation="2") or 0
    assert _series(after, "adserve_gc_pause_seconds_count", generation="2") >= full_before + 1
    assert _series(after, "adserve_gc_pause_seconds_sum", generation="2") > (
        _series(before, "adserve_gc_pause_seconds_sum", generation="2") or 0
    )

"""`adserve serve`'s whole log of a full flow: one JSON object a line, request ids, no raw ids."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import httpx

from tests.e2e.conftest import run_server
from tests.integration.conftest import bearer
from tests.integration.serving.catalog_builder import CatalogBuilder

PLANTED_USER = "planted-user-8d1f"
PLANTED_SESSION = "planted-session-5e2a"
PLANTED_ADDRESS = "203.0.113.77"  # the client address uvicorn takes from X-Forwarded-For
METRICS_TOKEN = "e2e-metrics-token-0123456789"


async def _full_flow(url: str, key: str, site_key: str) -> str:
    """Decision, behaviour events, impression, click, recommendations, a bad request and an erasure,
    all carrying the planted ids; returns the decision's X-Request-ID."""
    async with httpx.AsyncClient(base_url=url, headers={"X-Forwarded-For": PLANTED_ADDRESS}) as http:
        decision = await http.post(
            "/v1/decisions",
            json={
                "user_id": PLANTED_USER,
                "session_id": PLANTED_SESSION,
                "consent": True,
                "placements": [key],
                "context": {"page_url": f"https://shop.example/p/1?u={PLANTED_USER}"},
            },
        )
        assert decision.status_code == 200, decision.text
        served = decision.json()["decisions"][0]
        event = {
            "event_id": str(uuid.uuid4()),
            "user_id": PLANTED_USER,
            "type": "product_view",
            "ts": datetime.now(UTC).isoformat(),
            "item_id": "sku-1",
        }
        events = await http.post("/v1/events", json={"consent": True, "events": [event]})
        assert events.status_code == 202, events.text
        assert (await http.get(served["impression_url"])).status_code == 200
        assert (await http.get(served["click_url"])).status_code == 302
        recommendations = await http.get(
            "/v1/recommendations", params={"user_id": PLANTED_USER, "consent": "true"}
        )
        assert recommendations.status_code < 500, recommendations.text
        bad = await http.post("/v1/decisions", json={"user_id": PLANTED_USER, "placements": []})
        assert bad.status_code == 400
        erased = await http.delete(f"/v1/users/{PLANTED_USER}", headers=bearer(site_key))
        assert erased.status_code == 200, erased.text
        scrape = await http.get("/metrics", headers=bearer(METRICS_TOKEN))
        assert scrape.status_code == 200
        assert (
            'adserve_http_request_duration_seconds_count{method="POST",route="/v1/decisions",status="200"}'
            in (scrape.text)
        )
        return decision.headers["x-request-id"]


async def test_a_full_flow_logs_json_lines_with_request_ids_and_no_raw_ids(
    database_url, sessionmaker, tenants, tmp_path
) -> None:
    async with sessionmaker() as session:
        builder = CatalogBuilder(session)
        await builder.campaign("logs", creatives=2)
        key = await builder.placement("logs-slot")  # in the snapshot the server loads at start
    env = {
        "ADSERVE_LOG_LEVEL": "INFO",
        "ADSERVE_LOG_FORMAT": "json",
        "ADSERVE_LOG_REQUESTS": "true",
        "ADSERVE_METRICS_ENABLED": "true",
        "ADSERVE_METRICS_TOKEN": METRICS_TOKEN,
    }
    with run_server(database_url, tmp_path, env) as server:
        decision_request_id = await _full_flow(server.url, key, tenants.site_key)
    log = server.log()  # the whole output of the process, which has exited

    for planted in (PLANTED_USER, PLANTED_SESSION, PLANTED_ADDRESS):
        assert planted not in log, f"{planted!r} is in the server's log"
    lines = [json.loads(line) for line in log.splitlines() if line.strip()]  # every line is JSON
    assert all({"ts", "level", "logger", "message"} <= line.keys() for line in lines)
    requests = [line for line in lines if line["logger"] == "adserve.http"]
    assert requests and all(line.get("request_id") for line in requests)
    routes = {(line["method"], line["route"], line["status"]) for line in requests}
    assert {
        ("POST", "/v1/decisions", 200),
        ("POST", "/v1/events", 202),
        ("GET", "/i/{token}", 200),
        ("GET", "/c/{token}", 302),
        ("POST", "/v1/decisions", 400),
        ("DELETE", "/v1/users/{user_id}", 200),
    } <= routes, routes
    decision_lines = [line for line in requests if line["request_id"] == decision_request_id]
    assert [line["route"] for line in decision_lines] == ["/v1/decisions"]
    assert any(line["logger"].startswith("uvicorn") for line in lines)  # uvicorn's own lines too

"""Bad input gets a clear 4xx problem-details answer and changes nothing."""

from __future__ import annotations

import pytest

from tests.integration.conftest import Tenants, bearer

GOOD_CAMPAIGN = {"name": "ok", "pricing": "cpc", "bid": 0.4}


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({**GOOD_CAMPAIGN, "daily_budget": -5}, "daily_budget"),
        ({**GOOD_CAMPAIGN, "total_budget": -0.01}, "total_budget"),
        ({**GOOD_CAMPAIGN, "bid": 0}, "bid"),
        ({**GOOD_CAMPAIGN, "pricing": "cpa"}, "pricing"),
        (
            {**GOOD_CAMPAIGN, "start_at": "2027-01-02T00:00:00Z", "end_at": "2027-01-01T00:00:00Z"},
            "end_at must be after start_at",
        ),
        ({**GOOD_CAMPAIGN, "start_at": "2027-01-02T00:00:00"}, "UTC offset"),
        ({**GOOD_CAMPAIGN, "timezone": "Mars/Olympus"}, "IANA"),
        ({**GOOD_CAMPAIGN, "targeting": {"device": ["toaster"]}}, "device"),
        ({**GOOD_CAMPAIGN, "targeting": {"colour": ["red"]}}, "colour"),
        ({**GOOD_CAMPAIGN, "frequency_cap": {"impressions": 0, "window_s": 3600}}, "impressions"),
        ({**GOOD_CAMPAIGN, "name": ""}, "name"),
        ({**GOOD_CAMPAIGN, "unknown": 1}, "unknown"),
    ],
)
async def test_campaign_validation(client, tenants: Tenants, body, says) -> None:
    headers = bearer(tenants.a.manager_key)
    before = (await client.get("/admin/v1/campaigns", headers=headers)).json()["total"]
    response = await client.post("/admin/v1/campaigns", json=body, headers=headers)
    assert response.status_code == 400, response.text
    problem = response.json()
    assert problem["status"] == 400
    assert says in response.text
    assert (await client.get("/admin/v1/campaigns", headers=headers)).json()["total"] == before


async def test_end_before_start_is_checked_on_update_against_stored_values(client, tenants: Tenants) -> None:
    headers = bearer(tenants.a.manager_key)
    created = await client.post(
        "/admin/v1/campaigns",
        json={**GOOD_CAMPAIGN, "start_at": "2027-03-01T00:00:00+01:00"},
        headers=headers,
    )
    assert created.status_code == 201
    response = await client.patch(
        f"/admin/v1/campaigns/{created.json()['id']}",
        json={"end_at": "2027-02-01T00:00:00Z"},
        headers=headers,
    )
    assert response.status_code == 400
    assert "end_at" in response.json()["detail"]


@pytest.mark.parametrize(
    ("landing", "ok"),
    [
        ("https://shop.example/p/1", True),
        ("http://shop.example/p/1", False),
        ("javascript:alert(1)", False),
        ("//shop.example/p", False),
        ("https://", False),
    ],
)
async def test_landing_urls_must_be_https(client, tenants: Tenants, landing, ok) -> None:
    body = {
        "campaign_id": tenants.a.campaign_id,
        "title": "t",
        "width": 300,
        "height": 250,
        "image_url": "https://cdn.example/i.png",
        "landing_url": landing,
    }
    response = await client.post("/admin/v1/creatives", json=body, headers=bearer(tenants.a.manager_key))
    assert response.status_code == (201 if ok else 400), response.text


async def test_oversized_body_is_413(client, tenants: Tenants) -> None:
    body = {**GOOD_CAMPAIGN, "targeting": {"keywords": ["k" * 99] * 1000}}
    response = await client.post("/admin/v1/campaigns", json=body, headers=bearer(tenants.a.manager_key))
    assert response.status_code == 413


async def test_malformed_json_is_400(client, tenants: Tenants) -> None:
    response = await client.post(
        "/admin/v1/campaigns",
        content=b'{"name": "x", ',
        headers={**bearer(tenants.a.manager_key), "content-type": "application/json"},
    )
    assert response.status_code == 400


@pytest.mark.parametrize("path", ["/admin/v1/campaigns/0", "/admin/v1/campaigns/99999999999999999999"])
async def test_out_of_range_ids_are_4xx_not_500(client, tenants: Tenants, path) -> None:
    response = await client.get(path, headers=bearer(tenants.admin_key))
    assert 400 <= response.status_code < 500


async def test_duplicate_placement_key_is_409(client, tenants: Tenants) -> None:
    body = {"key": "dup-slot", "width": 728, "height": 90}
    first = await client.post("/admin/v1/placements", json=body, headers=bearer(tenants.admin_key))
    second = await client.post("/admin/v1/placements", json=body, headers=bearer(tenants.admin_key))
    assert first.status_code == 201
    assert second.status_code == 409


async def test_nul_characters_are_rejected_not_500(client, tenants: Tenants) -> None:
    response = await client.post(
        "/admin/v1/campaigns",
        json={**GOOD_CAMPAIGN, "name": "a\u0000b"},
        headers=bearer(tenants.a.manager_key),
    )
    assert response.status_code == 400


async def test_pagination_and_filters(client, tenants: Tenants) -> None:
    headers = bearer(tenants.a.manager_key)
    for index in range(3):
        await client.post(
            "/admin/v1/campaigns",
            json={**GOOD_CAMPAIGN, "name": f"paged-{index}", "pricing": "cpm"},
            headers=headers,
        )
    page = (
        await client.get("/admin/v1/campaigns?pricing=cpm&name=paged-&limit=2&offset=0", headers=headers)
    ).json()
    assert page["total"] == 3 and len(page["items"]) == 2
    rest = (
        await client.get("/admin/v1/campaigns?pricing=cpm&name=paged-&limit=2&offset=2", headers=headers)
    ).json()
    assert len(rest["items"]) == 1
    names = {item["name"] for item in page["items"] + rest["items"]}
    assert names == {"paged-0", "paged-1", "paged-2"}
    too_big = await client.get("/admin/v1/campaigns?limit=100000", headers=headers)
    assert too_big.status_code == 400

"""The tenant matrix: a manager of A gets 404 for B's objects on every verb; viewers cannot write;
no key is 401; wrong role is 403; advertiser ids and spend cannot be set through a body."""

from __future__ import annotations

import pytest

from tests.integration.conftest import Tenants, bearer

VALID_BODIES = {
    "campaigns": {"name": "renamed"},
    "creatives": {"title": "renamed"},
}


def _b_objects(t: Tenants) -> dict[str, int]:
    return {"campaigns": t.b.campaign_id, "creatives": t.b.creative_id}


@pytest.mark.parametrize("resource", ["campaigns", "creatives"])
@pytest.mark.parametrize("verb", ["GET", "PATCH", "DELETE"])
async def test_manager_of_a_gets_404_for_every_verb_on_b_objects(
    client, tenants: Tenants, resource, verb
) -> None:
    item_id = _b_objects(tenants)[resource]
    response = await client.request(
        verb,
        f"/admin/v1/{resource}/{item_id}",
        headers=bearer(tenants.a.manager_key),
        json=VALID_BODIES[resource] if verb == "PATCH" else None,
    )
    assert response.status_code == 404, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    # and B's object is untouched: B's own manager still reads the original
    check = await client.get(f"/admin/v1/{resource}/{item_id}", headers=bearer(tenants.b.manager_key))
    assert check.status_code == 200
    assert "renamed" not in check.text


async def test_manager_cannot_create_a_creative_in_b_campaign(client, tenants: Tenants) -> None:
    body = {
        "campaign_id": tenants.b.campaign_id,
        "title": "sneaky",
        "width": 300,
        "height": 250,
        "image_url": "https://cdn.example.com/x.png",
        "landing_url": "https://example.com/x",
    }
    response = await client.post("/admin/v1/creatives", json=body, headers=bearer(tenants.a.manager_key))
    assert response.status_code == 404


@pytest.mark.parametrize("resource", ["campaigns", "creatives"])
async def test_lists_show_only_own_advertiser(client, tenants: Tenants, resource) -> None:
    response = await client.get(f"/admin/v1/{resource}?limit=500", headers=bearer(tenants.a.viewer_key))
    assert response.status_code == 200
    owners = {item["advertiser_id"] for item in response.json()["items"]}
    assert owners == {tenants.a.advertiser_id}
    # filtering by another advertiser's id finds nothing rather than leaking
    leaked = await client.get(
        f"/admin/v1/{resource}?advertiser_id={tenants.b.advertiser_id}"
        if resource == "campaigns"
        else f"/admin/v1/{resource}?campaign_id={tenants.b.campaign_id}",
        headers=bearer(tenants.a.manager_key),
    )
    assert leaked.json()["total"] == 0


@pytest.mark.parametrize(
    ("verb", "path", "body"),
    [
        ("POST", "/admin/v1/campaigns", {"name": "v", "pricing": "cpc", "bid": 1.0}),
        ("PATCH", "/admin/v1/campaigns/{a_campaign}", {"name": "v"}),
        ("DELETE", "/admin/v1/campaigns/{a_campaign}", None),
        ("PATCH", "/admin/v1/creatives/{a_creative}", {"title": "v"}),
        ("DELETE", "/admin/v1/creatives/{a_creative}", None),
    ],
)
async def test_viewer_writes_are_403(client, tenants: Tenants, verb, path, body) -> None:
    path = path.format(a_campaign=tenants.a.campaign_id, a_creative=tenants.a.creative_id)
    response = await client.request(verb, path, json=body, headers=bearer(tenants.a.viewer_key))
    assert response.status_code == 403
    assert (
        await client.get(
            path if verb != "POST" else "/admin/v1/campaigns", headers=bearer(tenants.a.viewer_key)
        )
    ).status_code == 200


@pytest.mark.parametrize(
    ("verb", "path"),
    [
        ("GET", "/admin/v1/campaigns"),
        ("POST", "/admin/v1/campaigns"),
        ("GET", "/admin/v1/creatives/1"),
        ("GET", "/admin/v1/advertisers"),
        ("GET", "/admin/v1/placements"),
        ("GET", "/admin/v1/keys"),
    ],
)
async def test_no_key_or_a_bad_key_is_401(client, verb, path) -> None:
    assert (await client.request(verb, path)).status_code == 401
    bad = {"Authorization": "Bearer adsk_000000000000_not-a-real-key"}
    assert (await client.request(verb, path, headers=bad)).status_code == 401
    assert (await client.request(verb, path, headers={"Authorization": "Basic abc"})).status_code == 401


@pytest.mark.parametrize(
    ("verb", "path", "body"),
    [
        ("GET", "/admin/v1/advertisers", None),
        ("POST", "/admin/v1/advertisers", {"name": "x"}),
        ("GET", "/admin/v1/keys", None),
        ("POST", "/admin/v1/keys", {"role": "admin"}),
        ("POST", "/admin/v1/placements", {"key": "x", "width": 1, "height": 1}),
    ],
)
async def test_wrong_role_is_403(client, tenants: Tenants, verb, path, body) -> None:
    for key in (tenants.a.manager_key, tenants.a.viewer_key, tenants.site_key):
        response = await client.request(verb, path, json=body, headers=bearer(key))
        assert response.status_code == 403, (key[:12], response.text)


async def test_site_key_has_no_catalogue_access(client, tenants: Tenants) -> None:
    response = await client.get("/admin/v1/campaigns", headers=bearer(tenants.site_key))
    # a site key is not tied to an advertiser and is not an admin: it may not see campaigns
    assert response.status_code == 403


@pytest.mark.parametrize("field", [{"advertiser_id": 999}, {"spend_total": 0}, {"spend_today": 0}, {"id": 5}])
async def test_mass_assignment_is_rejected(client, tenants: Tenants, field) -> None:
    create = {"name": "mass", "pricing": "cpc", "bid": 1.0, **field}
    response = await client.post("/admin/v1/campaigns", json=create, headers=bearer(tenants.a.manager_key))
    assert response.status_code == 400
    update = await client.patch(
        f"/admin/v1/campaigns/{tenants.a.campaign_id}", json=field, headers=bearer(tenants.a.manager_key)
    )
    assert update.status_code == 400
    after = (
        await client.get(
            f"/admin/v1/campaigns/{tenants.a.campaign_id}", headers=bearer(tenants.a.manager_key)
        )
    ).json()
    assert after["advertiser_id"] == tenants.a.advertiser_id
    assert after["id"] == tenants.a.campaign_id


async def test_creative_cannot_move_to_another_campaign(client, tenants: Tenants) -> None:
    response = await client.patch(
        f"/admin/v1/creatives/{tenants.a.creative_id}",
        json={"campaign_id": tenants.b.campaign_id},
        headers=bearer(tenants.a.manager_key),
    )
    assert response.status_code == 400


async def test_manager_creates_within_own_advertiser_even_if_asking_for_another(
    client, tenants: Tenants
) -> None:
    response = await client.post(
        f"/admin/v1/campaigns?advertiser_id={tenants.b.advertiser_id}",
        json={"name": "mine", "pricing": "cpm", "bid": 2.0},
        headers=bearer(tenants.a.manager_key),
    )
    assert response.status_code == 201
    assert response.json()["advertiser_id"] == tenants.a.advertiser_id


async def test_admin_sees_and_edits_every_advertiser(client, tenants: Tenants) -> None:
    for tenant in (tenants.a, tenants.b):
        response = await client.get(
            f"/admin/v1/campaigns/{tenant.campaign_id}", headers=bearer(tenants.admin_key)
        )
        assert response.status_code == 200
    missing = await client.post(
        "/admin/v1/campaigns",
        json={"name": "n", "pricing": "cpc", "bid": 1.0},
        headers=bearer(tenants.admin_key),
    )
    assert missing.status_code == 400 and "advertiser_id" in missing.json()["detail"]

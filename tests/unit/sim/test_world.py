from __future__ import annotations

import json

import numpy as np
import pytest

from adserve.domain import Pricing
from adserve.sim.world import World, WorldConfig

DAY = 86_400.0


@pytest.fixture(scope="module")
def world() -> World:
    return World(WorldConfig(seed=11))


def test_same_seed_builds_the_same_world(world: World) -> None:
    again = World(WorldConfig(seed=11))
    assert again.catalogue().as_dict() == world.catalogue().as_dict()
    np.testing.assert_array_equal(again.base_interest_logits, world.base_interest_logits)
    np.testing.assert_array_equal(again.creative_attributes, world.creative_attributes)
    assert [u.consent for u in again.users] == [u.consent for u in world.users]


def test_different_seeds_build_different_worlds(world: World) -> None:
    other = World(WorldConfig(seed=12))
    assert not np.allclose(other.base_interest_logits, world.base_interest_logits)
    assert other.catalogue().as_dict()["creatives"] != world.catalogue().as_dict()["creatives"]


def test_catalogue_is_plain_data_with_stable_unique_names(world: World) -> None:
    data = world.catalogue().as_dict()
    json.dumps(data)  # loadable by an integration as is
    cfg = world.config
    assert len(data["advertisers"]) == cfg.n_advertisers
    assert len(data["campaigns"]) == cfg.n_advertisers * cfg.campaigns_per_advertiser
    assert len(data["creatives"]) == len(data["campaigns"]) * cfg.creatives_per_campaign
    for kind, name in (
        ("advertisers", "name"),
        ("campaigns", "name"),
        ("creatives", "key"),
        ("placements", "key"),
    ):
        names = [row[name] for row in data[kind]]
        assert len(set(names)) == len(names), kind
    assert len(world.creative_by_landing_url) == len(world.creatives)  # maps DB rows back to the world
    assert world.campaign_by_name[data["campaigns"][3]["name"]].id == data["campaigns"][3]["id"]
    advertiser_names = {a["name"] for a in data["advertisers"]}
    campaign_names = {c["name"] for c in data["campaigns"]}
    assert {c["advertiser"] for c in data["campaigns"]} <= advertiser_names
    assert {c["campaign"] for c in data["creatives"]} <= campaign_names
    for campaign in data["campaigns"]:
        assert campaign["pricing"] in {"cpc", "cpm"}
        assert campaign["bid"] > 0 and campaign["daily_budget"] > 0
        assert campaign["total_budget"] >= campaign["daily_budget"]
        assert (campaign["frequency_cap"] is None) == (campaign["frequency_window_s"] is None)
        assert set(campaign["targeting"]) <= {"geo", "device"}
    # Mostly broad targeting, mostly CPC: the world should be servable by every campaign.
    broad = sum(not c["targeting"] for c in data["campaigns"])
    assert broad >= 0.6 * len(data["campaigns"])
    assert any(c["pricing"] == "cpc" for c in data["campaigns"])


def test_creatives_show_products_of_their_own_category_and_brand(world: World) -> None:
    placement_sizes = {p.size for p in world.placements}
    for creative in world.creatives:
        assert creative.size in placement_sizes
        assert creative.landing_url.startswith("https://")
        assert 1 <= len(creative.product_ids) <= world.config.products_per_creative
        for key in creative.product_ids:
            product = world.products[world.product_index[key]]
            assert (product.category, product.brand) == (creative.category, creative.brand)
        assert creative.price == world.products[world.product_index[creative.product_ids[0]]].price
    # Every placement has ads of its size.
    for placement in world.placements:
        assert world.eligible_candidates(placement, "desktop", "US")


def test_candidates_mirror_creatives_and_campaigns(world: World) -> None:
    for candidate, creative in zip(world.candidates, world.creatives, strict=True):
        campaign = world.campaign(creative.campaign_id)
        assert candidate.creative_id == creative.id and world.creative(creative.id) is creative
        assert (candidate.pricing, candidate.bid) == (campaign.pricing, campaign.bid)
        assert isinstance(candidate.pricing, Pricing)
        assert candidate.product_ids == creative.product_ids


def test_targeting_limits_eligibility() -> None:
    world = World(WorldConfig(seed=3, targeted_share=1.0))
    placement = world.placements[0]
    everyone = [c for c in world.creatives if c.size == placement.size]
    desktop_in_japan = world.eligible_candidates(placement, "desktop", "JP")
    assert len(desktop_in_japan) == 0 < len(everyone)
    for candidate in world.eligible_candidates(placement, "mobile", "US"):
        assert world.campaign(candidate.campaign_id).targets("mobile", "US")


def test_users_have_a_few_strong_interests(world: World) -> None:
    interests = world.interests_at(world.config.start_ts)
    np.testing.assert_allclose(interests.sum(axis=1), 1.0)
    top3 = np.sort(interests, axis=1)[:, -3:].sum(axis=1)
    assert np.median(top3) > 0.75  # a few categories hold most of the mass
    assert np.median(interests.max(axis=1)) > 0.35
    # but users differ: their favourite categories spread over the catalogue
    favourites = np.bincount(interests.argmax(axis=1), minlength=len(world.categories))
    assert (favourites > 0).all()


def test_interests_drift_slowly() -> None:
    world = World(WorldConfig(seed=5))
    t0 = world.config.start_ts
    start = world.interests_at(t0)

    def moved(days: float) -> float:
        return float(np.abs(world.interests_at(t0 + days * DAY) - start).sum(axis=1).mean())

    hour, day, month = moved(1 / 24), moved(1), moved(30)
    assert 0 < hour < day < month
    assert day < 0.15  # a day barely changes anyone (users differ by ~1.3)
    assert month > 2 * day  # but a month does
    # After a month users still look more like themselves than like anyone else.
    later = world.interests_at(t0 + 30 * DAY)
    self_distance = np.abs(later - start).sum(axis=1).mean()
    other_distance = np.abs(later - np.roll(start, 1, axis=0)).sum(axis=1).mean()
    assert self_distance < 0.5 * other_distance


def test_interest_is_a_function_of_time_whatever_the_query_order() -> None:
    forwards, backwards = World(WorldConfig(seed=9)), World(WorldConfig(seed=9))
    t0 = forwards.config.start_ts
    times = [t0 + d * DAY for d in (0.5, 3.2, 40.7)]
    a = [forwards.interest_at(17, t) for t in times]
    b = [backwards.interest_at(17, t) for t in reversed(times)][::-1]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_config_rejects_impossible_worlds() -> None:
    with pytest.raises(ValueError, match="n_products"):
        WorldConfig(n_products=5)
    with pytest.raises(ValueError, match="placement"):
        WorldConfig(placements=())
    with pytest.raises(ValueError, match="no creative fits"):
        World(WorldConfig(creatives_per_campaign=1))  # only 300x250 ads, but 728x90 slots

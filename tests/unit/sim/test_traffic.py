from __future__ import annotations

from collections import Counter
from itertools import islice

import numpy as np
import pytest

from adserve.domain import EventType
from adserve.sim.traffic import PageView, Traffic
from adserve.sim.world import World, WorldConfig


def _pages(world: World, n: int) -> list[PageView]:
    return list(islice(Traffic(world), n))


def _fingerprint(pages: list[PageView]) -> list[tuple]:
    return [
        (p.seq, p.ts, p.user.key, p.page_type, p.page_category, p.keywords, p.events,
         tuple((r.placement.key, r.click_draw, r.conversion_draw, r.delay_draw) for r in p.ad_requests))
        for p in pages
    ]  # fmt: skip


@pytest.fixture(scope="module")
def world() -> World:
    return World(WorldConfig(seed=21, n_users=500))


@pytest.fixture(scope="module")
def pages(world: World) -> list[PageView]:
    return _pages(world, 8000)


def test_same_seed_gives_identical_traffic(world: World, pages: list[PageView]) -> None:
    first = _fingerprint(pages)
    assert _fingerprint(_pages(world, 8000)) == first  # replay on the same world
    assert _fingerprint(_pages(World(WorldConfig(seed=21, n_users=500)), 8000)) == first  # a rebuilt world
    assert _fingerprint(_pages(World(WorldConfig(seed=22, n_users=500)), 8000)) != first


def test_pages_come_in_time_order_with_their_events(pages: list[PageView]) -> None:
    ts = [p.ts for p in pages]
    assert ts == sorted(ts)
    assert [p.seq for p in pages] == list(range(len(pages)))
    for page in pages:
        assert page.events and all(e.ts <= page.ts for e in page.events)
        assert all(r.placement.page_type == page.page_type for r in page.ad_requests)
        assert 0 <= page.hour < 24
    users = {p.user.key for p in pages}
    assert len(users) > 200  # many users, interleaved


def test_funnel_rates_are_realistic(pages: list[PageView]) -> None:
    counts = Counter(e.event_type for p in pages for e in p.events)
    views, carts, purchases = (
        counts[EventType.PRODUCT_VIEW],
        counts[EventType.ADD_TO_CART],
        counts[EventType.PURCHASE],
    )
    assert purchases <= carts <= views
    assert 0.02 < carts / views < 0.2
    assert 0.2 < purchases / carts < 0.7
    assert counts[EventType.SEARCH] > 0 and counts[EventType.PAGE_VIEW] > 0
    assert EventType.AD_CLICK not in counts  # ad clicks are the ad server's, not organic browsing


def test_carts_follow_views_and_purchases_follow_carts(pages: list[PageView]) -> None:
    viewed: dict[str, set[str]] = {}
    carted: dict[str, set[str]] = {}
    for page in pages:
        for event in page.events:
            user = page.user.key
            if event.event_type is EventType.PRODUCT_VIEW:
                viewed.setdefault(user, set()).add(event.item_id)
            elif event.event_type is EventType.ADD_TO_CART:
                assert event.item_id in viewed.get(user, set())
                carted.setdefault(user, set()).add(event.item_id)
            elif event.event_type is EventType.PURCHASE:
                assert event.item_id in carted.get(user, set())


def test_views_cluster_in_a_category_within_a_session(world: World, pages: list[PageView]) -> None:
    last_view: dict[str, tuple[float, str]] = {}
    same = total = 0
    for page in pages:
        for event in page.events:
            if event.event_type is not EventType.PRODUCT_VIEW:
                continue
            previous = last_view.get(page.user.key)
            if previous is not None and event.ts - previous[0] < 600:  # same visit
                total += 1
                same += previous[1] == event.category
            last_view[page.user.key] = (event.ts, event.category)
    # Independent draws from the users' interests would repeat a category far less often.
    interests = world.interests_at(world.config.start_ts)
    independent = float((interests**2).sum(axis=1).mean())
    assert total > 1000
    assert same / total > 0.7 > independent + 0.1


def test_browsing_follows_latent_interests(world: World, pages: list[PageView]) -> None:
    views = np.zeros((len(world.users), len(world.categories)))
    for page in pages:
        for event in page.events:
            if event.event_type is EventType.PRODUCT_VIEW:
                views[page.user.index, world.category_index[event.category]] += 1
    active = views.sum(axis=1) >= 20
    assert active.sum() > 20
    interests = world.interests_at(world.config.start_ts)[active]
    shares = views[active] / views[active].sum(axis=1, keepdims=True)
    # Users view their own interests far more than another user's.
    own = (shares * interests).sum(axis=1).mean()
    shuffled = (shares * np.roll(interests, 1, axis=0)).sum(axis=1).mean()
    assert own > 2 * shuffled


def test_context_carries_consented_history_only(world: World) -> None:
    seen_consenting = seen_refusing = False
    for page in islice(Traffic(world), 3000):
        for request in page.ad_requests:
            context = page.context(request, history_limit=20)
            assert context.placement == request.placement.key
            assert context.position == request.placement.position
            assert (context.now, context.user_key, context.device) == (
                page.ts,
                page.user.key,
                page.user.device,
            )
            if page.user.consent:
                seen_consenting = True
                assert 1 <= len(context.history) <= 20
                assert context.history[-len(page.events) :] == page.events
                assert [e.ts for e in context.history] == sorted(e.ts for e in context.history)
            else:
                seen_refusing = True
                assert context.history == ()
    assert seen_consenting and seen_refusing


def test_a_newer_traffic_invalidates_the_older(world: World) -> None:
    old = Traffic(world)
    next(old)
    Traffic(world)
    with pytest.raises(RuntimeError, match="newer Traffic"):
        next(old)


def test_clicks_follow_the_oracle_with_common_random_numbers(world: World) -> None:
    traffic = Traffic(world)
    probabilities, clicks = [], []
    for page in islice(traffic, 6000):
        for request in page.ad_requests:
            creative = world.eligible_candidates(request.placement, page.user.device, page.user.geo)[0]
            outcome = traffic.outcome(page, request, creative.creative_id)
            probabilities.append(outcome.click_probability)
            clicks.append(outcome.clicked)
            # The same draw decides every creative: higher P(click) never loses a click.
            assert traffic.outcome(page, request, creative.creative_id, 1.0).clicked
            assert not traffic.outcome(page, request, creative.creative_id, 0.0).clicked
            if outcome.clicked:
                assert traffic.outcome(
                    page, request, creative.creative_id, outcome.click_probability * 1.5
                ).clicked
                assert outcome.click_ts > page.ts
                if outcome.converted:
                    assert outcome.conversion_ts > outcome.click_ts and outcome.conversion_value > 0
            else:
                assert not outcome.converted and outcome.click_ts is None
    p = np.array(probabilities)
    expected, observed = p.sum(), float(np.sum(clicks))
    assert abs(observed - expected) < 4 * np.sqrt((p * (1 - p)).sum())


def test_purchases_after_clicks_are_rare_but_happen(world: World) -> None:
    traffic = Traffic(world)
    clicks = conversions = 0
    for page in islice(traffic, 6000):
        for request in page.ad_requests:
            outcome = traffic.outcome(page, request, 1, click_probability=1.0)  # every request clicked
            clicks += 1
            conversions += outcome.converted
    assert 0.01 < conversions / clicks < 0.3

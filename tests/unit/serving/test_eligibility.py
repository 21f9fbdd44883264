from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from adserve.domain import Candidate, Pricing
from adserve.serving.catalog import CampaignState, CreativeEntry, Targeting, campaign_counts
from adserve.serving.eligibility import (
    EligibilityRequest,
    eligible_creatives,
    local_day_fraction,
    pacing_allows,
)

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)


def campaign(**overrides) -> CampaignState:
    fields = dict(
        id=1,
        advertiser_id=1,
        pricing=Pricing.CPC,
        bid=0.5,
        total_budget=None,
        daily_budget=None,
        start_at=None,
        end_at=None,
        timezone=ZoneInfo("UTC"),
        targeting=Targeting(),
        frequency_cap=None,
        frequency_window_s=None,
        spend_total=0.0,
        spend_today=0.0,
        spend_day=None,
    )
    fields.update(overrides)
    return CampaignState(**fields)


def creative(state: CampaignState, creative_id: int = 1) -> CreativeEntry:
    candidate = Candidate(creative_id, state.id, state.advertiser_id, state.pricing, state.bid)
    return CreativeEntry(creative_id, state, 300, 250, "t", "https://i", "https://l", candidate)


def verdict(state: CampaignState, **request) -> str | None:
    result = eligible_creatives([creative(state)], EligibilityRequest(now=request.pop("now", NOW), **request))
    return next(iter(result.removed), None) if not result.creatives else None


def test_schedule_edges() -> None:
    assert verdict(campaign(start_at=NOW)) is None  # starts exactly now: eligible
    assert verdict(campaign(start_at=NOW + timedelta(seconds=1))) == "schedule"
    assert verdict(campaign(end_at=NOW)) == "schedule"  # end is exclusive
    assert verdict(campaign(end_at=NOW + timedelta(seconds=1))) is None


@pytest.mark.parametrize(
    ("targeting", "request_fields", "expected"),
    [
        (Targeting(geo=frozenset({"de"})), {"geo": "DE"}, None),
        (Targeting(geo=frozenset({"de"})), {"geo": "FR"}, "geo"),
        (Targeting(geo=frozenset({"de"})), {}, "geo"),
        (Targeting(device=frozenset({"mobile"})), {"device": "mobile"}, None),
        (Targeting(device=frozenset({"mobile"})), {"device": "desktop"}, "device"),
        (Targeting(page_categories=frozenset({"shoes"})), {"page_category": "Shoes"}, None),
        (Targeting(page_categories=frozenset({"shoes"})), {"page_category": "tents"}, "page_category"),
        (Targeting(keywords=frozenset({"trail", "hiking"})), {"keywords": frozenset({"hiking"})}, None),
        (Targeting(keywords=frozenset({"trail"})), {"keywords": frozenset({"road"})}, "keywords"),
        (Targeting(segments=frozenset({"vip"})), {"segments": frozenset({"vip"})}, None),
        (Targeting(segments=frozenset({"vip"})), {}, "segments"),
        (Targeting(), {}, None),
    ],
)
def test_targeting(targeting, request_fields, expected) -> None:
    assert verdict(campaign(targeting=targeting), **request_fields) == expected


def test_total_budget_stops_before_overspending() -> None:
    assert verdict(campaign(total_budget=10.0, spend_total=9.5)) is None  # 9.5 + 0.5 bid fits
    assert verdict(campaign(total_budget=10.0, spend_total=9.6)) == "total_budget"


def test_daily_budget_counts_only_today_in_campaign_timezone() -> None:
    today = NOW.date()
    assert verdict(campaign(daily_budget=10.0, spend_today=9.9, spend_day=today)) == "daily_budget"
    # yesterday's spend does not count today
    assert verdict(campaign(daily_budget=10.0, spend_today=9.9, spend_day=today - timedelta(days=1))) is None
    # 12:00 UTC is already the next day in Auckland: a counter dated the UTC day is yesterday there
    auckland = ZoneInfo("Pacific/Auckland")
    assert verdict(campaign(daily_budget=10.0, spend_today=9.9, spend_day=today, timezone=auckland)) is None


def test_pacing_spreads_the_daily_budget() -> None:
    state = campaign(daily_budget=24.0, spend_today=12.0, spend_day=NOW.date())
    # at noon half the day is gone: allowed 24 × (0.5 + 1/24) = 13 > 12 spent
    assert pacing_allows(state, NOW)
    assert not pacing_allows(state, NOW - timedelta(hours=2))  # at 10:00 only 11 is allowed
    assert verdict(state, now=NOW - timedelta(hours=2)) == "pacing"


def test_day_fraction_follows_dst() -> None:
    berlin = campaign(timezone=ZoneInfo("Europe/Berlin"))
    # 2026-03-29 has 23 hours in Berlin: local noon (CEST) is 11 real hours after midnight (CET)
    spring = datetime(2026, 3, 29, 10, 0, tzinfo=UTC)  # 12:00 CEST
    assert local_day_fraction(spring, berlin) == pytest.approx(11 / 23)


def test_frequency_cap_counts_within_the_window() -> None:
    state = campaign(frequency_cap=2, frequency_window_s=3600)
    recent, old = NOW - timedelta(minutes=10), NOW - timedelta(hours=2)
    assert verdict(state, served={1: [recent]}) is None
    assert verdict(state, served={1: [recent, recent]}) == "frequency_cap"
    assert verdict(state, served={1: [recent, old, old]}) is None
    assert verdict(state, served={2: [recent, recent]}) is None  # another campaign's serves
    assert verdict(state, served=None) == "frequency_cap"  # unknown history: do not risk it


def test_competitive_exclusion() -> None:
    assert verdict(campaign(), excluded_campaigns=frozenset({1})) == "competitive_exclusion"


def test_rules_are_counted_per_creative_and_judged_per_campaign() -> None:
    blocked = campaign(id=7, targeting=Targeting(geo=frozenset({"us"})))
    ok = campaign(id=8)
    entries = [creative(blocked, 1), creative(blocked, 2), creative(ok, 3)]
    result = eligible_creatives(entries, EligibilityRequest(now=NOW, geo="DE"))
    assert [c.id for c in result.creatives] == [3]
    assert result.considered == 3
    assert result.removed == {"geo": 2}


def test_the_snapshots_campaign_counts_judge_interleaved_creatives_in_their_order() -> None:
    blocked = campaign(id=7, targeting=Targeting(device=frozenset({"mobile"})))
    capped = campaign(id=9, frequency_cap=1, frequency_window_s=3600)
    ok = campaign(id=8)
    entries = [
        creative(ok, 1),
        creative(blocked, 2),
        creative(capped, 3),
        creative(ok, 4),
        creative(blocked, 5),
    ]
    counts = campaign_counts(entries)
    assert [(state.id, count) for state, count in counts] == [(8, 2), (7, 2), (9, 1)]
    request = EligibilityRequest(now=NOW, device="desktop", served={9: [NOW - timedelta(minutes=5)]})
    for result in (eligible_creatives(entries, request), eligible_creatives(entries, request, counts)):
        assert [c.id for c in result.creatives] == [1, 4]
        assert result.considered == 5 and result.removed == {"device": 2, "frequency_cap": 1}
    everyone = eligible_creatives(entries, EligibilityRequest(now=NOW, device="mobile", served={}), counts)
    assert [c.id for c in everyone.creatives] == [1, 2, 3, 4, 5] and not everyone.removed


def test_the_snapshots_own_creatives_and_candidates_are_served_when_no_rule_removes_any() -> None:
    ok, blocked = campaign(id=8), campaign(id=7, targeting=Targeting(geo=frozenset({"us"})))
    entries = (creative(ok, 1), creative(blocked, 2), creative(ok, 3))
    candidates = tuple(entry.candidate for entry in entries)
    everyone = eligible_creatives(entries, EligibilityRequest(now=NOW, geo="US"), None, candidates)
    # the same objects, so what scorers and policies keep per candidate list is found by identity
    assert everyone.creatives is entries and everyone.candidates is candidates
    some = eligible_creatives(entries, EligibilityRequest(now=NOW, geo="DE"), None, candidates)
    assert [c.id for c in some.creatives] == [1, 3]
    assert some.candidates == (entries[0].candidate, entries[2].candidate)

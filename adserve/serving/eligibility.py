"""Eligibility: which creatives of a placement may be shown to this request, and why not the rest.

Pure functions over the catalogue snapshot and the user's serving history, so every rule is unit
tested without a database. Rules run in a fixed order and each removal is counted under the first
rule that removed it (the counts feed "why this ad?").

The total and daily budget rules judge committed spend: what was billed plus what served
decisions still hold in reservations (the snapshot's `CampaignState.reserved`, every process's,
and this process's own since the snapshot, `EligibilityRequest.reserved`; see
adserve/serving/budget.py). A campaign serves only while one more event at full price still fits
both. Every unexpired reservation counts against today, including those of decisions served
before midnight (for at most one token lifetime). Pacing, a smoothing rule, follows billed spend:
reservations would cancel its one-hour lead, and yesterday's would hold back today's first hour.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING

from adserve.serving.catalog import campaign_counts

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from zoneinfo import ZoneInfo

    from adserve.domain import Candidate
    from adserve.serving.catalog import CampaignState, CreativeEntry

__all__ = [
    "PACING_LEAD",
    "RULES",
    "EligibilityRequest",
    "Eligible",
    "committed_today",
    "committed_total",
    "daily_budget_left",
    "eligible_creatives",
    "local_day_fraction",
    "pacing_allows",
]

# Spend may run this share of the day ahead of an even line; without any lead the first
# impression of the day would already be "ahead".
PACING_LEAD = 1.0 / 24.0

RULES = (
    "schedule",
    "geo",
    "device",
    "page_category",
    "keywords",
    "segments",
    "total_budget",
    "daily_budget",
    "pacing",
    "frequency_cap",
    "competitive_exclusion",
)


@dataclass(frozen=True, slots=True)
class EligibilityRequest:
    now: datetime  # timezone-aware
    geo: str | None = None
    device: str | None = None
    page_category: str | None = None
    keywords: frozenset[str] = frozenset()
    segments: frozenset[str] = frozenset()
    # campaign id -> serving times for this user; None = unknown (Postgres away): capped
    # campaigns are then skipped rather than risk exceeding their cap.
    served: Mapping[int, Sequence[datetime]] | None = field(default_factory=dict)
    excluded_campaigns: frozenset[int] = frozenset()
    # campaign id -> this process's reservations not yet in the catalogue snapshot
    reserved: Mapping[int, float] = field(default_factory=dict)
    # time zone -> (local date, share of the local day gone) at `now`, filled as rules need them:
    # campaigns share a few zones, and the conversion is most of a budget rule's cost
    local_days: dict[ZoneInfo, tuple[date, float]] = field(default_factory=dict)


@dataclass(slots=True)
class Eligible:
    creatives: Sequence[CreativeEntry]
    considered: int
    removed: Counter[str]
    # the creatives' candidates, in order: the snapshot's own tuple where no rule removed any
    candidates: tuple[Candidate, ...] | None = None

    def __post_init__(self) -> None:
        if self.candidates is None:
            self.candidates = tuple(creative.candidate for creative in self.creatives)


@lru_cache(maxsize=4096)
def _day_bounds(timezone: ZoneInfo, day: date) -> tuple[datetime, datetime]:
    """A local day's first and last instant in UTC. Day length follows DST changes (23 or 25
    hours); subtracting aware datetimes of one zone would give wall-clock differences."""
    start = datetime.combine(day, time(0), tzinfo=timezone).astimezone(UTC)
    end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=timezone).astimezone(UTC)
    return start, end


def local_day(now: datetime, timezone: ZoneInfo) -> tuple[date, float]:
    """The local date at `now` in `timezone` and the share of that day gone."""
    day = now.astimezone(timezone).date()
    start, end = _day_bounds(timezone, day)
    return day, (now - start) / (end - start)


def local_day_fraction(now: datetime, campaign: CampaignState) -> float:
    return local_day(now, campaign.timezone)[1]


def _billed_on(campaign: CampaignState, day: date) -> float:
    return campaign.spend_today if campaign.spend_day == day else 0.0


def spend_today(campaign: CampaignState, now: datetime) -> float:
    """Today's spend in the campaign's own time zone; yesterday's counter does not carry over."""
    return _billed_on(campaign, now.astimezone(campaign.timezone).date())


def committed_total(campaign: CampaignState, pending: float = 0.0) -> float:
    """Billed spend plus reservations (the snapshot's and `pending`, this process's newer ones)."""
    return campaign.spend_total + campaign.reserved + pending


def committed_today(campaign: CampaignState, now: datetime, pending: float = 0.0) -> float:
    """Today's billed spend plus every unexpired reservation (all count against today)."""
    return _committed_on(campaign, now.astimezone(campaign.timezone).date(), pending)


def _committed_on(campaign: CampaignState, day: date, pending: float) -> float:
    return _billed_on(campaign, day) + campaign.reserved + pending


def daily_budget_left(campaign: CampaignState, now: datetime, pending: float = 0.0) -> float | None:
    if campaign.daily_budget is None:
        return None
    return campaign.daily_budget - committed_today(campaign, now, pending)


def pacing_allows(campaign: CampaignState, now: datetime) -> bool:
    """Even pacing: by a given moment, at most that share of the day's budget (plus a lead) billed."""
    if campaign.daily_budget is None:
        return True
    return _paced(campaign, *local_day(now, campaign.timezone))


def _paced(campaign: CampaignState, day: date, day_gone: float) -> bool:
    assert campaign.daily_budget is not None
    return _billed_on(campaign, day) < campaign.daily_budget * min(1.0, day_gone + PACING_LEAD)


def _local_day_of(request: EligibilityRequest, timezone: ZoneInfo) -> tuple[date, float]:
    """`local_day` at the request's time, once per zone per request."""
    held = request.local_days.get(timezone)
    if held is None:
        held = request.local_days[timezone] = local_day(request.now, timezone)
    return held


def _cap_reached(campaign: CampaignState, request: EligibilityRequest) -> bool:
    if not campaign.frequency_cap or not campaign.frequency_window_s:
        return False
    if request.served is None:
        return True
    times = request.served.get(campaign.id)
    if not times:  # most capped campaigns in play never served this user: no window to work out
        return False
    since = request.now - timedelta(seconds=campaign.frequency_window_s)
    shown = sum(1 for ts in times if ts > since)
    return shown >= campaign.frequency_cap


def _first_failing_rule(campaign: CampaignState, request: EligibilityRequest) -> str | None:
    now = request.now
    if (campaign.start_at and now < campaign.start_at) or (campaign.end_at and now >= campaign.end_at):
        return "schedule"
    targeting = campaign.targeting
    if targeting.geo and (request.geo or "").lower() not in targeting.geo:
        return "geo"
    if targeting.device and (request.device or "").lower() not in targeting.device:
        return "device"
    if targeting.page_categories and (request.page_category or "").lower() not in targeting.page_categories:
        return "page_category"
    if targeting.keywords and not targeting.keywords & request.keywords:
        return "keywords"
    if targeting.segments and not targeting.segments & request.segments:
        return "segments"
    pending = request.reserved.get(campaign.id, 0.0)
    if (
        campaign.total_budget is not None
        and committed_total(campaign, pending) + campaign.cost_per_event > campaign.total_budget
    ):
        return "total_budget"
    if campaign.daily_budget is not None:
        # daily_budget_left and pacing_allows at the request's local day in the campaign's zone
        day, day_gone = _local_day_of(request, campaign.timezone)
        if campaign.daily_budget - _committed_on(campaign, day, pending) < campaign.cost_per_event:
            return "daily_budget"
        if not _paced(campaign, day, day_gone):
            return "pacing"
    if _cap_reached(campaign, request):
        return "frequency_cap"
    if campaign.id in request.excluded_campaigns:
        return "competitive_exclusion"
    return None


def eligible_creatives(
    creatives: Sequence[CreativeEntry],
    request: EligibilityRequest,
    campaigns: Sequence[tuple[CampaignState, int]] | None = None,
    candidates: tuple[Candidate, ...] | None = None,
) -> Eligible:
    """Creatives (already of the placement's size and active) that pass every rule, in their order.

    Rules are per campaign, so each campaign is judged once however many creatives it has.
    `campaigns` is `campaign_counts(creatives)` and `candidates` the creatives' candidates, both
    kept per size by the catalogue snapshot; when every campaign passes (the common case) the
    snapshot's creatives and candidates are served as they are, without a walk over them.
    """
    removed: Counter[str] = Counter()
    failed: set[int] = set()
    for campaign, count in campaigns if campaigns is not None else campaign_counts(creatives):
        failing = _first_failing_rule(campaign, request)
        if failing is not None:
            removed[failing] += count
            failed.add(campaign.id)
    if failed:
        kept = [creative for creative in creatives if creative.campaign.id not in failed]
        return Eligible(creatives=kept, considered=len(creatives), removed=removed)
    return Eligible(creatives=creatives, considered=len(creatives), removed=removed, candidates=candidates)

"""The decision pipeline: eligible → score → choose → log → signed URLs.

One request may ask for several placements of a page; a campaign chosen for one placement is
excluded from the others (competitive exclusion). Each choice is logged with everything needed to
learn from it later: context, candidates, their scores, the pmf, the chosen creative and its
propensity, and the scorer and policy versions.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np

from adserve.db.rows import make_row
from adserve.domain import BehaviourEvent, DecisionContext, EventType, Policy, Scorer, expected_value
from adserve.errors import NotFound
from adserve.serving.budget import LocalReservations, expected_cost
from adserve.serving.eligibility import EligibilityRequest, eligible_creatives
from adserve.serving.schemas import (
    AdCreative,
    DecisionRequest,
    DecisionResponse,
    Diagnostics,
    Explanation,
    InfluentialEvent,
    PlacementDecision,
    Reason,
)
from adserve.serving.scoring import empirical_attribution
from adserve.signing.tokens import TokenKind, TrackingClaims

if TYPE_CHECKING:
    import asyncpg

    from adserve.serving.catalog import CatalogCache
    from adserve.signing.identity import UserKeys
    from adserve.signing.tokens import TrackingSigner

__all__ = ["DecisionPipeline", "UserState", "load_user_state"]

log = logging.getLogger(__name__)

MAX_CAP_WINDOW = timedelta(days=30)
EVENT_TYPES = {member.value: member for member in EventType}  # a dict lookup; Enum() is slow

HISTORY_SQL = """
SELECT event_type, ts, item_id, category, price, query FROM user_events
WHERE user_id = $1 ORDER BY ts DESC LIMIT $2
"""

SERVED_SQL = """
SELECT campaign_id, ts FROM decisions
WHERE user_id = $1 AND ts > $2 AND campaign_id = ANY($3::bigint[])
"""


@dataclass(frozen=True, slots=True)
class UserState:
    history: tuple[BehaviourEvent, ...]
    served: dict[int, list[datetime]] | None  # None: unknown (Postgres unreachable)


async def load_user_state(
    pool: asyncpg.Pool,
    user_key: str,
    with_history: bool,
    history_length: int,
    capped_campaigns: list[int],
    since: datetime,
) -> UserState:
    """The user's recent behaviour (oldest first) and when each capped campaign was served."""
    try:
        async with pool.acquire(timeout=1.0) as connection:
            rows = await connection.fetch(HISTORY_SQL, user_key, history_length) if with_history else []
            served_rows = (
                await connection.fetch(SERVED_SQL, user_key, since, capped_campaigns)
                if capped_campaigns
                else []
            )
    except Exception:
        log.warning("user state unavailable; serving without history and skipping capped campaigns")
        return UserState(history=(), served=None)
    history = tuple(
        BehaviourEvent(
            event_type=EVENT_TYPES[row["event_type"]],
            ts=row["ts"].timestamp(),
            item_id=row["item_id"],
            category=row["category"],
            price=None if row["price"] is None else float(row["price"]),
            query=row["query"],
        )
        for row in reversed(rows)
    )
    served: dict[int, list[datetime]] = {}
    for row in served_rows:
        served.setdefault(row["campaign_id"], []).append(row["ts"])
    return UserState(history=history, served=served)


def _loggable_context(request: DecisionRequest, hour: int) -> dict[str, Any]:
    """Context features kept with the decision; the page URL without its query (which may carry
    personal data) and without the referrer."""
    context = request.context
    page = urlsplit(context.page_url) if context.page_url else None
    return {
        "page_path": f"{page.netloc}{page.path}"[:300] if page else None,
        "page_category": context.page_category,
        "keywords": context.keywords,
        "device": context.device,
        "geo": context.geo,
        "segments": context.segments,
        "hour": hour,
        "consent": request.consent,
    }


class DecisionPipeline:
    def __init__(
        self,
        *,
        catalog: CatalogCache,
        scorer: Scorer,
        policy: Policy,
        pool: asyncpg.Pool,
        writer: Any,
        signer: TrackingSigner,
        user_keys: UserKeys,
        public_url: str,
        history_length: int,
        rng: np.random.Generator | None = None,
    ) -> None:
        self.catalog = catalog
        self.scorer = scorer
        self.policy = policy
        self.pool = pool
        self.writer = writer
        self.signer = signer
        self.user_keys = user_keys
        self.public_url = public_url.rstrip("/")
        self.history_length = history_length
        self.rng = rng or np.random.default_rng()
        self.reservations = LocalReservations()  # budget held by decisions newer than the snapshot

    async def decide(self, request: DecisionRequest, now: datetime | None = None) -> DecisionResponse:
        now = now or datetime.now(UTC)
        snapshot = self.catalog.catalog
        placements = []
        for key in request.placements:
            placement = snapshot.placements.get(key)
            if placement is None:
                raise NotFound(f"placement {key!r} not found")
            placements.append(placement)

        user_key = self.user_keys.key_for(request.user_id, request.consent, request.session_id)
        capped = sorted(
            {
                entry.campaign.id
                for placement in placements
                for entry in snapshot.creatives_for(placement)
                if entry.campaign.frequency_cap
            }
        )
        state = await load_user_state(
            self.pool, user_key, request.consent, self.history_length, capped, now - MAX_CAP_WINDOW
        )
        context = request.context
        hour = now.hour
        eligibility = EligibilityRequest(
            now=now,
            geo=context.geo,
            device=context.device,
            page_category=context.page_category,
            keywords=frozenset(k.lower() for k in context.keywords),
            segments=frozenset(context.segments),
            served=state.served,
            reserved=self.reservations.since(snapshot.loaded_at),
        )
        request_id = uuid.uuid4()
        logged_context = _loggable_context(request, hour)
        decisions: list[PlacementDecision] = []
        rows: list[tuple] = []
        chosen_campaigns: set[int] = set()
        for placement in placements:
            eligible = eligible_creatives(
                snapshot.creatives_for(placement),
                replace(eligibility, excluded_campaigns=frozenset(chosen_campaigns)),
            )
            if not eligible.creatives:
                decisions.append(
                    PlacementDecision(
                        placement=placement.key,
                        decision_id=None,
                        creative=None,
                        impression_url=None,
                        click_url=None,
                    )
                )
                continue
            decision_context = DecisionContext(
                placement=placement.key,
                now=now.timestamp(),
                page_category=context.page_category,
                keywords=tuple(context.keywords),
                device=context.device,
                geo=context.geo,
                hour=hour,
                position=placement.position,
                user_key=user_key if request.consent else None,
                history=state.history,
            )
            candidates = [entry.candidate for entry in eligible.creatives]
            scores = np.asarray(self.scorer.score(decision_context, candidates), dtype=float)
            choice = self.policy.choose(decision_context, candidates, scores, self.rng)
            chosen = eligible.creatives[choice.index]
            chosen_campaigns.add(chosen.campaign.id)
            reserved = expected_cost(chosen.campaign, scores[choice.index])
            self.reservations.add(chosen.campaign.id, reserved)
            decision_id = uuid.uuid4()
            rows.append(
                make_row(
                    "decisions",
                    id=decision_id,
                    ts=now,
                    request_id=request_id,
                    placement_id=placement.id,
                    user_id=user_key,
                    context={
                        **logged_context,
                        "eligibility": {"considered": eligible.considered, "removed": dict(eligible.removed)},
                    },
                    candidate_ids=[c.creative_id for c in candidates],
                    scores=[float(s) for s in scores],
                    pmf=list(choice.pmf),
                    chosen_creative_id=chosen.id,
                    campaign_id=chosen.campaign.id,
                    propensity=choice.propensity,
                    explored=choice.explored,
                    scorer_version=self.scorer.version,
                    policy_version=self.policy.version,
                    reserved=reserved,
                )
            )
            decisions.append(
                self._placement_decision(
                    placement,
                    chosen,
                    decision_id,
                    user_key,
                    now,
                    choice,
                    scores,
                    eligible,
                    request.explain,
                    decision_context,
                )
            )
        if rows:
            await self.writer.write("decisions", rows)
        return DecisionResponse(request_id=request_id, decisions=decisions)

    def _influential_events(
        self, context: DecisionContext, candidate, top: int = 5
    ) -> list[InfluentialEvent]:
        """The user's recent events that most moved this candidate's score (gradient × input for
        the interest model; the matching events behind the empirical scorer's lift)."""
        if not context.history:
            return []
        attribution = getattr(self.scorer, "attribution", None)
        if attribution is not None:
            weighted = [(a.event, a.gradient_x_input) for a in attribution(context, candidate)]
        else:
            weighted = empirical_attribution(context, candidate)
        ranked = sorted(weighted, key=lambda pair: abs(pair[1]), reverse=True)[:top]
        return [
            InfluentialEvent(
                event_type=str(event.event_type),
                item_id=event.item_id,
                category=event.category,
                seconds_before=round(context.now - event.ts, 1),
                weight=round(float(weight), 6),
            )
            for event, weight in ranked
            if weight
        ]

    def _placement_decision(
        self, placement, chosen, decision_id, user_key, now, choice, scores, eligible, explain, context
    ):
        cost_micros = round(chosen.campaign.cost_per_event * 1_000_000)
        issued = int(now.timestamp())

        def url(kind: TokenKind, path: str) -> str:
            token = self.signer.sign(
                TrackingClaims(
                    kind=kind,
                    decision_id=decision_id,
                    creative_id=chosen.id,
                    campaign_id=chosen.campaign.id,
                    placement_id=placement.id,
                    user_key=user_key,
                    issued_at=issued,
                    pricing=chosen.campaign.pricing,
                    cost_micros=cost_micros,
                )
            )
            return f"{self.public_url}/{path}/{token}"

        explanation = None
        if explain:
            # Built in full here; the controller drops `diagnostics` for callers without the key.
            p_click = float(scores[choice.index])
            influential = self._influential_events(context, chosen.candidate)
            explanation = Explanation(
                # what raised the score, once each: the person's reasons in their own terms
                reasons=list(
                    dict.fromkeys(
                        Reason(event_type=e.event_type, category=e.category, item_id=e.item_id)
                        for e in influential
                        if e.weight > 0
                    )
                ),
                diagnostics=Diagnostics(
                    eligible=len(eligible.creatives),
                    considered=eligible.considered,
                    removed_by_rule=dict(eligible.removed),
                    p_click=p_click,
                    bid=chosen.campaign.bid,
                    pricing=chosen.campaign.pricing.value,
                    expected_value=float(expected_value(chosen.candidate, p_click)),
                    pmf=[float(p) for p in choice.pmf],
                    propensity=float(choice.propensity),
                    explored=bool(choice.explored),
                    scorer_version=str(self.scorer.version),
                    policy_version=str(self.policy.version),
                    influential_events=influential,
                ),
            )
        return PlacementDecision(
            placement=placement.key,
            decision_id=decision_id,
            creative=AdCreative(
                id=chosen.id,
                campaign_id=chosen.campaign.id,
                title=chosen.title,
                image_url=chosen.image_url,
                width=chosen.width,
                height=chosen.height,
            ),
            impression_url=url(TokenKind.IMPRESSION, "i"),
            click_url=url(TokenKind.CLICK, "c"),
            explanation=explanation,
        )

"""The decision pipeline, one step per stage:

    placements → user state → eligibility → scores → choice → log row → response

One request may ask for several placements of a page; a campaign chosen for one placement is
excluded from the others (competitive exclusion). Each choice is logged with everything needed to
learn from it later: context, candidates, their scores, the pmf, the chosen creative and its
propensity, and the scorer and policy versions.

What a decision costs: the user state comes from memory (`user_state.py`, kept true by Postgres
notifications), the catalogue, budgets and pacing from the in-memory snapshot and this process's
reservations, scoring runs on the event loop only when it is a few matrix products against
cached state and otherwise in a worker thread (`MicroBatcher`), and the log row is queued to the
writer without waiting (see `_log` for what that guarantees).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np

from adserve.db.rows import make_row
from adserve.domain import DecisionContext, Policy, Scorer, expected_value
from adserve.errors import NotFound
from adserve.learning.empirical_ctr import empirical_attribution
from adserve.metrics import observe_decision
from adserve.serving.budget import LocalReservations, expected_cost
from adserve.serving.eligibility import EligibilityRequest, Eligible, eligible_creatives
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
from adserve.serving.user_state import UserState
from adserve.signing.tokens import TokenKind, TrackingClaims

if TYPE_CHECKING:
    from collections.abc import Sequence

    from adserve.domain import Candidate, Choice
    from adserve.serving.catalog import Catalog, CatalogCache, CreativeEntry, PlacementEntry
    from adserve.serving.user_state import UserStateCache
    from adserve.signing.identity import UserKeys
    from adserve.signing.tokens import TrackingSigner

__all__ = ["DecisionPipeline", "Served"]

log = logging.getLogger(__name__)

MAX_CAP_WINDOW = timedelta(days=30)


@dataclass(frozen=True, slots=True)
class Served:
    """One placement's choice, with what the log row and the response are made from."""

    placement: PlacementEntry
    eligible: Eligible
    chosen: CreativeEntry
    choice: Choice
    scores: np.ndarray
    context: DecisionContext
    decision_id: uuid.UUID
    scorer_version: str  # of the scorer that gave `scores`, read before scoring (a swap may follow)

    @property
    def p_click(self) -> float:
        return float(self.scores[self.choice.index])


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
        user_states: UserStateCache,
        writer: Any,
        signer: TrackingSigner,
        user_keys: UserKeys,
        public_url: str,
        rng: np.random.Generator | None = None,
    ) -> None:
        self.catalog = catalog
        self.scorer = scorer
        self.policy = policy
        self.user_states = user_states
        self.writer = writer
        self.signer = signer
        self.user_keys = user_keys
        self.public_url = public_url.rstrip("/")
        self.rng = rng or np.random.default_rng()
        self.reservations = LocalReservations()  # budget held by decisions newer than the snapshot
        self._batcher: Any = None  # MicroBatcher of the scorer that needs it, made on first use
        if user_states is not None:
            user_states.prepare = self._prepare_user

    async def close(self) -> None:
        if self._batcher is not None:
            await self._batcher.close()

    async def decide(self, request: DecisionRequest, now: datetime | None = None) -> DecisionResponse:
        now = now or datetime.now(UTC)
        snapshot = self.catalog.catalog
        placements = self._placements(snapshot, request)
        user_key = self.user_keys.key_for(request.user_id, request.consent, request.session_id)
        state = await self._user_state(snapshot, placements, user_key, request.consent, now)
        eligibility = self._eligibility_request(request, state, snapshot, now)
        request_id = uuid.uuid4()
        logged_context = _loggable_context(request, now.hour)
        decisions: list[PlacementDecision] = []
        rows: list[tuple] = []
        capped_serves: list[tuple[str, int, datetime]] = []
        chosen_campaigns: set[int] = set()
        for placement in placements:
            if chosen_campaigns:  # (dataclasses.replace costs more than the rules of one campaign)
                eligibility = replace(eligibility, excluded_campaigns=frozenset(chosen_campaigns))
            eligible = eligible_creatives(
                snapshot.creatives_for(placement),
                eligibility,
                snapshot.campaigns_for(placement),
                snapshot.candidates_for(placement),
            )
            if not eligible.creatives:
                observe_decision("no_eligible_creative", eligible.removed)
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
            context = self._decision_context(request, placement, user_key, state, now)
            served = await self._choose(placement, eligible, context)
            chosen_campaigns.add(served.chosen.campaign.id)
            reserved = expected_cost(served.chosen.campaign, served.p_click)
            self.reservations.add(served.chosen.campaign.id, reserved)
            if served.chosen.campaign.frequency_cap:
                capped_serves.append((user_key, served.chosen.campaign.id, now))
                self.user_states.record_serve(user_key, served.chosen.campaign.id, now)
            rows.append(self._log_row(served, request_id, user_key, logged_context, reserved, now))
            decisions.append(self._placement_decision(served, user_key, now, request.explain))
        await self._log(rows, capped_serves)
        return DecisionResponse(request_id=request_id, decisions=decisions)

    async def _prepare_user(self, user_key: str, state: UserState) -> None:
        """Encodes a user whose behaviour just changed, off the event loop, so their next decision
        is numpy work only (the scorer keeps the encoding keyed by the new history)."""
        prepare = getattr(self.scorer, "prepare_user", None)
        if prepare is not None:
            await asyncio.to_thread(prepare, user_key, state.history)

    # --- steps --------------------------------------------------------------------------------------

    @staticmethod
    def _placements(snapshot: Catalog, request: DecisionRequest) -> list[PlacementEntry]:
        placements = []
        for key in request.placements:
            placement = snapshot.placements.get(key)
            if placement is None:
                raise NotFound(f"placement {key!r} not found")
            placements.append(placement)
        return placements

    async def _user_state(
        self, snapshot: Catalog, placements: list[PlacementEntry], user_key: str, consent: bool, now: datetime
    ) -> UserState:
        """The user's recent behaviour (with consent) and serves of the capped campaigns in play."""
        capped = sorted(set().union(*(snapshot.capped_campaigns_for(placement) for placement in placements)))
        return await self.user_states.get(user_key, consent, capped, now - MAX_CAP_WINDOW)

    def _eligibility_request(
        self, request: DecisionRequest, state: UserState, snapshot: Catalog, now: datetime
    ) -> EligibilityRequest:
        context = request.context
        return EligibilityRequest(
            now=now,
            geo=context.geo,
            device=context.device,
            page_category=context.page_category,
            keywords=frozenset(k.lower() for k in context.keywords),
            segments=frozenset(context.segments),
            served=state.served,
            reserved=self.reservations.since(snapshot.loaded_at),
        )

    @staticmethod
    def _decision_context(
        request: DecisionRequest, placement: PlacementEntry, user_key: str, state: UserState, now: datetime
    ) -> DecisionContext:
        context = request.context
        return DecisionContext(
            placement=placement.key,
            now=now.timestamp(),
            page_category=context.page_category,
            keywords=tuple(context.keywords),
            device=context.device,
            geo=context.geo,
            hour=now.hour,
            position=placement.position,
            user_key=user_key if request.consent else None,
            history=state.history,
        )

    async def _choose(
        self, placement: PlacementEntry, eligible: Eligible, context: DecisionContext
    ) -> Served:
        candidates = eligible.candidates
        started = time.perf_counter()
        scorer = self.scorer
        scorer_version = str(scorer.version)
        scores = await self._scores(scorer, context, candidates)
        scored = time.perf_counter()
        choice = self.policy.choose(context, candidates, scores, self.rng, scorer_version=scorer_version)
        observe_decision(
            "served",
            eligible.removed,
            explored=choice.explored,
            score_s=scored - started,
            choose_s=time.perf_counter() - scored,
        )
        return Served(
            placement=placement,
            eligible=eligible,
            chosen=eligible.creatives[choice.index],
            choice=choice,
            scores=scores,
            context=context,
            decision_id=uuid.uuid4(),
            scorer_version=scorer_version,
        )

    async def _scores(
        self, scorer: Scorer, context: DecisionContext, candidates: Sequence[Candidate]
    ) -> np.ndarray:
        """Scores on the event loop when that is cheap (cached user and creatives: numpy only);
        otherwise in a worker thread, grouped with concurrent requests, so one forward pass
        (a new user's encoding, a new model's creative vectors) never stalls other requests."""
        prepared = getattr(scorer, "prepared", None)
        if prepared is None or prepared(context, candidates):
            return np.asarray(scorer.score(context, candidates), dtype=float)
        if self._batcher is None or self._batcher.scorer is not scorer:
            from adserve.interest.scorer import MicroBatcher  # torch: only when an interest model serves

            if self._batcher is not None:
                await self._batcher.close()
            self._batcher = MicroBatcher(scorer, max_wait_s=0.0)
        return np.asarray(await self._batcher.score(context, candidates), dtype=float)

    def _log_row(
        self,
        served: Served,
        request_id: uuid.UUID,
        user_key: str,
        logged_context: dict[str, Any],
        reserved: float,
        now: datetime,
    ) -> tuple:
        eligible = served.eligible
        return make_row(
            "decisions",
            id=served.decision_id,
            ts=now,
            request_id=request_id,
            placement_id=served.placement.id,
            user_id=user_key,
            context={
                **logged_context,
                "eligibility": {"considered": eligible.considered, "removed": dict(eligible.removed)},
            },
            candidate_ids=[candidate.creative_id for candidate in eligible.candidates],
            scores=served.scores,  # the float64 array: written by the binary COPY as it is
            pmf=list(served.choice.pmf),
            chosen_creative_id=served.chosen.id,
            campaign_id=served.chosen.campaign.id,
            propensity=served.choice.propensity,
            explored=served.choice.explored,
            scorer_version=served.scorer_version,
            policy_version=self.policy.version,
            reserved=reserved,
        )

    async def _log(self, rows: list[tuple], capped_serves: list[tuple[str, int, datetime]]) -> None:
        """The decision log's contract (README "What a served decision's log row is guaranteed"):

        - Postgres reachable: the rows are queued and the response does not wait; the writer
          commits them within `writer.flush_ms` (plus the commit), or spools them if Postgres
          drops meanwhile. They are lost only if the process dies inside that window.
        - A decision that serves a frequency-capped campaign first tells every other serving
          process of the serve (one NOTIFY, shared with the serves of concurrent decisions), so
          a cap holds across processes from the moment this one answers; its row follows as
          above. Where the notification cannot be sent, it waits for the row's commit instead,
          whose own notification tells them.
        - Postgres unreachable: the response waits for the fsync'd spool, and a full spool is a
          503 with nothing served (no ad without its row).
        """
        if not rows:
            return
        if not self.writer.online or (
            capped_serves and not await self.user_states.publish_serves(capped_serves)
        ):
            await self.writer.write("decisions", rows)
        else:
            self.writer.write_nowait("decisions", rows)

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
        self, served: Served, user_key: str, now: datetime, explain: bool
    ) -> PlacementDecision:
        chosen, choice, placement = served.chosen, served.choice, served.placement
        cost_micros = round(chosen.campaign.cost_per_event * 1_000_000)
        issued = int(now.timestamp())

        def url(kind: TokenKind, path: str) -> str:
            token = self.signer.sign(
                TrackingClaims(
                    kind=kind,
                    decision_id=served.decision_id,
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
            eligible = served.eligible
            p_click = served.p_click
            influential = self._influential_events(served.context, chosen.candidate)
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
                    scorer_version=served.scorer_version,
                    policy_version=str(self.policy.version),
                    influential_events=influential,
                ),
            )
        return PlacementDecision(
            placement=placement.key,
            decision_id=served.decision_id,
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

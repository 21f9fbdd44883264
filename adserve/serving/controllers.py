"""Public endpoints: decisions, the tag's GET variant, tracking pixels and clicks, behaviour events.

A site's erasure of a user (``DELETE /v1/users/{id}``, keyed) is in adserve/admin/privacy.py."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

import msgspec
from litestar import Request, Response, Router, get, post
from litestar.exceptions import ClientException, NotFoundException
from litestar.params import FromQuery, JSONBody, PathParameter, QueryParameter
from litestar.response import Redirect

from adserve.admin.auth import Caller, Role, authenticate
from adserve.events.ingest import EventIngest
from adserve.events.schemas import EVENT_BATCH_MAX_BYTES, EventBatch, EventsAccepted
from adserve.events.tracking import Tracker
from adserve.serving.pipeline import DecisionPipeline
from adserve.serving.recommendations import Recommendations, recommend
from adserve.serving.schemas import DecisionRequest, DecisionResponse, PageContext, PlacementDecision
from adserve.signing.tokens import TokenError

if TYPE_CHECKING:
    from adserve.serving.catalog import Catalog

__all__ = ["serving_router"]

# A 1×1 transparent GIF: the impression answer an <img> pixel can render.
PIXEL_GIF = bytes.fromhex(
    "47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b"
)
Token = Annotated[str, PathParameter(max_length=512, pattern=r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")]
NO_STORE = {"Cache-Control": "no-store"}


def pipeline_of(request: Request) -> DecisionPipeline:
    return request.app.state.pipeline


async def _explain_caller(request: Request) -> Caller | None:
    """The key behind an `explain` request, if it sent one (a bad key is a 401, not a silent
    downgrade to the public explanation)."""
    header = request.headers.get("authorization")
    if not header:
        return None
    async with request.app.state.sessionmaker() as session:
        return await authenticate(session, header)


def _sees_diagnostics(caller: Caller | None, decision: PlacementDecision, catalog: Catalog) -> bool:
    """Admins see every decision's diagnostics; a manager only those that chose its own ad."""
    if caller is None or decision.creative is None:
        return False
    if caller.role is Role.ADMIN:
        return True
    entry = catalog.creatives.get(decision.creative.id)
    return (
        caller.role is Role.MANAGER
        and entry is not None
        and entry.campaign.advertiser_id == caller.advertiser_id
    )


def _public_explanations(
    response: DecisionResponse, caller: Caller | None, catalog: Catalog
) -> DecisionResponse:
    decisions = [
        decision
        if decision.explanation is None or _sees_diagnostics(caller, decision, catalog)
        else msgspec.structs.replace(
            decision, explanation=msgspec.structs.replace(decision.explanation, diagnostics=None)
        )
        for decision in response.decisions
    ]
    return msgspec.structs.replace(response, decisions=decisions)


@post("/v1/decisions", status_code=200, tags=["serving"], security=[{}, {"apiKey": []}])
async def decide(request: Request, data: JSONBody[DecisionRequest]) -> DecisionResponse:
    """Chooses one creative per placement of a page view; `creative: null` when nothing is eligible.

    `"explain": true` adds, per placement, the user's own events that made the ad relevant
    (`reasons`). Bids, scores, the pmf and versions (`diagnostics`) need an admin key, or a
    manager key for decisions that chose the manager's own ads.
    """
    caller = await _explain_caller(request) if data.explain else None
    response = await pipeline_of(request).decide(data)
    if not data.explain:
        return response
    return _public_explanations(response, caller, request.app.state.catalog.catalog)


@get("/v1/ad", tags=["serving"])
async def ad_for_tag(
    request: Request,
    placement: Annotated[
        str, QueryParameter(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    ],
    uid: Annotated[str, QueryParameter(min_length=1, max_length=200, pattern=r"^[^\x00]+$")],
    consent: FromQuery[bool] = False,
    page_category: Annotated[str | None, QueryParameter(max_length=200, pattern=r"^[^\x00]*$")] = None,
    device: FromQuery[Literal["desktop", "mobile", "tablet"] | None] = None,
    geo: Annotated[str | None, QueryParameter(max_length=8, pattern=r"^[A-Za-z-]*$")] = None,
) -> PlacementDecision:
    """The same decision for one placement, as a GET (for tags that cannot POST)."""
    body = DecisionRequest(
        user_id=uid,
        placements=[placement],
        consent=consent,
        context=PageContext(page_category=page_category, device=device, geo=geo),
    )
    response = await pipeline_of(request).decide(body)
    return response.decisions[0]


@get("/i/{token:str}", tags=["tracking"], media_type="image/gif")
async def impression(request: Request, token: Token) -> Response[bytes]:
    """Records the impression of a served decision (once; repeats are harmless)."""
    tracker: Tracker = request.app.state.tracker
    try:
        await tracker.impression(token)
    except TokenError as error:
        raise ClientException(f"impression token {error.reason}") from error
    return Response(PIXEL_GIF, media_type="image/gif", headers=NO_STORE)


@get("/c/{token:str}", tags=["tracking"], status_code=302)
async def click(request: Request, token: Token) -> Redirect:
    """Records the click and redirects to the creative's landing URL (never one from the request)."""
    tracker: Tracker = request.app.state.tracker
    outcome = await tracker.click(token, request.headers.get("user-agent"))
    if outcome.landing_url is None:
        if outcome.reason == "tampered":
            raise ClientException("click token tampered")
        raise NotFoundException("the creative of this click no longer exists")
    return Redirect(outcome.landing_url, status_code=302, headers=NO_STORE)


@post("/v1/events", status_code=202, tags=["events"], request_max_body_size=EVENT_BATCH_MAX_BYTES)
async def ingest_events(request: Request, data: JSONBody[EventBatch]) -> EventsAccepted:
    """Stores a batch (≤ 500) of behaviour events; idempotent by event id. The body limit follows
    from the batch maximum (4 KiB an event); a larger body is a 413 that states the limit."""
    ingest: EventIngest = request.app.state.ingest
    return await ingest.ingest(data)


@get("/v1/recommendations", tags=["serving"])
async def recommendations(
    request: Request,
    user_id: Annotated[str, QueryParameter(min_length=1, max_length=200, pattern=r"^[^\x00]+$")],
    k: Annotated[int, QueryParameter(ge=1, le=100)] = 10,
    consent: FromQuery[bool] = False,
) -> Recommendations:
    """Top-k products for the user from the next-item head, excluding what they bought."""
    state = request.app.state
    user_key = state.pipeline.user_keys.consented(user_id) if consent else None
    return await recommend(state.pool, state.user_states, state.models.interest, user_key, k)


serving_router = Router(
    path="/",
    route_handlers=[
        decide,
        ad_for_tag,
        impression,
        click,
        ingest_events,
        recommendations,
    ],
)

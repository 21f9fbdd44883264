"""Second paragraph: a full spool answered 202 with `"durability": "dropped"` (not in the schema),
and decisions, impressions and clicks ignored the writer's outcome: an ad was served, a pixel
answered and a click redirected with no row kept anywhere. When a row can be neither committed
nor spooled the request is a problem+json 503 with `Retry-After`, and nothing is served."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest

from adserve.domain import Pricing
from adserve.events.writer import LogWriter
from adserve.settings import WriterSettings
from adserve.signing.tokens import TokenKind, TrackingClaims
from tests.integration.events.rows import UNREACHABLE_URL
from tests.integration.serving.catalog_builder import CatalogBuilder, wait_for_placement
from tests.integration.serving.test_tracking import BROWSER, path_of


@pytest.fixture
async def placement(client, sessionmaker) -> tuple[str, int, int, int]:
    """A placement with one eligible CPC ad, known to the serving snapshot: (key, placement id,
    campaign id, creative id)."""
    async with sessionmaker() as session:
        builder = CatalogBuilder(session)
        campaign_id = await builder.campaign("full spool", bid=0.5)
        key = await builder.placement("full-spool")
    await wait_for_placement(client, key)
    built = builder.built
    return key, built.placements["full-spool"], campaign_id, built.creatives["full spool#0"]


@pytest.fixture
async def full_spool(client, placement, tmp_path):
    """The app's log writer, for this test, one that cannot reach Postgres and has no spool room."""
    state = client.app.state
    users = [state, state.pipeline, state.tracker, state.ingest]
    original = state.writer

    async def start() -> LogWriter:
        writer = LogWriter(UNREACHABLE_URL, WriterSettings(spool_max_bytes=1), tmp_path / "full")
        await writer.start()
        return writer

    writer = await asyncio.to_thread(client.blocking_portal.call, start)
    for user in users:
        user.writer = writer
    try:
        yield writer
    finally:
        for user in users:
            user.writer = original
        await asyncio.to_thread(client.blocking_portal.call, writer.close)


def assert_unavailable(response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert int(response.headers["retry-after"]) > 0
    body = response.json()
    assert body["status"] == 503 and "spool" in body["detail"]


async def test_events_are_a_503_not_accepted(client, full_spool) -> None:
    event = {
        "event_id": str(uuid.uuid4()),
        "user_id": "full-spool-shopper",
        "type": "product_view",
        "item_id": "sku-1",
        "ts": datetime.now(UTC).isoformat(),
    }
    response = await client.post("/v1/events", json={"consent": True, "events": [event]})
    assert_unavailable(response)


async def test_no_decision_impression_or_click_without_its_row(client, placement, full_spool) -> None:
    key, placement_id, campaign_id, creative_id = placement
    response = await client.post("/v1/decisions", json={"user_id": "full-spool-viewer", "placements": [key]})
    assert_unavailable(response)

    signer = client.app.state.pipeline.signer

    def url(kind: TokenKind, path: str) -> str:
        token = signer.sign(
            TrackingClaims(
                kind=kind,
                decision_id=uuid.uuid4(),
                creative_id=creative_id,
                campaign_id=campaign_id,
                placement_id=placement_id,
                user_key=None,
                issued_at=int(datetime.now(UTC).timestamp()),
                pricing=Pricing.CPC,
                cost_micros=500_000,
            )
        )
        return f"https://ads.example/{path}/{token}"

    assert_unavailable(await client.get(path_of(url(TokenKind.IMPRESSION, "i"))))
    assert_unavailable(
        await client.get(path_of(url(TokenKind.CLICK, "c")), headers=BROWSER, follow_redirects=False)
    )

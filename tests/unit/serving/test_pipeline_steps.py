"""The decision pipeline's steps, one at a time, with fake scorers, policies and a recording writer
(the storage itself is exercised against Postgres in tests/integration/serving)."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import pytest

from adserve.domain import BehaviourEvent, Choice, EventType
from adserve.errors import NotFound
from adserve.serving.catalog import Catalog, PlacementEntry
from adserve.serving.eligibility import Eligible
from adserve.serving.pipeline import DecisionPipeline
from adserve.serving.schemas import DecisionRequest, PageContext
from adserve.serving.user_state import UserState
from tests.unit.serving.test_eligibility import campaign, creative

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
PLACEMENT = PlacementEntry(id=7, key="slot", width=300, height=250, page_type="product", position=2)


class FixedScorer:
    """Scores by creative id; `prepared` says whether the scores need a worker thread."""

    version = "fixed"

    def __init__(self, scores: dict[int, float], prepared: bool | None = None) -> None:
        self.scores = scores
        self.threads: list[int] = []
        if prepared is not None:
            self.prepared = lambda context, candidates: prepared

    def score(self, context, candidates) -> np.ndarray:
        self.threads.append(threading.get_ident())
        return np.array([self.scores[c.creative_id] for c in candidates])

    def score_many(self, requests) -> list[np.ndarray]:
        return [self.score(context, candidates) for context, candidates in requests]


class Greedy:
    version = "greedy"

    def __init__(self) -> None:
        self.scorer_versions: list[str | None] = []

    def choose(self, context, candidates, scores, rng, scorer_version=None) -> Choice:
        self.scorer_versions.append(scorer_version)
        best = int(np.argmax(scores))
        return Choice(pmf=tuple(float(i == best) for i in range(len(candidates))), index=best)


class RecordingWriter:
    def __init__(self, online: bool = True) -> None:
        self.online = online
        self.calls: list[tuple[str, str, int]] = []

    async def write(self, table, rows):
        self.calls.append(("awaited", table, len(rows)))
        return "stored"

    def write_nowait(self, table, rows) -> None:
        self.calls.append(("queued", table, len(rows)))


class ServePublisher:
    """The user state's `publish_serves`: records what it was asked to publish."""

    def __init__(self, delivered: bool = True) -> None:
        self.delivered = delivered
        self.published: list[list[tuple]] = []
        self.prepare = None

    async def publish_serves(self, serves) -> bool:
        self.published.append(list(serves))
        return self.delivered


def pipeline(scorer=None, writer=None, user_states=None) -> DecisionPipeline:
    return DecisionPipeline(
        catalog=None,
        scorer=scorer or FixedScorer({}),
        policy=Greedy(),
        user_states=user_states,
        writer=writer or RecordingWriter(),
        signer=None,
        user_keys=None,
        public_url="https://ads.example",
    )


def request(**overrides) -> DecisionRequest:
    fields = {
        "user_id": "u",
        "placements": ["slot"],
        "consent": True,
        "context": PageContext(device="mobile"),
    }
    fields.update(overrides)
    return DecisionRequest(**fields)


def test_placements_keep_the_requests_order_and_an_unknown_key_is_a_404() -> None:
    other = PlacementEntry(id=8, key="side", width=300, height=250, page_type="product", position=0)
    snapshot = Catalog(placements={"slot": PLACEMENT, "side": other}, creatives={}, by_size={}, loaded_at=NOW)
    assert DecisionPipeline._placements(snapshot, request(placements=["side", "slot"])) == [other, PLACEMENT]
    with pytest.raises(NotFound):
        DecisionPipeline._placements(snapshot, request(placements=["slot", "nope"]))


class StateRecorder:
    """The user-state cache's `get`: records which capped campaigns it was asked to load."""

    def __init__(self) -> None:
        self.asked: list[list[int]] = []
        self.prepare = None

    async def get(self, user_key, with_history, capped, since) -> UserState:
        self.asked.append(capped)
        return UserState(history=(), served={})


async def test_the_user_state_is_asked_for_the_capped_campaigns_of_every_placement_in_play() -> None:
    banner = PlacementEntry(id=8, key="banner", width=728, height=90, page_type="product", position=0)
    entries = [
        creative(campaign(id=5, frequency_cap=3, frequency_window_s=3600), creative_id=1),
        creative(campaign(id=5, frequency_cap=3, frequency_window_s=3600), creative_id=2),
        creative(campaign(id=2), creative_id=3),
        creative(campaign(id=9, frequency_cap=1, frequency_window_s=60), creative_id=4),
    ]
    wide = [
        replace(
            creative(campaign(id=4, frequency_cap=2, frequency_window_s=60), creative_id=5),
            width=728,
            height=90,
        )
    ]
    snapshot = Catalog(
        placements={"slot": PLACEMENT, "banner": banner},
        creatives={},
        by_size={(300, 250): tuple(entries), (728, 90): tuple(wide)},
        loaded_at=NOW,
    )
    states = StateRecorder()
    steps = pipeline(user_states=states)
    await steps._user_state(snapshot, [PLACEMENT], "key", True, NOW)
    await steps._user_state(snapshot, [PLACEMENT, banner], "key", True, NOW)
    await steps._user_state(snapshot, [PLACEMENT], "key", True, NOW)  # the snapshot's kept set
    assert states.asked == [[5, 9], [4, 5, 9], [5, 9]]


def test_the_decision_context_carries_the_user_only_with_consent() -> None:
    history = (BehaviourEvent(EventType.PRODUCT_VIEW, NOW.timestamp() - 5, item_id="sku"),)
    state = UserState(history=history, served={})
    consented = DecisionPipeline._decision_context(request(), PLACEMENT, "key", state, NOW)
    assert consented.user_key == "key" and consented.history == history
    assert consented.position == 2 and consented.hour == 12 and consented.device == "mobile"
    anonymous = DecisionPipeline._decision_context(request(consent=False), PLACEMENT, "key", state, NOW)
    assert anonymous.user_key is None


async def test_choose_serves_the_policys_pick_among_the_eligible() -> None:
    entries = [creative(campaign(id=i), creative_id=i) for i in (1, 2, 3)]
    eligible = Eligible(creatives=entries, considered=3, removed=Counter())
    steps = pipeline(FixedScorer({1: 0.1, 2: 0.3, 3: 0.2}))
    context = DecisionPipeline._decision_context(request(), PLACEMENT, "key", UserState((), {}), NOW)
    served = await steps._choose(PLACEMENT, eligible, context)
    assert served.chosen is entries[1] and served.p_click == pytest.approx(0.3)
    assert list(served.scores) == pytest.approx([0.1, 0.3, 0.2]) and served.placement is PLACEMENT
    # the policy learns its corrections per scorer family: it is told whose scores these are
    assert steps.policy.scorer_versions == [served.scorer_version] == [steps.scorer.version]


async def test_scores_needing_a_forward_pass_run_off_the_event_loop() -> None:
    candidates = [creative(campaign(id=1)).candidate]
    context = DecisionPipeline._decision_context(request(), PLACEMENT, "key", UserState((), {}), NOW)
    loop_thread = threading.get_ident()
    for prepared, off_loop in ((True, False), (False, True), (None, False)):
        scorer = FixedScorer({1: 0.5}, prepared=prepared)
        steps = pipeline(scorer)
        assert list(await steps._scores(scorer, context, candidates)) == [0.5]
        assert (scorer.threads[-1] != loop_thread) is off_loop
        await steps.close()


SERVE = ("user-key", 3, NOW)


@pytest.mark.parametrize(
    ("capped", "online", "delivered", "expected", "published"),
    [
        (False, True, True, "queued", []),
        # a capped serve is published to every serving process; its row follows without a wait
        (True, True, True, "queued", [[SERVE]]),
        # a publication that failed: the decision waits for the row's commit, which notifies
        (True, True, False, "awaited", [[SERVE]]),
        (False, False, True, "awaited", []),
        (True, False, True, "awaited", []),
    ],
)
async def test_the_log_waits_only_for_an_unpublished_capped_serve_or_the_spool(
    capped, online, delivered, expected, published
) -> None:
    writer, publisher = RecordingWriter(online=online), ServePublisher(delivered)
    steps = pipeline(writer=writer, user_states=publisher)
    await steps._log([("row",)], [SERVE] if capped else [])
    assert writer.calls == [(expected, "decisions", 1)]
    assert publisher.published == published
    writer.calls.clear()
    await steps._log([], [SERVE] if capped else [])
    assert writer.calls == []

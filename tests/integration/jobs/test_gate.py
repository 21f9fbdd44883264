"""The champion/challenger gate: a better challenger is promoted, a worse one rejected, and the
reason is recorded either way. Tiny models on synthetic behaviour keep this quick."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from dataclasses import asdict, replace
from datetime import UTC, datetime

import msgspec
import pytest

from adserve.interest.synthetic import generate_behaviour, generate_click_log, make_creatives
from adserve.interest.training import train_interest
from adserve.jobs.gate import (
    HoldoutFigures,
    apply_gate,
    decide,
    empirical_click_logloss,
    evaluate_pair,
    verdict,
)
from adserve.jobs.tasks import JobContext, retrain_interest
from adserve.learning.empirical_ctr import EmpiricalCTRScorer
from adserve.learning.registry import Registry
from tests.unit.interest.conftest import FAST, TINY

ONE_EPOCH = replace(FAST, max_epochs=1, patience=1, click_max_epochs=1)
THOROUGH = replace(FAST, max_epochs=40, patience=40, click_max_epochs=5, click_patience=2)


@pytest.fixture(scope="module")
def world():
    sequences, catalogue = generate_behaviour(n_users=80, n_items=40, n_categories=5, mean_length=12, seed=7)
    clicks = generate_click_log(sequences, make_creatives(catalogue, n_creatives=12, seed=7), 4, seed=7)
    return sequences, clicks


def _train(world, tmp_path, name, train_config, with_clicks=True, seed=0):
    sequences, clicks = world
    result = train_interest(
        sequences,
        clicks if with_clicks else (),
        model_config=TINY,
        train_config=replace(train_config, seed=seed),
    )
    return result.save(tmp_path, version=f"{name}-{uuid.uuid4().hex[:6]}")


def test_decide_needs_no_worse_log_loss_and_next_item_quality_kept() -> None:
    champion = HoldoutFigures(0.30, 0.50, True)
    assert decide(HoldoutFigures(0.35, 0.49, True), champion).promote
    assert decide(HoldoutFigures(0.30, 0.40, True), champion).promote  # better clicks, same next item
    fell = decide(HoldoutFigures(0.25, 0.40, True), champion)  # better clicks bought with next item
    assert not fell.promote and "fell" in fell.reason
    # the first version that scores ads replaces one that does not, never the other way round
    assert decide(HoldoutFigures(0.20, 0.45, True), HoldoutFigures(0.40, None, False)).promote
    assert not decide(HoldoutFigures(0.45, None, False), champion).promote
    # neither scores ads: next-item quality decides
    assert decide(HoldoutFigures(0.35, None, False), HoldoutFigures(0.30, None, False)).promote
    assert not decide(HoldoutFigures(0.30, None, False), HoldoutFigures(0.30, None, False)).promote
    worse_loss = decide(HoldoutFigures(0.40, 0.60, True), champion)
    assert not worse_loss.promote and "log loss" in worse_loss.reason
    assert decide(HoldoutFigures(0.01, None, False), None).promote


def test_the_first_version_that_scores_ads_must_beat_the_empirical_ctr_it_replaces() -> None:
    no_clicks = HoldoutFigures(0.40, None, False)
    better = decide(HoldoutFigures(0.40, 0.090, True), no_clicks, empirical_logloss=0.095)
    assert better.promote and "empirical CTR 0.0950" in better.reason
    worse = decide(HoldoutFigures(0.40, 0.100, True), no_clicks, empirical_logloss=0.095)
    assert not worse.promote and "not below the empirical CTR scorer's 0.0950" in worse.reason
    assert not decide(HoldoutFigures(0.40, 0.095, True), no_clicks, empirical_logloss=0.095).promote
    # no champion at all: the same bar for a first version that scores ads
    assert not decide(HoldoutFigures(0.40, 0.100, True), None, empirical_logloss=0.095).promote
    first = decide(HoldoutFigures(0.40, 0.090, True), None, empirical_logloss=0.095)
    assert first.promote and "0.0900 vs empirical CTR 0.0950" in first.reason
    # two versions that score ads are judged against each other, not against the empirical scorer
    champion = HoldoutFigures(0.40, 0.110, True)
    assert decide(HoldoutFigures(0.40, 0.100, True), champion, empirical_logloss=0.095).promote


def test_a_next_item_fall_within_the_holdouts_sampling_noise_does_not_block_better_clicks() -> None:
    # the demo's case: 0.1954 -> 0.1830 on about a thousand users, click log loss better
    small = decide(HoldoutFigures(0.1830, 0.0656, True, 1_000), HoldoutFigures(0.1954, 0.0682, True, 1_000))
    assert small.promote, small.reason
    # the same fall measured on a million users is real: rejected
    large = decide(
        HoldoutFigures(0.1830, 0.0656, True, 1_000_000), HoldoutFigures(0.1954, 0.0682, True, 1_000_000)
    )
    assert not large.promote and "fell by more than 0.0039" in large.reason
    # a fall well beyond the noise is rejected on a small holdout too
    assert not decide(
        HoldoutFigures(0.10, 0.0656, True, 1_000), HoldoutFigures(0.1954, 0.0682, True, 1_000)
    ).promote
    # the figures round-trip through the JSON stored on model_versions
    figures = HoldoutFigures(0.2, 0.05, True, 321)
    assert HoldoutFigures.from_dict(asdict(figures)) == figures


async def test_better_challenger_promoted_worse_rejected(
    world, tmp_path, jobs_database, jobs_sessionmaker
) -> None:
    sequences, clicks = world
    weak = _train(world, tmp_path, "weak", ONE_EPOCH, with_clicks=False)
    strong = _train(world, tmp_path, "strong", THOROUGH)
    async with jobs_sessionmaker() as session:
        registry = Registry(session)
        await registry.register("interest", weak.name, str(weak), {})
        await registry.promote("interest", weak.name, "test champion")

    empirical = EmpiricalCTRScorer(1.0, 100.0, 1.0)
    judged = await asyncio.to_thread(evaluate_pair, strong, weak, sequences, clicks, empirical)
    # the empirical scorer's figure is its own, on the same holdout: not a copy of the challenger's
    assert judged["empirical_logloss"] == empirical_click_logloss(EmpiricalCTRScorer(1.0, 100.0, 1.0), clicks)
    assert judged["empirical_logloss"] != judged["challenger"]["logloss"]
    judgement = verdict(judged)
    assert judgement.promote == (judged["challenger"]["logloss"] < judged["empirical_logloss"]), (
        judgement.reason
    )
    # the champion/challenger rules on their own (no empirical bar: `adserve evaluate`'s pair)
    pair = await asyncio.to_thread(evaluate_pair, strong, weak, sequences, clicks)
    assert "empirical_logloss" not in pair
    promoted = await apply_gate(jobs_database, strong, pair)
    assert promoted.promote, promoted.reason

    worse = _train(world, tmp_path, "worse", ONE_EPOCH, seed=1)
    pair = await asyncio.to_thread(evaluate_pair, worse, strong, sequences, clicks)
    rejected = await apply_gate(jobs_database, worse, pair)
    assert not rejected.promote, rejected.reason

    async with jobs_sessionmaker() as session:
        registry = Registry(session)
        assert (await registry.champion("interest")).version == strong.name
        strong_row = await registry.get("interest", strong.name)
        worse_row = await registry.get("interest", worse.name)
    # the weak champion never saw an impression: the strong one is the first to score ads
    assert strong_row.status == "champion" and strong_row.reason.startswith("promoted: the first version")
    assert worse_row.status == "rejected" and worse_row.reason.startswith("rejected:")
    assert worse_row.metrics["gate"]["champion"]["ndcg_at_10"] == pair["champion"]["ndcg_at_10"]


async def test_retrain_job_trains_in_a_child_process_and_gates(
    world, jobs_settings, jobs_pool, jobs_sessionmaker
):
    """The job's whole path: logs in Postgres → training process → gate → registry."""
    sequences, _ = world
    rows = [
        (uuid.uuid4(), user, str(e.event_type), datetime.fromtimestamp(e.ts, UTC), e.item_id, e.category)
        for user, events in sequences.items()
        for e in events
    ]
    # Recent events: the job trains on a rolling window.
    shift = datetime.now(UTC).timestamp() - max(r[3].timestamp() for r in rows) - 60
    rows = [
        (i, f"job-{u}", t, datetime.fromtimestamp(ts.timestamp() + shift, UTC), it, c)
        for i, u, t, ts, it, c in rows
    ]
    await jobs_pool.copy_records_to_table(
        "user_events", records=rows, columns=["id", "user_id", "event_type", "ts", "item_id", "category"]
    )
    async with jobs_sessionmaker() as session:
        before = await Registry(session).champion("interest")
    # settings built in-process (as `adserve demo` builds its short reward window), not in the
    # environment the training process inherits: it must train under them all the same
    window = msgspec.structs.replace(jobs_settings.bandit, reward_window_s=1234.0)
    settings = msgspec.structs.replace(jobs_settings, bandit=window)
    assert os.environ.get("ADSERVE_BANDIT_REWARD_WINDOW_S") != "1234.0"
    context = JobContext(settings.database.url, settings, jobs_pool, jobs_sessionmaker)
    figures = await retrain_interest(context)
    json.dumps(figures)
    assert figures["click_examples"]["outcome_window_s"] == 1234.0
    assert figures["champion"] == (before.version if before else None)
    assert figures["holdout"]["challenger"]["ndcg_at_10"] >= 0.0
    async with jobs_sessionmaker() as session:
        row = await Registry(session).get("interest", figures["version"])
    assert row.status == ("champion" if figures["promoted"] else "rejected")
    assert row.reason == figures["reason"]

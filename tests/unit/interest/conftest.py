"""Tiny data and a tiny trained checkpoint shared by the interest tests (no DB, no network)."""

from __future__ import annotations

from pathlib import Path

import pytest

from adserve.domain import BehaviourEvent, Candidate
from adserve.interest.data import ClickExample
from adserve.interest.network import InterestConfig
from adserve.interest.synthetic import generate_behaviour, generate_click_log, make_creatives
from adserve.interest.training import TrainConfig, TrainResult, train_interest

TINY = InterestConfig(
    n_items=2,
    item_buckets=512,
    category_buckets=64,
    creative_buckets=256,
    brand_buckets=64,
    context_buckets=256,
    max_len=16,
    hidden=16,
    n_layers=2,
    n_heads=2,
    dropout=0.1,
    click_mlp=(16,),
)
FAST = TrainConfig(
    max_epochs=3, patience=2, click_max_epochs=2, click_patience=1, progress=False, batch_size=32
)


@pytest.fixture(scope="session")
def tiny_world() -> tuple[dict[str, list[BehaviourEvent]], list[Candidate], list[ClickExample]]:
    sequences, catalogue = generate_behaviour(n_users=80, n_items=40, n_categories=5, mean_length=12, seed=7)
    creatives = make_creatives(catalogue, n_creatives=12, seed=7)
    clicks = generate_click_log(sequences, creatives, impressions_per_user=4, seed=7)
    return sequences, creatives, clicks


@pytest.fixture(scope="session")
def tiny_result(tiny_world) -> TrainResult:
    sequences, _, clicks = tiny_world
    return train_interest(sequences, clicks, model_config=TINY, train_config=FAST)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_result, tmp_path_factory) -> Path:
    return tiny_result.save(tmp_path_factory.mktemp("models"), version="v1")

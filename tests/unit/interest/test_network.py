from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from adserve.interest.network import (
    ClickInputs,
    EventTensors,
    InterestModel,
    attention_mask,
    gap_bucket,
    gap_bucket_array,
    item_buckets,
    stable_hash,
)

from .conftest import TINY


def _events(batch: int, length: int, seed: int = 0, pad: int = 0) -> EventTensors:
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(2, TINY.item_buckets, (batch, length, 2), generator=g)
    categories = torch.randint(1, TINY.category_buckets, (batch, length), generator=g)
    types = torch.randint(1, 7, (batch, length), generator=g)
    gaps = torch.randint(1, 30, (batch, length), generator=g)
    for t in (items, categories, types, gaps):
        t[:, :pad] = 0
    return EventTensors(items, categories, types, gaps)


def _click_inputs(batch: int, length: int, seed: int = 0) -> ClickInputs:
    g = torch.Generator().manual_seed(seed)
    return ClickInputs(
        creative_ids=torch.randint(1, TINY.creative_buckets, (batch, 3), generator=g),
        creative_category=torch.randint(0, TINY.category_buckets, (batch,), generator=g),
        brand=torch.randint(0, TINY.brand_buckets, (batch,), generator=g),
        products=torch.randint(0, TINY.item_buckets, (batch, TINY.max_products, 2), generator=g),
        price=torch.randint(0, 10, (batch,), generator=g),
        context=torch.randint(0, TINY.context_buckets, (batch, 5), generator=g),
        page_category=torch.randint(0, TINY.category_buckets, (batch,), generator=g),
        keywords=torch.randint(0, TINY.context_buckets, (batch, TINY.max_keywords), generator=g),
        request_gaps=torch.randint(2, 30, (batch, length), generator=g),
    )


@pytest.fixture
def model() -> InterestModel:
    torch.manual_seed(0)
    m = InterestModel(replace(TINY, n_items=30))
    with torch.no_grad():
        m.next_item.vocab_hash[1:] = torch.randint(2, TINY.item_buckets, (29, 2))
    return m.eval()


def test_stable_hash_is_pinned_and_independent_of_pythonhashseed() -> None:
    assert stable_hash("shoes", 1000, "category") == 807
    assert item_buckets("sku-1", 1 << 14) == (323, 13027)
    code = "from adserve.interest.network import stable_hash; print(stable_hash('shoes', 1000, 'category'))"
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == "807"


def test_hash_ranges_and_salts() -> None:
    values = [stable_hash(f"v{i}", 50, "a") for i in range(2000)]
    assert min(values) >= 1 and max(values) <= 49  # 0 stays padding
    assert len(set(values)) == 49
    assert [stable_hash(f"v{i}", 1 << 20, "a") for i in range(50)] != [
        stable_hash(f"v{i}", 1 << 20, "b") for i in range(50)
    ]
    rows = [item_buckets(f"sku-{i}", 64) for i in range(500)]
    assert all(2 <= r <= 63 for pair in rows for r in pair)  # 0 padding, 1 "no item"
    assert item_buckets(None, 64) == (1, 1)


def test_gap_buckets_are_monotone_and_vectorised_identically() -> None:
    gaps = np.array([0.0, 0.5, 1.0, 3.0, 60.0, 3600.0, 86400.0, 1e9, 1e12, -5.0])
    scalar = [gap_bucket(g) for g in gaps]
    assert scalar == gap_bucket_array(gaps).tolist()
    assert scalar[:-1] == sorted(scalar[:-1])
    assert gap_bucket(None) == 1 and scalar[-1] == 2  # negative gaps (clock skew) clamp to 0


def test_shapes(model: InterestModel) -> None:
    events = _events(3, 7, pad=2)
    assert model.encode(events).shape == (3, 7, 16)
    assert model.next_item_logits(events).shape == (3, 30)
    assert model.click_logits(events, _click_inputs(3, 7)).shape == (3,)


def test_attention_mask_allows_only_past_real_events() -> None:
    padding = torch.tensor([[True, True, False, False]])
    mask = attention_mask(padding)[0, 0]
    expected = torch.tensor(
        [
            [True, False, False, False],  # padding attends only to itself (no empty softmax row)
            [False, True, False, False],
            [False, False, True, False],
            [False, False, True, True],
        ]
    )
    assert torch.equal(mask, expected)


def test_changing_a_future_event_leaves_earlier_outputs_unchanged(model: InterestModel) -> None:
    events = _events(2, 8, pad=1)
    before = model.encode(events)
    changed = EventTensors(events.items.clone(), events.categories.clone(), events.types.clone(), events.gaps)
    changed.items[:, 5] = torch.tensor([7, 9])
    changed.categories[:, 5] = 3
    changed.types[:, 5] = 4
    after = model.encode(changed)
    assert torch.allclose(before[:, :5], after[:, :5], atol=1e-6)
    assert not torch.allclose(before[:, 5:], after[:, 5:], atol=1e-4)  # the change is visible later


def test_padding_contents_never_reach_real_events(model: InterestModel) -> None:
    events = _events(2, 8, pad=3)
    before = model.encode(events)
    noisy = EventTensors(
        events.items.clone(), events.categories.clone(), events.types.clone(), events.gaps.clone()
    )
    noisy.categories[:, :3] = 5  # garbage in padding slots (item rows stay 0, so still padding)
    noisy.types[:, :3] = 2
    noisy.gaps[:, :3] = 9
    after = model.encode(noisy)
    assert torch.allclose(before[:, 3:], after[:, 3:], atol=1e-6)
    assert torch.all(after[:, :3] == 0)


def test_extra_left_padding_changes_nothing(model: InterestModel) -> None:
    short = _events(1, 5)
    long = _events(1, 9, pad=4)
    for name in ("items", "categories", "types", "gaps"):
        getattr(long, name)[:, 4:] = getattr(short, name)
    assert torch.allclose(model.encode(short)[:, -1], model.encode(long)[:, -1], atol=1e-6)
    inputs = _click_inputs(1, 5)
    padded = _click_inputs(1, 9)
    for name in ClickInputs.__slots__:
        if name != "request_gaps":
            setattr(padded, name, getattr(inputs, name))
    padded.request_gaps = torch.cat([torch.zeros(1, 4, dtype=torch.long), inputs.request_gaps], dim=1)
    assert torch.allclose(model.click_logits(short, inputs), model.click_logits(long, padded), atol=1e-6)


def test_user_without_history_gets_finite_scores_that_depend_on_the_creative(model: InterestModel) -> None:
    empty = _events(4, 1, pad=1)
    inputs = _click_inputs(4, 1)
    inputs.request_gaps.zero_()
    logits = model.click_logits(empty, inputs)
    assert torch.isfinite(logits).all()
    assert logits.unique().numel() == 4


def test_next_item_loss_full_and_sampled(model: InterestModel) -> None:
    model.train()
    events = _events(4, 6, pad=1)
    targets = torch.randint(1, 30, (4, 6))
    targets[:, 0] = 0
    user = model.encode(events).reshape(-1, 16)
    full = model.next_item.loss(user, targets.reshape(-1), model.encoder.events)
    expected = torch.nn.functional.cross_entropy(
        model.next_item.logits(user, model.encoder.events)[targets.reshape(-1) > 0],
        targets.reshape(-1)[targets.reshape(-1) > 0],
    )
    assert torch.allclose(full, expected)
    model.next_item.full_softmax_max_items = 10  # force the sampled path
    model.next_item.n_negatives = 64
    sampled = model.next_item.loss(
        user, targets.reshape(-1), model.encoder.events, torch.Generator().manual_seed(0)
    )
    assert torch.isfinite(sampled) and 0 < float(sampled.detach()) < float(full.detach()) + 2.0
    sampled.backward()
    assert model.encoder.events.item.weight.grad is not None
    assert model.encoder.events.item.weight.grad.abs().sum() > 0

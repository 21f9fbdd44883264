from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from adserve.domain import BehaviourEvent, Candidate, DecisionContext, EventType, Pricing
from adserve.interest.data import (
    ItemVocabulary,
    click_inputs,
    collate_windows,
    encode_history,
    history_before,
    make_click_example,
    next_item_windows,
    read_behaviour_file,
    sequences_by_user,
    stack_histories,
)
from adserve.interest.network import InterestModel

from .conftest import TINY


def _event(
    ts: float, item: str, category: str | None = "c1", kind: EventType = EventType.PRODUCT_VIEW
) -> BehaviourEvent:
    return BehaviourEvent(event_type=kind, ts=ts, item_id=item, category=category)


def test_csv_with_only_required_columns(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text(
        "user_id,item_id,timestamp\nu1,i1,1700000100\nu1,i2,1700000000000\nu2,i1,2023-11-14T22:13:20Z\n"
    )
    rows = list(read_behaviour_file(path))
    assert [(r.user_id, r.event.item_id, r.event.ts) for r in rows] == [
        ("u1", "i1", 1700000100.0),
        ("u1", "i2", 1700000000.0),  # milliseconds detected
        ("u2", "i1", 1700000000.0),  # ISO 8601, Z = UTC
    ]
    assert all(r.event.event_type is EventType.PRODUCT_VIEW and r.event.category is None for r in rows)
    grouped = sequences_by_user(rows)
    assert [e.item_id for e in grouped["u1"]] == ["i2", "i1"]  # oldest first


def test_csv_optional_columns_and_type_aliases(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text(
        "user_id,item_id,timestamp,type,category,price\n"
        "u1,i1,10,view,shoes,19.5\nu1,i1,11,cart,shoes,\nu1,i1,12,purchase,,19.5\n"
    )
    rows = list(read_behaviour_file(path))
    assert [r.event.event_type for r in rows] == [
        EventType.PRODUCT_VIEW,
        EventType.ADD_TO_CART,
        EventType.PURCHASE,
    ]
    assert [r.event.category for r in rows] == ["shoes", "shoes", None]
    assert [r.event.price for r in rows] == [19.5, None, 19.5]


def test_bad_rows_and_columns_fail_with_location(tmp_path: Path) -> None:
    missing = tmp_path / "missing.csv"
    missing.write_text("user_id,timestamp\nu1,1\n")
    with pytest.raises(ValueError, match=r"missing required column.*item_id"):
        list(read_behaviour_file(missing))
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,item_id,timestamp,type\nu1,i1,1,view\nu1,i1,2,teleport\n")
    with pytest.raises(ValueError, match=r"bad.csv line 3: unknown event type 'teleport'"):
        list(read_behaviour_file(bad))


def test_parquet_reader(tmp_path: Path) -> None:
    path = tmp_path / "events.parquet"
    table = pa.table(
        {
            "user_id": [1, 1, 2],
            "item_id": ["a", "b", "a"],
            "timestamp": [5, 6, 7],
            "category": ["x", None, "y"],
        }
    )
    pq.write_table(table, path)
    rows = list(read_behaviour_file(path, batch_rows=2))
    assert [(r.user_id, r.event.item_id, r.event.ts, r.event.category) for r in rows] == [
        ("1", "a", 5.0, "x"),
        ("1", "b", 6.0, None),
        ("2", "a", 7.0, "y"),
    ]


def test_vocabulary_and_encoding() -> None:
    events = [
        _event(0, "a"),
        _event(60, "b"),
        BehaviourEvent(EventType.SEARCH, 120.0, query="red"),
        _event(7200, "a"),
    ]
    vocab = ItemVocabulary.from_sequences([events])
    assert vocab.item_ids == ["a", "b"] and len(vocab) == 3 and vocab.index == {"a": 1, "b": 2}
    encoded = encode_history(events, TINY, vocab)
    assert encoded.targets.tolist() == [1, 2, 0, 1]  # the search has no item: never a target
    assert encoded.items[2].tolist() == [1, 1]
    assert encoded.gaps.tolist()[0] == 1  # first event: gap unknown
    assert encoded.gaps[1] < encoded.gaps[3]
    assert torch.equal(vocab.hash_rows(TINY.item_buckets)[1], torch.from_numpy(encoded.items[0]))


def test_windows_predict_only_later_events() -> None:
    events = [_event(float(t), f"i{t % 5}") for t in range(40)]
    vocab = ItemVocabulary.from_sequences([events])
    history = encode_history(events, TINY, vocab)
    windows = next_item_windows([history], max_len=16)
    covered = sorted(t for w in windows for t in range(w.start + 1, w.stop + 1))
    assert covered == list(range(1, 40))  # every event after the first is predicted exactly once
    batch, targets = collate_windows([history], windows, 16)
    assert batch.items.shape[:2] == targets.shape
    for row, window in enumerate(windows):
        n = window.stop - window.start
        real = targets[row, -n:]
        assert real.tolist() == history.targets[window.start + 1 : window.stop + 1].tolist()
        # the input at slot j is the event whose successor is target j
        assert torch.equal(batch.items[row, -1], torch.from_numpy(history.items[window.stop - 1]))


def test_stack_left_pads_and_keeps_the_most_recent() -> None:
    long = encode_history([_event(float(t), f"i{t}") for t in range(30)], TINY)
    short = encode_history([_event(0.0, "x")], TINY)
    batch = stack_histories([long, short], max_len=16)
    assert batch.items.shape == (2, 16, 2)
    assert torch.equal(batch.items[0, -1], torch.from_numpy(long.items[-1]))
    assert batch.padding[1].tolist() == [True] * 15 + [False]


CANDIDATE = Candidate(
    creative_id=3,
    campaign_id=2,
    advertiser_id=1,
    pricing=Pricing.CPC,
    bid=1.0,
    category="c2",
    brand="b",
    product_ids=("i2",),
    price=9.0,
)


def _features(example, model: InterestModel) -> tuple[torch.Tensor, ...]:
    history = encode_history(example.context.history, TINY)
    events = stack_histories([history], TINY.max_len)
    inputs = click_inputs([(example.context, example.candidate)], TINY, [history.ts], events.items.shape[1])
    with torch.no_grad():
        logit = model.click_logits(events, inputs)
    return events.items, events.categories, inputs.request_gaps, logit


def test_point_in_time_click_features_ignore_later_events() -> None:
    torch.manual_seed(0)
    model = InterestModel(replace(TINY, n_items=5)).eval()
    decision = 1000.0
    before = [_event(100.0, "i1"), _event(500.0, "i2", "c2"), _event(999.0, "i3")]
    later = [
        _event(1000.0, "i4", "c9"),
        _event(1500.0, "i5", "c9", EventType.PURCHASE),
    ]  # at and after decision
    context = DecisionContext(placement="top", now=5000.0, user_key="u", history=tuple(before + later))
    leaky_log = make_click_example(decision, before + later, CANDIDATE, context, True)
    clean_log = make_click_example(decision, before, CANDIDATE, context, True)
    assert leaky_log.context.history == tuple(before)
    assert leaky_log.context.now == decision  # the clock is the decision's, not the caller's
    for leaky, clean in zip(_features(leaky_log, model), _features(clean_log, model), strict=True):
        assert torch.equal(leaky, clean)
    # the same features DO move when an earlier event changes, so the check above is not vacuous
    earlier = make_click_example(decision, [_event(50.0, "i5", "c9"), *before], CANDIDATE, context, True)
    assert not torch.equal(_features(earlier, model)[3], _features(clean_log, model)[3])


def test_history_before_is_strict() -> None:
    events = [_event(1.0, "a"), _event(2.0, "b"), _event(2.0, "c"), _event(3.0, "d")]
    assert [e.item_id for e in history_before(events, 2.0)] == ["a"]
    assert history_before(events, 0.5) == ()


def test_request_gaps_measure_time_to_the_request() -> None:
    history = encode_history([_event(0.0, "a"), _event(3000.0, "b")], TINY)
    rows = [
        (DecisionContext(placement="p", now=3001.0), CANDIDATE),
        (DecisionContext(placement="p", now=90000.0), CANDIDATE),
    ]
    inputs = click_inputs(rows, TINY, [history.ts, history.ts], 3)
    assert inputs.request_gaps[:, 0].tolist() == [0, 0]  # padding slot
    assert inputs.request_gaps[0, 2] < inputs.request_gaps[1, 2]
    assert np.all(inputs.request_gaps[:, 1:].numpy() >= 2)

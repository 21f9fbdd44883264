"""The serving process's collector settings: applied while the app serves, undone after."""

from __future__ import annotations

import gc

from adserve.serving.heap import YOUNG_THRESHOLD, tuned_collector


def test_the_start_up_heap_is_frozen_and_young_collections_are_rarer_while_serving() -> None:
    before = gc.get_threshold()
    frozen_before = gc.get_freeze_count()
    kept = [[index] for index in range(1000)]  # start-up objects: in the frozen heap once tuned
    with tuned_collector():
        assert gc.get_threshold() == (YOUNG_THRESHOLD, *before[1:])
        assert gc.get_freeze_count() >= frozen_before + len(kept)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_the_collector_is_left_alone_when_tuning_is_off() -> None:
    before = gc.get_threshold()
    with tuned_collector(enabled=False):
        assert gc.get_threshold() == before
        assert gc.get_freeze_count() == 0

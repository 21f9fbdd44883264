"""The serving process's garbage collector.

CPython's cyclic collector stops the process, and with it the event loop and every request on it,
for as long as it walks the objects of the generations it collects. After start-up a serving
process holds a large heap that lives as long as the process: torch and its modules, the models,
the catalogue snapshot, VW. A full collection walks all of it (hundreds of milliseconds under
load on 2 cores: `adserve_gc_pause_seconds{generation="2"}`, bench/serving.py), and each young
collection promotes a decision's short-lived rows and arrays to older generations whose
collections cost more again.

`tuned_collector` collects once when start-up is done, moves what survives to the permanent
generation (`gc.freeze`: never walked again; reference counting still frees it), and collects the
young generation after `YOUNG_THRESHOLD` allocations instead of CPython's 700, so most of a
decision's objects are freed by reference counting before any collection sees them. Cycles among
the frozen start-up objects are not collected while the process serves; on shutdown the heap is
unfrozen and the thresholds restored (tests run many apps in one process).
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["YOUNG_THRESHOLD", "tuned_collector"]

YOUNG_THRESHOLD = 10_000


@contextmanager
def tuned_collector(enabled: bool = True) -> Iterator[None]:
    if not enabled:
        yield
        return
    previous = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *previous[1:])
    try:
        yield
    finally:
        gc.set_threshold(*previous)
        gc.unfreeze()

"""Plain rows → tensors: behaviour sequences, next-item training windows and click examples.

Everything here is a pure function of its arguments (no database, no clock), so the same code
builds the training set from Postgres rows, from an imported CSV/Parquet file and from a live
request. Point-in-time rule: a decision's features are built from events strictly before the
decision time (`history_before`), never from the decision's own second or later.

One module, past 450 lines, on purpose: every tensor the network sees is built here, so training,
import, evaluation and serving cannot drift apart in how they encode a row.
"""

from __future__ import annotations

import bisect
import csv
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from adserve.domain import BehaviourEvent, Candidate, DecisionContext, EventType
from adserve.interest.network import (
    EVENT_TYPES,
    ClickInputs,
    EventTensors,
    InterestConfig,
    gap_bucket_array,
    item_buckets,
    price_bucket,
    stable_hash,
)

__all__ = [
    "BehaviourRow",
    "ClickExample",
    "EncodedHistory",
    "ItemVocabulary",
    "NextItemWindow",
    "click_inputs",
    "collate_windows",
    "encode_history",
    "history_before",
    "make_click_example",
    "next_item_windows",
    "parse_event_type",
    "parse_timestamp",
    "read_behaviour_file",
    "request_gaps",
    "sequences_by_user",
    "stack_histories",
]

_TYPE_ALIASES = {
    "view": EventType.PRODUCT_VIEW,
    "click": EventType.PRODUCT_VIEW,
    "pageview": EventType.PAGE_VIEW,
    "cart": EventType.ADD_TO_CART,
    "addtocart": EventType.ADD_TO_CART,
    "add_to_cart": EventType.ADD_TO_CART,
    "buy": EventType.PURCHASE,
    "transaction": EventType.PURCHASE,
    "order": EventType.PURCHASE,
    "rating": EventType.PRODUCT_VIEW,
    "review": EventType.PRODUCT_VIEW,
}
_TYPE_INDEX = {t: i + 1 for i, t in enumerate(EVENT_TYPES)}


@dataclass(frozen=True, slots=True)
class BehaviourRow:
    """One imported behaviour event and whose it is."""

    user_id: str
    event: BehaviourEvent


def parse_event_type(value: object) -> EventType:
    """An event type from a file cell; empty means product_view (a plain interaction log)."""
    text = "" if value is None else str(value).strip().lower()
    if not text:
        return EventType.PRODUCT_VIEW
    if text in EventType._value2member_map_:
        return EventType(text)
    if text.replace("-", "_") in _TYPE_ALIASES:
        return _TYPE_ALIASES[text.replace("-", "_")]
    known = sorted([*EventType._value2member_map_, *_TYPE_ALIASES])
    raise ValueError(f"unknown event type {value!r}; expected one of {', '.join(known)}")


def parse_timestamp(value: object) -> float:
    """Seconds since the epoch from epoch seconds, epoch milliseconds or an ISO 8601 string.

    Naive datetimes are taken as UTC. Numbers above 1e11 are milliseconds (1e11 s is year 5138).
    """
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        return moment.timestamp()
    if isinstance(value, int | float | np.integer | np.floating):
        seconds = float(value)
    else:
        text = str(value).strip()
        try:
            seconds = float(text)
        except ValueError:
            return parse_timestamp(datetime.fromisoformat(text.replace("Z", "+00:00")))
    if math.isnan(seconds):
        raise ValueError("timestamp is empty")
    return seconds / 1000.0 if abs(seconds) > 1e11 else seconds


def _optional_float(value: object) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    number = float(value)  # type: ignore[arg-type]
    return None if math.isnan(number) else number


def _optional_text(value: object) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _row_from_record(record: Mapping[str, object], where: str) -> BehaviourRow:
    try:
        user_id = _optional_text(record.get("user_id"))
        item_id = _optional_text(record.get("item_id"))
        if user_id is None:
            raise ValueError("user_id is empty")
        timestamp = record.get("timestamp")
        if timestamp is None or timestamp == "":
            raise ValueError("timestamp is empty")
        event = BehaviourEvent(
            event_type=parse_event_type(record.get("type", record.get("event_type"))),
            ts=parse_timestamp(timestamp),
            item_id=item_id,
            category=_optional_text(record.get("category")),
            price=_optional_float(record.get("price")),
        )
    except (ValueError, TypeError) as error:
        raise ValueError(f"{where}: {error}") from error
    return BehaviourRow(user_id=user_id, event=event)


def _check_columns(columns: Iterable[str], path: Path) -> None:
    missing = {"user_id", "item_id", "timestamp"} - set(columns)
    if missing:
        raise ValueError(f"{path}: missing required column(s) {', '.join(sorted(missing))}")


def read_behaviour_file(path: str | Path, batch_rows: int = 65_536) -> Iterator[BehaviourRow]:
    """Yield the rows of a historical behaviour file, in file order.

    CSV (header row) or Parquet (by suffix `.parquet`/`.pq`) with columns user_id, item_id,
    timestamp and optionally type (or event_type), category, price. A bad row raises ValueError
    naming the file and line/row, so an import fails loudly instead of loading half a file.
    """
    path = Path(path)
    if path.suffix.lower() in {".parquet", ".pq"}:
        import pyarrow.parquet as pq  # optional for CSV-only users; installed with the app

        parquet = pq.ParquetFile(path)
        _check_columns(parquet.schema_arrow.names, path)
        offset = 0
        for batch in parquet.iter_batches(batch_size=batch_rows):
            for index, record in enumerate(batch.to_pylist()):
                yield _row_from_record(record, f"{path} row {offset + index}")
            offset += batch.num_rows
        return
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        _check_columns(reader.fieldnames or (), path)
        for record in reader:
            yield _row_from_record(record, f"{path} line {reader.line_num}")


def sequences_by_user(rows: Iterable[BehaviourRow]) -> dict[str, list[BehaviourEvent]]:
    """Events grouped per user, oldest first (stable for equal timestamps)."""
    grouped: dict[str, list[BehaviourEvent]] = {}
    for row in rows:
        grouped.setdefault(row.user_id, []).append(row.event)
    for events in grouped.values():
        events.sort(key=lambda event: event.ts)
    return grouped


class ItemVocabulary:
    """Catalogue item ids ↔ next-item output rows; row 0 is padding and never predicted."""

    def __init__(self, item_ids: Sequence[str]) -> None:
        self.item_ids: list[str] = list(item_ids)
        self.index: dict[str, int] = {item: i + 1 for i, item in enumerate(self.item_ids)}
        if len(self.index) != len(self.item_ids):
            raise ValueError("item vocabulary has duplicate ids")

    @classmethod
    def from_sequences(cls, sequences: Iterable[Sequence[BehaviourEvent]]) -> ItemVocabulary:
        """All item ids, in first-seen order (deterministic for a given input order)."""
        seen: dict[str, None] = {}
        for events in sequences:
            for event in events:
                if event.item_id is not None:
                    seen.setdefault(event.item_id, None)
        return cls(list(seen))

    def __len__(self) -> int:
        """Number of output rows, padding included."""
        return len(self.item_ids) + 1

    def id_of(self, row: int) -> str:
        return self.item_ids[row - 1]

    def hash_rows(self, buckets: int) -> torch.Tensor:
        """(V, 2) input-embedding rows of every vocabulary item; row 0 all zero (padding)."""
        rows = torch.zeros(len(self), 2, dtype=torch.long)
        if self.item_ids:
            rows[1:] = torch.tensor([_item_rows(item, buckets) for item in self.item_ids])
        return rows


@lru_cache(maxsize=1 << 20)
def _item_rows(item_id: str | None, buckets: int) -> tuple[int, int]:
    # the same few thousand items recur in every sequence; hashing each once saves most of the time
    return item_buckets(item_id, buckets)


@lru_cache(maxsize=1 << 16)
def _bucket(value: str, buckets: int, salt: str) -> int:
    return stable_hash(value, buckets, salt)


def _optional_bucket(value: str | None, buckets: int, salt: str) -> int:
    return 0 if value is None else _bucket(value, buckets, salt)


@dataclass(frozen=True, slots=True)
class EncodedHistory:
    """One user's events as arrays (n events, oldest first).

    items (n, 2), categories (n,), types (n,), gaps (n,) int64 as in EventTensors; ts (n,) float64;
    targets (n,) int64 vocabulary row of each event's item (0 = no item or not in vocabulary).
    """

    items: np.ndarray
    categories: np.ndarray
    types: np.ndarray
    gaps: np.ndarray
    ts: np.ndarray
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.ts)

    def tail(self, n: int) -> EncodedHistory:
        """The last n events (all if n >= len)."""
        start = max(len(self) - n, 0)
        return EncodedHistory(*(getattr(self, f)[start:] for f in EncodedHistory.__slots__))  # type: ignore[attr-defined]

    def head(self, n: int) -> EncodedHistory:
        """The first n events."""
        return EncodedHistory(*(getattr(self, f)[:n] for f in EncodedHistory.__slots__))  # type: ignore[attr-defined]


def encode_history(
    events: Sequence[BehaviourEvent], cfg: InterestConfig, vocab: ItemVocabulary | None = None
) -> EncodedHistory:
    """Arrays for a user's events (oldest first). Gaps are to the previous event, so the
    encoding of an event never depends on anything after it."""
    n = len(events)
    ts = np.fromiter((event.ts for event in events), dtype=np.float64, count=n)
    gaps = np.ones(n, dtype=np.int64)
    if n > 1:
        gaps[1:] = gap_bucket_array(np.diff(ts))
    index = vocab.index if vocab is not None else {}
    return EncodedHistory(
        items=np.array([_item_rows(e.item_id, cfg.item_buckets) for e in events], dtype=np.int64).reshape(
            n, 2
        ),
        categories=np.array(
            [_optional_bucket(e.category, cfg.category_buckets, "category") for e in events], dtype=np.int64
        ),
        types=np.array([_TYPE_INDEX[EventType(e.event_type)] for e in events], dtype=np.int64),
        gaps=gaps,
        ts=ts,
        targets=np.array([index.get(e.item_id, 0) if e.item_id else 0 for e in events], dtype=np.int64),
    )


def stack_histories(histories: Sequence[EncodedHistory], max_len: int) -> EventTensors:
    """Left-pad the last `max_len` events of each history into one batch.

    The batch is as long as its longest history (at least 1 slot, so a batch of empty histories
    still has a shape the encoder accepts).
    """
    tails = [h.tail(max_len) for h in histories]
    length = max(1, *(len(t) for t in tails)) if tails else 1
    batch = len(tails)
    items = np.zeros((batch, length, 2), dtype=np.int64)
    categories = np.zeros((batch, length), dtype=np.int64)
    types = np.zeros((batch, length), dtype=np.int64)
    gaps = np.zeros((batch, length), dtype=np.int64)
    for row, tail in enumerate(tails):
        n = len(tail)
        if n:
            items[row, length - n :] = tail.items
            categories[row, length - n :] = tail.categories
            types[row, length - n :] = tail.types
            gaps[row, length - n :] = tail.gaps
    return EventTensors(
        torch.from_numpy(items), torch.from_numpy(categories), torch.from_numpy(types), torch.from_numpy(gaps)
    )


@dataclass(frozen=True, slots=True)
class NextItemWindow:
    """Events [start, stop) of history `user` as input; targets are events [start + 1, stop + 1)."""

    user: int
    start: int
    stop: int


def next_item_windows(histories: Sequence[EncodedHistory], max_len: int) -> list[NextItemWindow]:
    """Cut every history into windows of at most max_len inputs, from the most recent back.

    Long histories give several windows instead of only their last max_len events, so no event
    is wasted; each window still predicts only events that follow its inputs.
    """
    windows: list[NextItemWindow] = []
    for user, history in enumerate(histories):
        stop = len(history) - 1  # the last event is only ever a target
        while stop > 0:
            start = max(stop - max_len, 0)
            if history.targets[start + 1 : stop + 1].any():
                windows.append(NextItemWindow(user, start, stop))
            stop = start
    return windows


def collate_windows(
    histories: Sequence[EncodedHistory], windows: Sequence[NextItemWindow], max_len: int
) -> tuple[EventTensors, torch.Tensor]:
    """Batch of windows → (events (B, L), targets (B, L) int64 vocab rows, 0 = padding/ignored)."""
    inputs = [histories[w.user].head(w.stop).tail(w.stop - w.start) for w in windows]
    events = stack_histories(inputs, max_len)
    length = events.items.shape[1]
    targets = np.zeros((len(windows), length), dtype=np.int64)
    for row, window in enumerate(windows):
        n = window.stop - window.start
        targets[row, length - n :] = histories[window.user].targets[window.start + 1 : window.stop + 1]
    return events, torch.from_numpy(targets)


def history_before(events: Sequence[BehaviourEvent], moment: float) -> tuple[BehaviourEvent, ...]:
    """The events strictly before `moment` (events sorted oldest first)."""
    cut = bisect.bisect_left([event.ts for event in events], moment)
    return tuple(events[:cut])


@dataclass(frozen=True, slots=True)
class ClickExample:
    """One logged impression: what was known at decision time and whether it was clicked.

    `context.history` holds only the events before `context.now` (see make_click_example).
    """

    context: DecisionContext
    candidate: Candidate
    clicked: bool


def make_click_example(
    decision_ts: float,
    user_events: Sequence[BehaviourEvent],
    candidate: Candidate,
    context: DecisionContext,
    clicked: bool,
) -> ClickExample:
    """A click training row whose features are point-in-time correct.

    `user_events` may be the user's whole log (sorted oldest first); only events strictly before
    `decision_ts` reach the features, and the context's clock is set to the decision time.
    """
    history = history_before(user_events, decision_ts)
    return ClickExample(replace(context, now=decision_ts, history=history), candidate, bool(clicked))


@lru_cache(maxsize=1 << 16)
def _creative_row(candidate: Candidate, cfg: InterestConfig) -> tuple[np.ndarray, np.ndarray, int, int, int]:
    # creatives recur across requests; their hashed features are computed once
    ids = np.array(
        [
            _bucket(str(candidate.creative_id), cfg.creative_buckets, "creative"),
            _bucket(str(candidate.campaign_id), cfg.creative_buckets, "campaign"),
            _bucket(str(candidate.advertiser_id), cfg.creative_buckets, "advertiser"),
        ],
        dtype=np.int64,
    )
    products = np.zeros((cfg.max_products, 2), dtype=np.int64)
    for slot, product in enumerate(candidate.product_ids[: cfg.max_products]):
        products[slot] = _item_rows(product, cfg.item_buckets)
    return (
        ids,
        products,
        _optional_bucket(candidate.category, cfg.category_buckets, "category"),
        _optional_bucket(candidate.brand, cfg.brand_buckets, "brand"),
        price_bucket(candidate.price),
    )


def _context_row(context: DecisionContext, cfg: InterestConfig) -> tuple[list[int], int, np.ndarray]:
    fields = (
        ("placement", context.placement),
        ("device", context.device),
        ("geo", context.geo),
        ("hour", str(context.hour)),
        ("position", str(min(context.position, 9))),
    )
    keywords = np.zeros(cfg.max_keywords, dtype=np.int64)
    for slot, word in enumerate(context.keywords[: cfg.max_keywords]):
        keywords[slot] = _bucket(word.lower(), cfg.context_buckets, "keyword")
    return (
        [_optional_bucket(value, cfg.context_buckets, name) for name, value in fields],
        _optional_bucket(context.page_category, cfg.category_buckets, "category"),
        keywords,
    )


def request_gaps(now: float, history_ts: np.ndarray, length: int) -> np.ndarray:
    """(length,) int64 gap_bucket of (now - event time) for the last `length` events, left-padded."""
    gaps = np.zeros(length, dtype=np.int64)
    ts = history_ts[len(history_ts) - length :] if length < len(history_ts) else history_ts
    if len(ts):
        gaps[length - len(ts) :] = gap_bucket_array(now - ts)
    return gaps


def click_inputs(
    rows: Sequence[tuple[DecisionContext, Candidate]],
    cfg: InterestConfig,
    history_ts: Sequence[np.ndarray],
    length: int,
) -> ClickInputs:
    """Creative and context features for B (context, candidate) rows.

    history_ts[b] holds the timestamps of row b's history (oldest first); the gap from each of its
    last `length` events to the request time becomes `request_gaps` (B, length), aligned with a
    left-padded `length`-slot event batch.
    """
    batch = len(rows)
    creatives = [_creative_row(candidate, cfg) for _, candidate in rows]
    context_cache: dict[int, tuple[list[int], int, np.ndarray]] = {}
    contexts = []
    for context, _ in rows:
        # the rows of one request share a context object; featurise it once
        if id(context) not in context_cache:
            context_cache[id(context)] = _context_row(context, cfg)
        contexts.append(context_cache[id(context)])
    gaps = np.zeros((batch, length), dtype=np.int64)
    for row, (context, _) in enumerate(rows):
        gaps[row] = request_gaps(context.now, history_ts[row], length)
    return ClickInputs(
        creative_ids=torch.from_numpy(np.stack([c[0] for c in creatives]).reshape(batch, 3)),
        creative_category=torch.tensor([c[2] for c in creatives], dtype=torch.long),
        brand=torch.tensor([c[3] for c in creatives], dtype=torch.long),
        products=torch.from_numpy(np.stack([c[1] for c in creatives]).reshape(batch, cfg.max_products, 2)),
        price=torch.tensor([c[4] for c in creatives], dtype=torch.long),
        context=torch.tensor([c[0] for c in contexts], dtype=torch.long).reshape(batch, 5),
        page_category=torch.tensor([c[1] for c in contexts], dtype=torch.long),
        keywords=torch.from_numpy(np.stack([c[2] for c in contexts]).reshape(batch, cfg.max_keywords)),
        request_gaps=torch.from_numpy(gaps),
    )

"""Row tuples of the append-only log tables, in the column order COPY sends them.

Rows are tuples in the column order of ``Base.metadata.tables[table].columns`` (see `columns`);
`make_row` builds one from keyword values and fills server-defaulted columns (``received_at``,
``cost``, ``explored`` …) on the client, because COPY sends every column.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Boolean, DateTime, Integer, Numeric

from adserve.db.tables import Base
from adserve.domain import Candidate, Pricing

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = [
    "WRITABLE_TABLES",
    "candidate_from_row",
    "columns",
    "make_row",
]

# Append-only tables keyed by a unique id, so ON CONFLICT DO NOTHING makes every write idempotent.
WRITABLE_TABLES = ("user_events", "decisions", "impressions", "clicks", "conversions", "rewards")


@dataclass(frozen=True)
class _TableShape:
    columns: tuple[str, ...]
    defaults: dict[str, Callable[[], Any]]
    required: frozenset[str]


def _client_default(column: Any) -> Callable[[], Any]:
    """The value Postgres would have filled in for a server-defaulted column."""
    if isinstance(column.type, DateTime):
        return lambda: datetime.now(UTC)
    raw = str(column.server_default.arg).strip("'")
    if isinstance(column.type, Boolean):
        value: Any = raw.lower() == "true"
    elif isinstance(column.type, Numeric):
        value = float(raw)
    elif isinstance(column.type, Integer):
        value = int(raw)
    else:
        value = raw
    return lambda: value


def _shape(table: str) -> _TableShape:
    columns_ = Base.metadata.tables[table].columns
    defaults = {c.name: _client_default(c) for c in columns_ if c.server_default is not None}
    required = frozenset(c.name for c in columns_ if not c.nullable and c.name not in defaults)
    return _TableShape(tuple(c.name for c in columns_), defaults, required)


_SHAPES = {table: _shape(table) for table in WRITABLE_TABLES}


def columns(table: str) -> tuple[str, ...]:
    """The column order of `table`'s row tuples (``Base.metadata.tables[table].columns``)."""
    return _SHAPES[table].columns


def make_row(table: str, **values: Any) -> tuple:
    """A row tuple for `table` from column values; server-defaulted columns get their default."""
    shape = _SHAPES[table]
    unknown = values.keys() - set(shape.columns)
    if unknown:
        raise ValueError(f"{table} has no column(s) {sorted(unknown)}")
    missing = shape.required - values.keys()
    if missing:
        raise ValueError(f"{table} row lacks required column(s) {sorted(missing)}")
    return tuple(
        values[name] if name in values else (shape.defaults[name]() if name in shape.defaults else None)
        for name in shape.columns
    )


def candidate_from_row(row: Mapping[str, Any], creative_id: str = "id") -> Candidate:
    """A creative row joined with its campaign (`campaign_id`, `advertiser_id`, `pricing`, `bid`,
    `category`, `brand`, `product_ids`, `price`) as scorers and policies see it: the one place
    a `Candidate` is read from Postgres (the catalogue snapshot, training data, logged decisions)."""
    return Candidate(
        creative_id=row[creative_id],
        campaign_id=row["campaign_id"],
        advertiser_id=row["advertiser_id"],
        pricing=Pricing(row["pricing"]),
        bid=float(row["bid"]),
        category=row["category"],
        brand=row["brand"],
        product_ids=tuple(row["product_ids"] or ()),
        price=None if row["price"] is None else float(row["price"]),
    )

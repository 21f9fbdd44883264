"""Row tuples for the append-only tables, in the column order the log writer's COPY expects."""

from __future__ import annotations

from functools import cache
from typing import Any

from adserve.db.tables import Base

__all__ = ["columns_of", "table_row"]


@cache
def columns_of(table: str) -> tuple[str, ...]:
    return tuple(column.name for column in Base.metadata.tables[table].columns)


def table_row(table: str, **values: Any) -> tuple[Any, ...]:
    """A tuple in `table`'s column order; unknown names fail loudly, missing ones are None."""
    columns = columns_of(table)
    unknown = set(values) - set(columns)
    if unknown:
        raise KeyError(f"{table} has no column(s) {sorted(unknown)}")
    return tuple(values.get(name) for name in columns)

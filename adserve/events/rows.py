"""The row tuples of the log tables now live in `adserve.db.rows`, below every package that reads
or writes them (learning included). This name stays only for `events/writer.py`, whose import
moves with its next change; nothing else imports it."""

from __future__ import annotations

from adserve.db.rows import WRITABLE_TABLES, columns, make_row

__all__ = ["WRITABLE_TABLES", "columns", "make_row"]

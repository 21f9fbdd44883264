"""A durable, bounded, ordered on-disk spool of row batches for when Postgres is unreachable.

Each batch is one segment file ``<seq>.<table>.seg`` holding the rows as MessagePack. A segment is
written to a temporary name, fsync'd, renamed and the folder fsync'd, so after `append` returns the
batch survives a crash or power loss; a half-written temporary file is discarded at start.

Rows are encoded without a schema and decoded with a per-table tuple type built from the table's
columns, so UUIDs, timestamps with time zone, dates, arrays, JSON documents and NULLs come back as
the same Python types they went in as.

One process owns a spool folder (an exclusive `flock`), because two processes replaying the same
segments would race on deleting them.
"""

from __future__ import annotations

import fcntl
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from sqlalchemy import ARRAY, Table
from sqlalchemy.dialects.postgresql import JSONB

from adserve.db.tables import Base

__all__ = ["Segment", "Spool", "SpoolLockedError", "row_type"]

_SEGMENT_NAME = re.compile(r"^(\d{12})\.([a-z_]+)\.seg$")


def _encode_other(value: Any) -> Any:
    # a decision row carries its scores as the scorer's float64 array: the binary COPY writes it
    # as it is, and only a spooled row pays for the list
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise NotImplementedError(f"cannot spool a {type(value).__name__}")


_encoder = msgspec.msgpack.Encoder(decimal_format="number", uuid_format="bytes", enc_hook=_encode_other)


class SpoolLockedError(RuntimeError):
    """Another live process holds this spool folder."""


def _column_type(column: Any) -> Any:
    if isinstance(column.type, JSONB):
        python_type: Any = dict[str, Any]
    elif isinstance(column.type, ARRAY):
        python_type = list[column.type.item_type.python_type]
    else:
        # Money is Numeric(asdecimal=False), so float; Decimal values are encoded as numbers.
        python_type = column.type.python_type
    return python_type | None if column.nullable else python_type


def row_type(table: str | Table) -> Any:
    """The tuple type of one row of `table`, columns in `Base.metadata` order (for decoding)."""
    if isinstance(table, str):
        table = Base.metadata.tables[table]
    return tuple[tuple(_column_type(column) for column in table.columns)]  # type: ignore[misc]


@dataclass(frozen=True)
class Segment:
    seq: int
    table: str
    path: Path
    size: int


class Spool:
    """Ordered segments in one folder; blocking file I/O (call through `asyncio.to_thread`)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock_fd: int | None = None
        self._segments: list[Segment] = []
        self._next_seq = 1
        self._bytes = 0
        self._decoders: dict[str, msgspec.msgpack.Decoder] = {}

    def open(self) -> None:
        """Locks the folder and loads the segments a previous process left, oldest first."""
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / "LOCK", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolLockedError(
                f"spool folder {self.directory} is in use by another process; give each process its own"
            ) from None
        self._lock_fd = fd
        for leftover in self.directory.glob("*.tmp"):
            leftover.unlink()
        segments = []
        for path in self.directory.iterdir():
            match = _SEGMENT_NAME.match(path.name)
            if match:
                segments.append(Segment(int(match[1]), match[2], path, path.stat().st_size))
        self._segments = sorted(segments, key=lambda segment: segment.seq)
        self._next_seq = self._segments[-1].seq + 1 if self._segments else 1
        self._bytes = sum(segment.size for segment in self._segments)

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @property
    def segments(self) -> list[Segment]:
        return list(self._segments)

    @property
    def size(self) -> int:
        return self._bytes

    @staticmethod
    def encode(rows: list[tuple]) -> bytes:
        return _encoder.encode(rows)

    def append(self, table: str, payload: bytes) -> Segment:
        """Writes one batch durably; returns only after the data and its name are on disk."""
        seq = self._next_seq
        self._next_seq += 1
        final = self.directory / f"{seq:012d}.{table}.seg"
        temporary = final.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, payload)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, final)
        self._fsync_directory()
        segment = Segment(seq, table, final, len(payload))
        self._segments.append(segment)
        self._bytes += segment.size
        return segment

    def read(self, segment: Segment) -> list[tuple]:
        decoder = self._decoders.get(segment.table)
        if decoder is None:
            decoder = self._decoders[segment.table] = msgspec.msgpack.Decoder(list[row_type(segment.table)])
        return decoder.decode(segment.path.read_bytes())

    def remove(self, segment: Segment) -> None:
        """Deletes a segment whose batch is committed. Not fsync'd: a deletion lost in a crash
        only means a replay that ON CONFLICT DO NOTHING turns into a no-op."""
        segment.path.unlink(missing_ok=True)
        self._forget(segment)

    def quarantine(self, segment: Segment) -> Path:
        """Moves an undecodable segment out of the replay order, kept for a human to inspect."""
        bad = self.directory / "bad"
        bad.mkdir(exist_ok=True)
        target = bad / segment.path.name
        os.replace(segment.path, target)
        self._fsync_directory()
        self._forget(segment)
        return target

    def _forget(self, segment: Segment) -> None:
        self._segments.remove(segment)
        self._bytes -= segment.size

    def _fsync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

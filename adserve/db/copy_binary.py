"""Rows of the log tables in Postgres's binary COPY format, encoded here rather than by asyncpg.

asyncpg's `copy_records_to_table` encodes a record field by field and an array element by
element, checking each element against `collections.abc` on the way: a decision row carries two
arrays of every eligible creative (ids and scores) and cost about 50 µs of the event loop's time
to encode. Here an array is written by numpy in one call and the rest by `struct`, about a fifth
of that. The format is Postgres's ("COPY ... FROM STDIN (FORMAT binary)": a header, per row a
field count and length-prefixed fields, a trailer), for the column types the log tables use.

`encode_rows` raises `Unencodable` for a value outside what it knows (a naive datetime, NaN in a
numeric, None inside an array ...); the writer then hands that batch to asyncpg as before, so
the two paths store the same rows.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

import msgspec
import numpy as np
from sqlalchemy import ARRAY, BigInteger, Boolean, DateTime, Float, Numeric, String, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import Uuid

from adserve.db.tables import Base

__all__ = ["HEADER", "TRAILER", "Unencodable", "encode_rows", "supports"]

HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)  # signature, flags, no extension
TRAILER = struct.pack("!h", -1)
NULL = struct.pack("!i", -1)

PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
INT8_OID, FLOAT8_OID = 20, 701
NUMERIC_POSITIVE, NUMERIC_NEGATIVE = 0x0000, 0x4000

_int8 = struct.Struct("!iq")
_float8 = struct.Struct("!id")
_int4 = struct.Struct("!i")
_array_head = struct.Struct("!iiiiii")  # field length, ndim 1, no nulls, element oid, length, lower bound 1
_empty_array = struct.Struct("!iiii")  # field length, ndim 0, no nulls, element oid
_numeric_head = struct.Struct("!ihhhh")  # field length, ndigits, weight, sign, dscale
_json = msgspec.json.Encoder()
_TRUE, _FALSE = b"\x00\x00\x00\x01\x01", b"\x00\x00\x00\x01\x00"

_ARRAY_DTYPES = {
    INT8_OID: np.dtype([("length", ">i4"), ("value", ">i8")]),
    FLOAT8_OID: np.dtype([("length", ">i4"), ("value", ">f8")]),
}


class Unencodable(ValueError):
    """A value this encoder does not write; the caller falls back to asyncpg's encoding."""


def _uuid(value: Any) -> bytes:
    raw = value.bytes if isinstance(value, uuid.UUID) else uuid.UUID(str(value)).bytes
    return b"\x00\x00\x00\x10" + raw


def _timestamptz(value: Any) -> bytes:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise Unencodable("timestamptz needs an aware datetime")
    delta = value - PG_EPOCH  # exact: integer days, seconds and microseconds
    return _int8.pack(8, (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds)


def _int8_field(value: Any) -> bytes:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):  # float, Decimal: asyncpg's call
        raise Unencodable("bigint needs an int")
    return _int8.pack(8, int(value))


def _float8_field(value: Any) -> bytes:
    if not isinstance(value, float | int) or isinstance(value, bool):
        raise Unencodable("double needs a number")
    return _float8.pack(8, value)


def _bool(value: Any) -> bytes:
    if not isinstance(value, bool):
        raise Unencodable("boolean needs a bool")
    return _TRUE if value else _FALSE


def _text(value: Any) -> bytes:
    if not isinstance(value, str):
        raise Unencodable("text needs a str")
    raw = value.encode()
    return _int4.pack(len(raw)) + raw


def _jsonb(value: Any) -> bytes:
    raw = b"\x01" + _json.encode(value)  # jsonb's binary form: version 1, then the text
    return _int4.pack(len(raw)) + raw


def _numeric(scale: int | None) -> Callable[[Any], bytes]:
    """Postgres's numeric: base-10000 digits, the weight of the first, sign, display scale.
    A float is taken at its exact binary value, as asyncpg sends it, and rounded to the column's
    scale half away from zero, as Postgres rounds it on the way in."""
    quantum = Decimal(1).scaleb(-scale) if scale is not None else None

    def encode(value: Any) -> bytes:
        if isinstance(value, bool) or not isinstance(value, float | int | Decimal):
            raise Unencodable("numeric needs a number")
        number = value if isinstance(value, Decimal) else Decimal(value)
        if not number.is_finite():
            raise Unencodable("numeric NaN or infinity")
        if quantum is not None:
            try:
                number = number.quantize(quantum, rounding=ROUND_HALF_UP)
            except InvalidOperation as exc:  # more digits than Decimal's context holds
                raise Unencodable("numeric too long") from exc
        sign, digits, exponent = number.as_tuple()
        assert isinstance(exponent, int)
        dscale = max(0, -exponent)
        pad = -dscale % 4  # the fraction fills whole base-10000 digits
        # the value × 10^(dscale + pad): an integer, exactly (Decimal's own arithmetic would round)
        rest = int("".join(map(str, digits))) * 10 ** (exponent + dscale + pad)
        groups: list[int] = []
        while rest:
            rest, group = divmod(rest, 10_000)
            groups.append(group)
        groups.reverse()
        weight = len(groups) - 1 - (dscale + pad) // 4
        while groups and groups[-1] == 0:
            groups.pop()
        if not groups:
            weight = 0
        negative = bool(sign) and bool(groups)
        body = struct.pack(f"!{len(groups)}h", *groups)
        return (
            _numeric_head.pack(
                8 + len(body), len(groups), weight, NUMERIC_NEGATIVE if negative else NUMERIC_POSITIVE, dscale
            )
            + body
        )

    return encode


def _array(oid: int) -> Callable[[Any], bytes]:
    dtype = _ARRAY_DTYPES[oid]
    kinds = "iu" if oid == INT8_OID else "fiu"  # numpy's dtype kinds each array accepts

    def encode(value: Any) -> bytes:
        if not isinstance(value, list | tuple | np.ndarray):
            raise Unencodable("array needs a list")
        values = np.asarray(value)  # ints beyond int64, None or mixed types: object dtype
        if values.ndim != 1 or (len(values) and values.dtype.kind not in kinds):
            raise Unencodable("a one-dimensional array of numbers expected")
        if not len(values):
            return _empty_array.pack(12, 0, 0, oid)
        cells = np.empty(len(values), dtype=dtype)
        cells["length"] = 8
        cells["value"] = values
        body = cells.tobytes()
        return _array_head.pack(20 + len(body), 1, 0, oid, len(values), 1) + body

    return encode


def _encoder_for(column: Any) -> Callable[[Any], bytes] | None:
    kind = column.type
    if isinstance(kind, ARRAY):
        item = kind.item_type
        if isinstance(item, BigInteger):
            return _array(INT8_OID)
        if isinstance(item, Float):
            return _array(FLOAT8_OID)
        return None
    if isinstance(kind, Uuid):
        return _uuid
    if isinstance(kind, DateTime) and kind.timezone:
        return _timestamptz
    if isinstance(kind, BigInteger):
        return _int8_field
    if isinstance(kind, Float):  # before Numeric: Float is a Numeric
        return _float8_field
    if isinstance(kind, Numeric):
        return _numeric(kind.scale)
    if isinstance(kind, Boolean):
        return _bool
    if isinstance(kind, JSONB):
        return _jsonb
    if isinstance(kind, String | Text):
        return _text
    return None


def _table_encoders(table: str) -> tuple[Callable[[Any], bytes], ...] | None:
    encoders = tuple(_encoder_for(column) for column in Base.metadata.tables[table].columns)
    return None if any(encoder is None for encoder in encoders) else encoders  # type: ignore[return-value]


_ENCODERS: dict[str, tuple[Callable[[Any], bytes], ...] | None] = {}


def supports(table: str) -> bool:
    if table not in _ENCODERS:
        _ENCODERS[table] = _table_encoders(table)
    return _ENCODERS[table] is not None


def encode_rows(table: str, rows: Sequence[tuple]) -> bytes:
    """`rows` (tuples in `db.rows.columns(table)` order) as binary COPY rows, without the
    header and trailer. Raises `Unencodable` for a value it does not write."""
    if not supports(table):
        raise Unencodable(f"{table} has a column type this encoder does not write")
    encoders = _ENCODERS[table]
    assert encoders is not None
    count = struct.pack("!h", len(encoders))
    parts: list[bytes] = []
    for row in rows:
        if len(row) != len(encoders):
            raise Unencodable("row of the wrong width")
        parts.append(count)
        for encode, value in zip(encoders, row, strict=True):
            parts.append(NULL if value is None else encode(value))
    return b"".join(parts)

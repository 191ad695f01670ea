"""Declared fields of a request or response, checked once where they are decoded.

An API's message is a ``NamedTuple`` and a tuple of :class:`Field` that names
its fields in the same order, with their CBOR type and bounds. :func:`decode`
turns a peer's metadata into that tuple or raises one error naming the field
(``InvalidRequest`` for a request, ``ProtocolError`` for a response), so a
handler or a client gets values it can use as they are. ``docs/PROTOCOL.md``
lists the same fields; ``tests/protocol/test_proto_docs.py`` compares them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final, Generic, TypeVar

import cbor2

from edge.protocol.cbor import loads_exact
from edge.protocol.errors import HeadwaterError, InvalidRequest, ProtocolError

T = TypeVar("T")
I64_MAX = 2**63 - 1
# Keys of a map field and texts inside one: names and short words, never documents.
MAP_KEY_CHARS = 200
SCALAR_TEXT_CHARS = 1000
# Undeclared values (status rows, health figures): nested this deep, this long.
FREE_DEPTH = 3
MAX_FREE_ITEMS = 10_000


class Kind(Enum):
    """A field's CBOR type, as ``docs/PROTOCOL.md`` spells it."""

    INT = "integer"
    TEXT = "text"
    BOOL = "boolean"
    FLOAT = "float"
    BYTES = "bytes"
    INTS = "array of integers"
    TEXTS = "array of text"
    ROWS = "array of maps"
    # Each element an array holding ``row_fields`` by position (compact rows).
    TUPLES = "array of arrays"
    # Keys of ``keys`` kind, values checked by ``values`` (a scalar when None).
    MAP = "map"


@dataclass(frozen=True)
class Field:
    """One field. ``low``/``high`` bound an integer's value (each element's for
    ``INTS``) or a text's length in characters; ``items`` bounds an array's length."""

    name: str
    kind: Kind
    required: bool = True
    default: Any = None
    low: int | None = None
    high: int | None = None
    items: int | None = None
    choices: tuple[str, ...] | None = None
    # ROWS: the NamedTuple of one element and its fields.
    row: type[Any] | None = None
    row_fields: tuple[Field, ...] = ()
    # MAP: what a key is, and the field each value must satisfy.
    keys: Kind = Kind.TEXT
    values: Field | None = None

    def take(self, meta: Mapping[Any, Any], error: type[HeadwaterError]) -> Any:
        value = meta.get(self.name)
        if value is None:
            if self.required:
                raise error(f"missing field {self.name!r}", field=self.name)
            return self.default
        return self.check(value, error)

    def check(self, value: Any, error: type[HeadwaterError]) -> Any:
        if self.kind is Kind.INT:
            return self._int(value, error)
        if self.kind is Kind.TEXT:
            return self._text(value, error)
        if self.kind is Kind.BOOL:
            if not isinstance(value, bool):
                raise self._type_error(value, error)
            return value
        if self.kind is Kind.FLOAT:
            if not _is_number(value) or not math.isfinite(value):
                raise self._type_error(value, error)
            return float(value)
        if self.kind is Kind.BYTES:
            return self._bytes(value, error)
        if self.kind is Kind.MAP:
            return self._map(value, error)
        items = self._array(value, error)
        if self.kind is Kind.INTS:
            return tuple(self._int(v, error) for v in items)
        if self.kind is Kind.TEXTS:
            return tuple(self._text(v, error) for v in items)
        if self.kind is Kind.TUPLES:
            return tuple(self._tuple(item, error) for item in items)
        if self.row is None:
            # Rows shown to people (listings, status): free maps, checked for shape.
            return tuple(self._free_row(item, error) for item in items)
        rows = []
        for item in items:
            if not isinstance(item, dict):
                raise error(f"field {self.name!r} must hold maps", field=self.name)
            rows.append(decode_with(self.row, self.row_fields, item, error))
        return tuple(rows)

    def _int(self, value: Any, error: type[HeadwaterError]) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise self._type_error(value, error)
        low = self.low if self.low is not None else -I64_MAX - 1
        high = self.high if self.high is not None else I64_MAX
        if not low <= value <= high:
            raise error(f"field {self.name!r} must be {low}..{high}", field=self.name)
        return value

    def _text(self, value: Any, error: type[HeadwaterError]) -> str:
        if not isinstance(value, str):
            raise self._type_error(value, error)
        low, high = self.low or 0, self.high
        if len(value) < low or (high is not None and len(value) > high):
            raise error(f"field {self.name!r} must be {low}..{high} characters",
                        field=self.name)
        if self.choices is not None and value not in self.choices:
            raise error(f"field {self.name!r} must be one of {', '.join(self.choices)}",
                        field=self.name)
        return value

    def _tuple(self, value: Any, error: type[HeadwaterError]) -> Any:
        if not isinstance(value, list) or len(value) != len(self.row_fields):
            raise error(f"field {self.name!r} must hold arrays of {len(self.row_fields)}",
                        field=self.name)
        checked = [field.check(v, error) for field, v in zip(self.row_fields, value,
                                                              strict=True)]
        return checked if self.row is None else self.row(*checked)

    def _bytes(self, value: Any, error: type[HeadwaterError]) -> bytes:
        if not isinstance(value, bytes):
            raise self._type_error(value, error)
        low, high = self.low or 0, self.high
        if len(value) < low or (high is not None and len(value) > high):
            raise error(f"field {self.name!r} must be {low}..{high} bytes", field=self.name)
        return value

    def _map(self, value: Any, error: type[HeadwaterError]) -> dict[Any, Any]:
        if not isinstance(value, dict):
            raise self._type_error(value, error)
        if self.items is not None and len(value) > self.items:
            raise error(f"field {self.name!r} holds at most {self.items} entries",
                        field=self.name)
        key_field = Field(self.name, self.keys, high=MAP_KEY_CHARS)
        out = {}
        for key, item in value.items():
            out[key_field.check(key, error)] = (
                _free(self.name, item, error, FREE_DEPTH) if self.values is None
                else self.values.check(item, error))
        return out

    def _free_row(self, value: Any, error: type[HeadwaterError]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise error(f"field {self.name!r} must hold maps", field=self.name)
        result: dict[str, Any] = _free(self.name, value, error, FREE_DEPTH)
        return result

    def _array(self, value: Any, error: type[HeadwaterError]) -> list[Any]:
        if not isinstance(value, list):
            raise self._type_error(value, error)
        if self.items is not None and len(value) > self.items:
            raise error(f"field {self.name!r} holds at most {self.items} items",
                        field=self.name)
        return value

    def _type_error(self, value: Any, error: type[HeadwaterError]) -> HeadwaterError:
        return error(f"field {self.name!r} must be {self.kind.value}, not "
                     f"{type(value).__name__}", field=self.name)


def _free(name: str, value: Any, error: type[HeadwaterError], depth: int) -> Any:
    """A value without a declared field: a scalar, or (``depth`` levels deep at most)
    an array or a text-keyed map of them, each bounded like a declared field."""
    if isinstance(value, list | dict) and depth > 0:
        if len(value) > MAX_FREE_ITEMS:
            raise error(f"field {name!r} holds more than {MAX_FREE_ITEMS} items", field=name)
        if isinstance(value, list):
            return [_free(name, v, error, depth - 1) for v in value]
        if not all(isinstance(k, str) and len(k) <= MAP_KEY_CHARS for k in value):
            raise error(f"field {name!r} holds a map with a key that is not a short text",
                        field=name)
        return {k: _free(name, v, error, depth - 1) for k, v in value.items()}
    return _scalar(name, value, error)


def _scalar(name: str, value: Any, error: type[HeadwaterError]) -> Any:
    """Null, a boolean, an i64, a finite float or a short text."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not -I64_MAX - 1 <= value <= I64_MAX:
            raise error(f"field {name!r} holds an integer outside the i64 range", field=name)
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    if isinstance(value, str) and len(value) <= SCALAR_TEXT_CHARS:
        return value
    raise error(f"field {name!r} holds a {type(value).__name__} where a number, "
                f"boolean or short text belongs", field=name)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def decode_with(cls: type[T], fields: Sequence[Field], meta: Mapping[Any, Any],
                error: type[HeadwaterError]) -> T:
    return cls(**{f.name: f.take(meta, error) for f in fields})


@dataclass(frozen=True)
class Message(Generic[T]):
    """A message type and its declared fields (the same names, in the same order)."""

    cls: type[T]
    fields: tuple[Field, ...]


def decode_request(message: Message[T], meta: Mapping[Any, Any]) -> T:
    """A request's fields, checked; a bad one raises ``InvalidRequest``."""
    return decode_with(message.cls, message.fields, meta, InvalidRequest)


def decode_response(message: Message[T], meta: Mapping[Any, Any]) -> T:
    """A response's fields, checked; a bad one raises ``ProtocolError``: the peer
    is not speaking this protocol."""
    return decode_with(message.cls, message.fields, meta, ProtocolError)


def to_wire(value: Any) -> Any:
    """A message (or row) as CBOR-ready maps and lists."""
    if isinstance(value, tuple) and hasattr(value, "_asdict"):
        return {k: to_wire(v) for k, v in value._asdict().items()}
    if isinstance(value, tuple | list):
        return [to_wire(v) for v in value]
    return value


@dataclass(frozen=True)
class Api:
    """An API's request and its response (for a stream: each frame it pushes)."""

    request: Message[Any]
    response: Message[Any]
    stream: bool = False


# A row list larger than this travels in the frame's blob (one CBOR array) rather
# than in its metadata, which is bounded by framing.MAX_META_BYTES: an SPU's
# assignment and status grow with the partitions it hosts (a cloud SPU holding
# thousands of sites' mirrors).
ROWS_IN_META_BYTES: Final = 64 * 1024


def rows_out(field: str, rows: list[Any]) -> tuple[dict[str, Any], bytes]:
    """``({field: rows}, b"")`` when small, else ``({}, rows as one CBOR array)``:
    what a sender puts in the metadata and the blob."""
    blob = cbor2.dumps(rows)
    if len(blob) <= ROWS_IN_META_BYTES:
        return {field: rows}, b""
    return {}, blob


def rows_in(meta: Mapping[Any, Any], blob: bytes, field: str,
            error: type[HeadwaterError]) -> Mapping[Any, Any]:
    """``meta`` with ``field`` read from ``blob`` when the sender put it there
    (``rows_out``); the schema then checks it like any field."""
    if not blob:
        return meta
    if field in meta:
        raise error(f"field {field!r} is both in the metadata and in the blob", field=field)
    try:
        rows = loads_exact(blob)
    except Exception as exc:  # cbor2 raises several types for bad input
        raise error(f"field {field!r}: the blob is not one CBOR item: {exc}",
                    field=field) from None
    return {**meta, field: rows}

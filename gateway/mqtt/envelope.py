"""Where the readings of a multi-reading message lie in its payload, as byte spans.

A multi-reading message (docs/GATEWAY.md, *Several readings in one message*) is a
map whose ``r`` is an array of readings. Each reading becomes one record, and its
record value is the reading's own bytes cut out of the payload, so the gateway
never re-encodes what a device sent (cbor2 would, for example, shorten a float64
that a float32 holds exactly, and JSON has many spellings of one number).

Pure functions over payloads that the full decoder (cbor2, ``json``) has already
accepted; they only locate items. Should they ever disagree with that decoder
they raise ``EnvelopeError``, and the caller dead-letters the message.
"""

from __future__ import annotations

import json
from typing import Final, NamedTuple

import cbor2

READINGS_KEY: Final = "r"
_JSON_WS: Final = " \t\n\r"
_JSON = json.JSONDecoder()


class EnvelopeError(ValueError):
    """The payload does not have the structure its decoded value promised."""


class Spans(NamedTuple):
    """The top-level map's number of pairs, and ``(start, end)`` of each reading."""

    pairs: int
    readings: list[tuple[int, int]]


# --- CBOR (RFC 8949) --------------------------------------------------------------


def _argument(data: bytes, pos: int, info: int) -> tuple[int, int]:
    """The argument of a head whose initial byte is at ``pos - 1``, and the next position."""
    if info < 24:
        return info, pos
    if info > 27:
        raise EnvelopeError(f"reserved additional information {info} at byte {pos - 1}")
    size = 1 << (info - 24)
    if pos + size > len(data):
        raise EnvelopeError("truncated head")
    return int.from_bytes(data[pos:pos + size], "big"), pos + size


def cbor_item_end(data: bytes, pos: int) -> int:
    """Where the CBOR data item that starts at ``pos`` ends (iterative: depth costs no
    stack; indefinite lengths and tags included)."""
    # Items still to skip per open container; None for an indefinite one (ends at 0xFF).
    todo: list[int | None] = [1]
    while todo:
        left = todo[-1]
        if left == 0:
            todo.pop()
            continue
        if pos >= len(data):
            raise EnvelopeError("truncated item")
        initial = data[pos]
        pos += 1
        if left is None:
            if initial == 0xFF:
                todo.pop()
                continue
        else:
            todo[-1] = left - 1
        major, info = initial >> 5, initial & 0x1F
        if info == 31:
            if major not in (2, 3, 4, 5):
                raise EnvelopeError(f"unexpected break or indefinite length at byte {pos - 1}")
            todo.append(None)
            continue
        arg, pos = _argument(data, pos, info)
        if major in (2, 3):
            pos += arg
        elif major == 4:
            todo.append(arg)
        elif major == 5:
            todo.append(2 * arg)
        elif major == 6:
            todo.append(1)
    if pos > len(data):
        raise EnvelopeError("truncated string")
    return pos


def _cbor_container(data: bytes, pos: int, major: int) -> tuple[int | None, int]:
    """Length (None: indefinite) of the array or map whose head is at ``pos``, and
    where its first item starts."""
    if pos >= len(data) or data[pos] >> 5 != major:
        raise EnvelopeError(f"expected CBOR major type {major} at byte {pos}")
    info = data[pos] & 0x1F
    if info == 31:
        return None, pos + 1
    return _argument(data, pos + 1, info)


def _cbor_items(data: bytes, pos: int, count: int | None) -> tuple[list[tuple[int, int]], int]:
    """Spans of ``count`` items (None: up to a break) from ``pos``, and the end."""
    spans: list[tuple[int, int]] = []
    while (count is None and data[pos:pos + 1] != b"\xff") or (
        count is not None and len(spans) < count
    ):
        end = cbor_item_end(data, pos)
        spans.append((pos, end))
        pos = end
    return spans, pos + 1 if count is None else pos


def cbor_spans(payload: bytes) -> Spans:
    """Pairs of the top-level map and the spans of the items of its ``r`` array."""
    count, pos = _cbor_container(payload, 0, 5)
    items, end = _cbor_items(payload, pos, None if count is None else 2 * count)
    if end != len(payload):
        raise EnvelopeError("the map does not fill the payload")
    readings: list[tuple[int, int]] | None = None
    for (k_start, k_end), (v_start, _) in zip(items[::2], items[1::2], strict=True):
        try:
            key = cbor2.loads(payload[k_start:k_end])
        except Exception as exc:  # the whole payload decoded, so this cannot happen
            raise EnvelopeError(f"key at byte {k_start}: {exc}") from None
        if key == READINGS_KEY:
            length, first = _cbor_container(payload, v_start, 4)
            readings, _ = _cbor_items(payload, first, length)
    if readings is None:
        raise EnvelopeError("no 'r' array")
    return Spans(len(items) // 2, readings)


# --- JSON (RFC 8259) --------------------------------------------------------------


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _JSON_WS:
        pos += 1
    return pos


def _expect(text: str, pos: int, chars: str) -> tuple[str, int]:
    pos = _skip_ws(text, pos)
    if pos >= len(text) or text[pos] not in chars:
        raise EnvelopeError(f"expected one of {chars!r} at character {pos}")
    return text[pos], pos + 1


def _json_value(text: str, pos: int) -> tuple[object, int]:
    pos = _skip_ws(text, pos)
    try:
        return _JSON.raw_decode(text, pos)
    except (ValueError, RecursionError) as exc:
        raise EnvelopeError(f"value at character {pos}: {exc}") from None


def _json_array(text: str, pos: int) -> tuple[list[tuple[int, int]], int]:
    _, pos = _expect(text, pos, "[")
    spans: list[tuple[int, int]] = []
    pos = _skip_ws(text, pos)
    if text[pos:pos + 1] == "]":
        return spans, pos + 1
    while True:
        start = _skip_ws(text, pos)
        _, pos = _json_value(text, start)
        spans.append((start, pos))
        sep, pos = _expect(text, pos, ",]")
        if sep == "]":
            return spans, pos


def json_spans(text: str) -> Spans:
    """Like ``cbor_spans`` for a JSON object (``text``: the payload decoded as UTF-8);
    the spans are byte offsets into the payload."""
    _, pos = _expect(text, 0, "{")
    pairs = 0
    readings: list[tuple[int, int]] | None = None
    pos = _skip_ws(text, pos)
    if text[pos:pos + 1] == "}":
        pos += 1
    else:
        while True:
            key, pos = _json_value(text, pos)
            _, pos = _expect(text, pos, ":")
            pairs += 1
            if key == READINGS_KEY:
                readings, pos = _json_array(text, pos)
            else:
                _, pos = _json_value(text, pos)
            sep, pos = _expect(text, pos, ",}")
            if sep == "}":
                break
    if _skip_ws(text, pos) != len(text):
        raise EnvelopeError("the object does not fill the payload")
    if readings is None:
        raise EnvelopeError("no 'r' array")
    return Spans(pairs, _byte_spans(text, readings))


def _byte_spans(text: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Character spans of ``text`` as byte spans of its UTF-8 encoding, in one pass."""
    out: list[tuple[int, int]] = []
    chars = offset = 0
    for start, end in spans:
        offset += len(text[chars:start].encode())
        size = len(text[start:end].encode())
        out.append((offset, offset + size))
        offset += size
        chars = end
    return out



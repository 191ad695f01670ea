"""Frame codec: round trips whole, byte by byte and in random chunks; limits from the prefix."""

from __future__ import annotations

import struct
from typing import Any

import cbor2
import pytest
from fuzz_decoders import frames_bytewise, frames_whole
from hypothesis import given, settings
from hypothesis import strategies as st
from protocol_strategies import metas

from edge.protocol.errors import FrameTooLarge, ProtocolError
from edge.protocol.framing import (
    MAX_FRAME_BYTES,
    MAX_META_BYTES,
    PREFIX,
    PREFIX_SIZE,
    Frame,
    FrameDecoder,
    decode_meta,
    encode_frame,
)

FAST = settings(max_examples=60, deadline=None)
blobs = st.binary(max_size=300)
frame_lists = st.lists(st.tuples(metas, blobs), min_size=1, max_size=5)


def feed_chunks(chunks: list[bytes]) -> list[Frame]:
    dec = FrameDecoder()
    out: list[Frame] = []
    for chunk in chunks:
        dec.feed(chunk)
        out.extend(dec.frames())
    assert dec.buffered == 0
    return out


@FAST
@given(metas, blobs)
def test_round_trip_whole_and_bytewise(meta: dict[Any, Any], blob: bytes) -> None:
    wire = encode_frame(meta, blob)
    assert struct.unpack_from(">I", wire)[0] == len(wire) - 4
    whole, err, left = frames_whole(wire)
    assert (whole, err, left) == ([Frame(meta, blob)], None, 0)
    assert frames_bytewise(wire) == ([Frame(meta, blob)], None, 0)


@FAST
@given(frame_lists, st.data())
def test_back_to_back_frames_in_random_chunks(
    frames: list[tuple[dict[Any, Any], bytes]], data: st.DataObject
) -> None:
    wire = b"".join(encode_frame(m, b) for m, b in frames)
    cuts = sorted(data.draw(st.sets(st.integers(0, len(wire)), max_size=12)))
    chunks = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
    assert feed_chunks(chunks) == [Frame(m, b) for m, b in frames]


@FAST
@given(frame_lists)
def test_partial_frame_waits_for_more(frames: list[tuple[dict[Any, Any], bytes]]) -> None:
    wire = b"".join(encode_frame(m, b) for m, b in frames)
    last = encode_frame(*frames[-1])
    dec = FrameDecoder()
    dec.feed(wire[:-1])
    assert dec.frames() == [Frame(m, b) for m, b in frames[:-1]]
    assert dec.buffered == len(last) - 1
    assert dec.next_frame() is None
    dec.feed(wire[-1:])
    assert dec.frames() == [Frame(*frames[-1])]
    assert dec.buffered == 0


def test_empty_feed_is_harmless() -> None:
    dec = FrameDecoder()
    dec.feed(b"")
    assert dec.next_frame() is None
    assert dec.frames() == []


# -- limits, checked from the 8-byte prefix ---------------------------------------------


@FAST
@given(st.integers(1, 1 << 16), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_oversized_lengths_fail_from_the_prefix_alone(
    limit: int, length: int, meta_len: int
) -> None:
    dec = FrameDecoder(max_frame_bytes=limit, max_meta_bytes=limit // 2)
    prefix = PREFIX.pack(length, meta_len)
    for byte in prefix[:-1]:
        dec.feed(bytes([byte]))
        assert dec.next_frame() is None
    dec.feed(prefix[-1:])
    if length > limit or meta_len > limit // 2:
        with pytest.raises(FrameTooLarge) as info:
            dec.next_frame()
        assert dec.buffered == PREFIX_SIZE  # nothing of the body was waited for
        assert info.value.data["limit"] in (limit, limit // 2)
        assert info.value.data["length"] > info.value.data["limit"]
    elif meta_len + 4 > length:
        with pytest.raises(ProtocolError):
            dec.next_frame()
    else:
        assert dec.next_frame() is None  # a plausible prefix waits for its body


@pytest.mark.parametrize(
    ("length", "meta_len"),
    [
        (MAX_FRAME_BYTES + 1, 1),
        (2**32 - 1, 1),
        (MAX_FRAME_BYTES, MAX_META_BYTES + 1),
        (MAX_FRAME_BYTES, 2**32 - 1),
    ],
)
def test_default_limits(length: int, meta_len: int) -> None:
    dec = FrameDecoder()
    dec.feed(PREFIX.pack(length, meta_len))
    with pytest.raises(FrameTooLarge):
        dec.next_frame()
    assert dec.buffered == PREFIX_SIZE


def test_frame_at_the_limit_is_accepted() -> None:
    meta = {"k": "x" * 10}
    meta_len = len(cbor2.dumps(meta))
    blob = b"b" * 100
    dec = FrameDecoder(max_frame_bytes=4 + meta_len + len(blob), max_meta_bytes=meta_len)
    dec.feed(encode_frame(meta, blob))
    assert dec.frames() == [Frame(meta, blob)]
    dec = FrameDecoder(max_frame_bytes=4 + meta_len + len(blob) - 1)
    dec.feed(encode_frame(meta, blob))
    with pytest.raises(FrameTooLarge):
        dec.frames()


def test_limit_errors_carry_data() -> None:
    dec = FrameDecoder(max_frame_bytes=100, max_meta_bytes=10)
    dec.feed(PREFIX.pack(50, 11))
    with pytest.raises(FrameTooLarge) as info:
        dec.next_frame()
    assert info.value.data == {"length": 11, "limit": 10}
    assert isinstance(info.value, ProtocolError)


@pytest.mark.parametrize(("length", "meta_len"), [(0, 0), (3, 0), (4, 1), (10, 7)])
def test_meta_longer_than_frame(length: int, meta_len: int) -> None:
    dec = FrameDecoder()
    dec.feed(PREFIX.pack(length, meta_len))
    with pytest.raises(ProtocolError) as info:
        dec.next_frame()
    assert not isinstance(info.value, FrameTooLarge)


# -- metadata ---------------------------------------------------------------------------


BAD_META = {
    "empty": b"",
    "array": cbor2.dumps([1, 2]),
    "text": cbor2.dumps("x"),
    "trailing byte": cbor2.dumps({"id": 1}) + b"\x00",
    "two maps": cbor2.dumps({}) + cbor2.dumps({}),
    "duplicate key": bytes.fromhex("a26269640162696402"),  # {"id": 1, "id": 2}
    "truncated": cbor2.dumps({"id": 1, "topic": "abc"})[:-1],
    "reserved byte": b"\x1c",
    "bad utf-8": b"\xa1\x62\xff\xfe\x00",
}


@pytest.mark.parametrize("raw", BAD_META.values(), ids=BAD_META.keys())
def test_bad_meta_is_a_protocol_error(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_meta(raw)
    dec = FrameDecoder()
    dec.feed(PREFIX.pack(4 + len(raw) + 2, len(raw)) + raw + b"zz")
    with pytest.raises(ProtocolError):
        dec.next_frame()


def test_good_frame_before_bad_one_is_returned_first() -> None:
    good = encode_frame({"id": 1}, b"x")
    dec = FrameDecoder(max_frame_bytes=64)
    dec.feed(good + PREFIX.pack(65, 0))
    assert dec.next_frame() == Frame({"id": 1}, b"x")
    with pytest.raises(FrameTooLarge):
        dec.next_frame()

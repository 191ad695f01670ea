"""Properties of the serial codec: round trips, any bytes never crash, resync after damage."""

from __future__ import annotations

import contextlib
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.serial import cobs
from gateway.serial.codec import BadFrame, FrameDecoder, FrameReceived
from gateway.serial.errors import SerialProtocolError
from gateway.serial.frames import (
    MAX_FRAME,
    NO_SEQ,
    SEQ_MASK,
    Ack,
    DeviceRecord,
    Frame,
    Hello,
    Nak,
    NakReason,
    Records,
    Welcome,
    decode_frame,
    encode_frame,
    wire,
)

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-",
                min_size=1, max_size=32)  # fmt: skip
u32 = st.integers(0, 2**32 - 1)
seqs = st.integers(0, SEQ_MASK)
records = st.lists(
    st.builds(DeviceRecord, st.integers(0, 2**64 - 1), st.binary(max_size=40)),
    min_size=1, max_size=20,
).map(tuple)  # fmt: skip

frames: st.SearchStrategy[Frame] = st.one_of(
    st.builds(Hello, u32, names, st.text(alphabet="0123456789.a-z", max_size=16)),
    st.builds(Welcome, u32, st.integers(0, 0xFFFF), st.integers(0, 255)),
    st.builds(Records, u32, seqs, seqs, names, records),
    st.builds(Ack, u32, seqs, names),
    st.builds(Nak, st.sampled_from(NakReason), st.integers(0, 0xFFFF),
              st.one_of(seqs, st.just(NO_SEQ)), st.one_of(st.just(""), names)),
)  # fmt: skip


@given(st.binary(max_size=2000))
def test_cobs_round_trip(data: bytes) -> None:
    enc = cobs.encode(data)
    assert 0 not in enc
    assert len(enc) <= cobs.max_encoded(len(data))
    assert cobs.decode(enc) == data


@given(frames)
def test_frame_round_trip(frame: Frame) -> None:
    raw = encode_frame(frame)
    assert len(raw) <= MAX_FRAME
    assert decode_frame(raw) == frame
    assert FrameDecoder().feed(wire(frame)) == [FrameReceived(frame)]


@given(st.binary(max_size=3000))
def test_any_bytes_never_crash_the_stream_decoder(data: bytes) -> None:
    dec = FrameDecoder()
    for event in dec.feed(data):
        assert isinstance(event, FrameReceived | BadFrame)


@given(st.binary(max_size=1100))
def test_decode_raises_only_its_protocol_error(data: bytes) -> None:
    for fn in (cobs.decode, decode_frame):
        with contextlib.suppress(SerialProtocolError):
            fn(data)


@given(st.lists(frames, min_size=1, max_size=8), st.randoms(use_true_random=False))
def test_byte_at_a_time_equals_whole(fs: list[Frame], rnd: random.Random) -> None:
    data = b"".join(wire(f) for f in fs)
    whole = FrameDecoder().feed(data)
    dec = FrameDecoder()
    pieces: list[FrameReceived | BadFrame] = []
    i = 0
    while i < len(data):
        n = rnd.choice((1, 1, 2, 3, 7, 64))
        pieces += dec.feed(data[i : i + n])
        i += n
    assert whole == pieces == [FrameReceived(f) for f in fs]


@settings(max_examples=300)
@given(
    st.lists(frames, min_size=2, max_size=8),
    st.lists(st.binary(min_size=1, max_size=50), min_size=1, max_size=8),
    st.lists(st.integers(0, 10**6), max_size=6),
    st.randoms(use_true_random=False),
)
def test_resync_after_garbage_and_flipped_bits(
    fs: list[Frame], garbage: list[bytes], flips: list[int], rnd: random.Random
) -> None:
    """Every frame that arrives undamaged after a delimiter is decoded; nothing else is."""
    chunks = [wire(f) for f in fs]
    damaged = set()
    for bit in flips:
        k = bit % len(chunks)
        b = bytearray(chunks[k])
        pos = (bit // len(chunks)) % (len(b) * 8)
        b[pos // 8] ^= 1 << (pos % 8)
        chunks[k] = bytes(b)
        damaged.add(k)
    line = b""
    intact = []
    for k, chunk in enumerate(chunks):
        separated = k == 0 or line.endswith(b"\x00")
        if rnd.random() < 0.5:
            line += rnd.choice(garbage)
            line += b"\x00"  # a sender may start a frame with 0x00 to end line noise
            separated = True
        line += chunk
        # A flipped delimiter merges a frame with the next one: both are lost.
        if k not in damaged and separated:
            intact.append(fs[k])
    got = [e.frame for e in FrameDecoder().feed(line) if isinstance(e, FrameReceived)]
    # Intact frames after a delimiter all arrive; nothing arrives that was not sent.
    for f in intact:
        assert f in got
    assert all(f in fs for f in got)

"""zstd on the uplink's wire: exact round trips, and inflating bounded before it runs."""

from __future__ import annotations

import json
import random

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from edge.protocol import batch as codec
from edge.protocol import messages, wirezstd
from edge.protocol.errors import CorruptMessage, UnsupportedVersion
from edge.protocol.messages import ApiKey

LIMIT = 8 * 1024 * 1024


def telemetry_batches(count: int = 20, per_batch: int = 160) -> bytes:
    """Stored batches of JSON sensor readings, as a gateway would produce them."""
    rng = random.Random(7)
    out = bytearray()
    for b in range(count):
        rows = [[0, b"sensor-%d" % rng.randrange(40), json.dumps({
            "device": f"sensor-{rng.randrange(40)}", "seq": b * per_batch + i,
            "ts": 1_700_000_000_000 + (b * per_batch + i) * 250,
            "temperature_c": round(rng.uniform(18, 26), 2),
            "humidity_pct": round(rng.uniform(30, 60), 1),
            "battery_mv": rng.randrange(3300, 4200), "status": "ok"}).encode()]
            for i in range(per_batch)]
        piece = bytearray(codec.encode_batch(rows, first_timestamp=1_700_000_000_000 + b))
        codec.set_base_offset(piece, 0, b * per_batch)
        out += piece
    return bytes(out)


def test_round_trip_is_byte_exact() -> None:
    blob = telemetry_batches()
    packed = wirezstd.compress(blob)
    assert wirezstd.decompress(packed, len(blob), LIMIT) == blob


def test_json_telemetry_compresses_at_least_3x() -> None:
    blob = telemetry_batches()
    assert len(blob) / len(wirezstd.compress(blob)) >= 3.0


def test_a_bomb_is_refused_before_inflating() -> None:
    bomb = wirezstd.compress(bytes(64 * 1024 * 1024))  # 64 MiB of zeros in a few KiB
    assert len(bomb) < 64 * 1024
    with pytest.raises(CorruptMessage, match="raw_bytes must be in"):
        wirezstd.decompress(bomb, 64 * 1024 * 1024, LIMIT)
    with pytest.raises(CorruptMessage, match="declares"):  # lying about the size
        wirezstd.decompress(bomb, 1000, LIMIT)


def test_a_frame_without_content_size_is_refused() -> None:
    packed = zstandard.ZstdCompressor(write_content_size=False).compress(b"x" * 1000)
    with pytest.raises(CorruptMessage, match="without a content size"):
        wirezstd.decompress(packed, 1000, LIMIT)


@pytest.mark.parametrize("raw_bytes", [0, -1, LIMIT + 1, 2**70])
def test_raw_bytes_out_of_bounds(raw_bytes: int) -> None:
    with pytest.raises(CorruptMessage):
        wirezstd.decompress(wirezstd.compress(b"abc"), raw_bytes, LIMIT)


def test_truncated_frame() -> None:
    blob = telemetry_batches(2)
    packed = wirezstd.compress(blob)
    with pytest.raises(CorruptMessage):
        wirezstd.decompress(packed[:-5], len(blob), LIMIT)


@given(st.binary(max_size=512), st.integers(min_value=-5, max_value=LIMIT + 5))
def test_any_bytes_inflate_or_raise_corrupt_message(data: bytes, raw_bytes: int) -> None:
    try:
        out = wirezstd.decompress(data, raw_bytes, LIMIT)
    except CorruptMessage:
        return
    assert len(out) == raw_bytes


def test_version_negotiation_falls_back_for_an_old_peer() -> None:
    assert messages.SUPPORTED[ApiKey.MIRROR_APPEND] == (0, 1)
    assert messages.negotiate(ApiKey.MIRROR_APPEND, {int(ApiKey.MIRROR_APPEND): (0, 1)}) == 1
    assert messages.negotiate(ApiKey.MIRROR_APPEND, {int(ApiKey.MIRROR_APPEND): (0, 0)}) == 0
    assert messages.negotiate(ApiKey.MIRROR_APPEND, {}) == 0
    assert messages.negotiate(ApiKey.MIRROR_APPEND, {int(ApiKey.MIRROR_APPEND): (0, 7)}) == 1
    with pytest.raises(UnsupportedVersion):
        messages.negotiate(ApiKey.MIRROR_APPEND, {int(ApiKey.MIRROR_APPEND): (2, 3)})
    meta = messages.request(ApiKey.MIRROR_APPEND, 1, v=0)
    assert meta["v"] == 0
    assert messages.api_of(meta) == ApiKey.MIRROR_APPEND

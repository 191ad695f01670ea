"""Record batches: round trips, leader patches, corruption, bounds."""

from __future__ import annotations

import struct
import tracemalloc
import zlib
from typing import Any

import cbor2
import pytest
from fuzz_decoders import batch_with_body, check_records
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from protocol_strategies import I32, I64, batches, compressions, first_timestamps, records

from edge.protocol import batch
from edge.protocol.batch import CorruptBatch, Record

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Bytes outside the CRC: base_offset (0..7) and leader_epoch (12..15), set by the leader.
UNCOVERED = frozenset(range(8)) | frozenset(range(12, 16))


def expected(recs: list[list[Any]], base: int, first_ts: int) -> list[Record]:
    return [
        Record(base + i, first_ts + r[0], r[1], r[2], r[3] if len(r) > 3 else None)
        for i, r in enumerate(recs)
    ]


def fixed_batch(compression: batch.Compression = batch.Compression.NONE) -> bytes:
    recs = [[0, b"key", b"value"], [7, None, b"", {"a": b"1", "b": b""}], [-3, b"", b"z" * 30]]
    return batch.encode_batch(recs, first_timestamp=10_000, compression=compression)


# -- round trips ----------------------------------------------------------------------


@FAST
@given(batches())
def test_round_trip(case: tuple[bytes, list[list[Any]], dict[str, int]]) -> None:
    raw, recs, kwargs = case
    header = batch.verify(raw)
    assert header.size == len(raw)
    assert header.record_count == len(recs)
    assert header.last_offset_delta == len(recs) - 1
    assert header.first_timestamp == kwargs["first_timestamp"]
    # The maximum never falls below the first timestamp (`validate` refuses that).
    assert header.max_timestamp == kwargs["first_timestamp"] + max(0, *(r[0] for r in recs))
    assert (header.producer_id, header.producer_epoch, header.base_sequence) == (
        kwargs["producer_id"],
        kwargs["producer_epoch"],
        kwargs["base_sequence"],
    )
    assert batch.decode_records(raw) == expected(recs, 0, kwargs["first_timestamp"])
    assert batch.batch_prefix(raw) == (0, len(raw))


@FAST
@given(records, first_timestamps, st.integers(*I64))
def test_explicit_max_timestamp_is_kept(recs: list[list[Any]], first: int, max_ts: int) -> None:
    raw = batch.encode_batch(recs, first_timestamp=first, max_timestamp=max_ts)
    assert batch.verify(raw).max_timestamp == max_ts


@FAST
@given(batches(), st.integers(0, I64[1]), st.integers(*I32))
def test_leader_patches_keep_crc(
    case: tuple[bytes, list[list[Any]], dict[str, int]], base: int, epoch: int
) -> None:
    raw, recs, kwargs = case
    buf = bytearray(raw)
    batch.set_base_offset(buf, 0, base)
    batch.set_leader_epoch(buf, 0, epoch)
    header = batch.verify(buf)
    assert (header.base_offset, header.leader_epoch) == (base, epoch)
    assert header.crc == batch.verify(raw).crc
    assert header.next_offset == base + len(recs)
    assert batch.decode_records(buf) == expected(recs, base, kwargs["first_timestamp"])


@FAST
@given(st.lists(batches(), min_size=1, max_size=4), st.integers(0, 2**40))
def test_split_batches_walks_a_log(
    cases: list[tuple[bytes, list[list[Any]], dict[str, int]]], start: int
) -> None:
    log = bytearray()
    offset = start
    for raw, recs, _ in cases:
        pos = len(log)
        log += raw
        batch.set_base_offset(log, pos, offset)
        offset += len(recs)
    walked = list(batch.split_batches(log))
    assert [pos for _, pos in walked] == [
        sum(len(c[0]) for c in cases[:i]) for i in range(len(cases))
    ]
    got = [rec for h, pos in walked for rec in batch.decode_records(log, pos, h)]
    assert [r.offset for r in got] == list(range(start, offset))
    assert [r.value for r in got] == [r[2] for _, recs, _ in cases for r in recs]


def test_decode_at_position_inside_memoryview() -> None:
    raw = fixed_batch()
    buf = memoryview(b"\xff" * 5 + raw + b"\xee" * 3)
    header = batch.verify(buf, 5)
    assert batch.decode_records(buf, 5) == batch.decode_records(raw)
    assert batch.decode_records(buf, 5, header) == batch.decode_records(raw)


def test_empty_log_has_no_batches() -> None:
    assert list(batch.split_batches(b"")) == []


def test_empty_batch_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one record"):
        batch.encode_batch([], first_timestamp=0)


def test_oversized_batch_is_refused_at_encode() -> None:
    value = b"\x00" * batch.MAX_BATCH_BYTES
    with pytest.raises(ValueError, match="exceeds limit"):
        batch.encode_batch([[0, None, value]], first_timestamp=0)
    # Compressed, the same records fit.
    zlib_ = batch.Compression.ZLIB
    raw = batch.encode_batch([[0, None, value]], first_timestamp=0, compression=zlib_)
    assert batch.decode_records(raw)[0].value == value


# -- corruption -------------------------------------------------------------------------


def _flip(raw: bytes, bit: int) -> bytearray:
    buf = bytearray(raw)
    buf[bit // 8] ^= 1 << (bit % 8)
    return buf


def _assert_bit_flip_handled(raw: bytes, bit: int) -> None:
    """A flip is caught, unless it is in a field the leader patches (then it decodes as patched)."""
    buf = _flip(raw, bit)
    if bit // 8 in UNCOVERED:
        header = batch.verify(buf)
        records = batch.decode_records(buf)
        check_records(records, header)
        assert [r[1:] for r in records] == [r[1:] for r in batch.decode_records(raw)]
        return
    with pytest.raises(CorruptBatch):
        batch.verify(buf)
    with pytest.raises(CorruptBatch):
        batch.decode_records(buf)
    with pytest.raises(CorruptBatch):
        list(batch.split_batches(buf))


@pytest.mark.parametrize("compression", list(batch.Compression))
def test_every_single_bit_flip_is_detected(compression: batch.Compression) -> None:
    raw = fixed_batch(compression)
    for bit in range(len(raw) * 8):
        _assert_bit_flip_handled(raw, bit)


@FAST
@given(st.data())
def test_random_bit_flip_is_detected(data: st.DataObject) -> None:
    raw, _, _ = data.draw(batches())
    bit = data.draw(st.integers(0, len(raw) * 8 - 1))
    _assert_bit_flip_handled(raw, bit)


@pytest.mark.parametrize("compression", list(batch.Compression))
def test_every_truncation_is_detected(compression: batch.Compression) -> None:
    raw = fixed_batch(compression)
    for size in range(len(raw)):
        cut = raw[:size]
        with pytest.raises(CorruptBatch):
            batch.verify(cut)
        with pytest.raises(CorruptBatch):
            batch.decode_records(cut)
        if size:  # no bytes at all is an empty log, not a torn one
            with pytest.raises(CorruptBatch):
                list(batch.split_batches(cut))
    # A log whose last batch is torn.
    with pytest.raises(CorruptBatch):
        list(batch.split_batches(raw + raw[:-1]))


def test_short_prefix_is_corrupt_not_struct_error() -> None:
    for size in range(batch.LOG_OVERHEAD):
        with pytest.raises(CorruptBatch):
            batch.batch_prefix(bytes(size))
    assert batch.batch_prefix(bytes(batch.LOG_OVERHEAD)) == (0, batch.LOG_OVERHEAD)


def _with_header_field(raw: bytes, offset: int, fmt: str, value: int) -> bytes:
    buf = bytearray(raw)
    struct.pack_into(fmt, buf, offset, value)
    buf[17:21] = struct.pack(">I", zlib.crc32(bytes(buf[21:])))
    return bytes(buf)


@pytest.mark.parametrize(
    ("offset", "fmt", "value"),
    [
        (16, ">B", 0),  # magic
        (16, ">B", 2),
        (21, ">H", 2),  # compression 2 is not defined
        (21, ">H", 7),
        (23, ">i", 5),  # last_offset_delta disagrees with record_count
        (57, ">I", 0),  # no records
    ],
)
def test_header_field_checks(offset: int, fmt: str, value: int) -> None:
    bad = _with_header_field(fixed_batch(), offset, fmt, value)
    with pytest.raises(CorruptBatch):
        batch.decode_header(bad)
    with pytest.raises(CorruptBatch):
        batch.decode_records(bad)


def test_count_consistent_with_header_but_not_with_records() -> None:
    raw = fixed_batch()  # three records
    bad = _with_header_field(_with_header_field(raw, 23, ">i", 1), 57, ">I", 2)
    assert batch.verify(bad).record_count == 2
    with pytest.raises(CorruptBatch, match="header count"):
        batch.decode_records(bad)


@pytest.mark.parametrize("length", [0, batch.HEADER_SIZE - batch.LOG_OVERHEAD - 1, 2**32 - 1])
def test_batch_length_out_of_range(length: int) -> None:
    buf = bytearray(fixed_batch())
    struct.pack_into(">I", buf, 8, length)
    with pytest.raises(CorruptBatch):
        batch.decode_header(buf)


# Records bodies that a buggy or hostile producer could seal with a valid CRC.
MALFORMED_BODIES = {
    "not an array": cbor2.dumps({"a": 1}),
    "record not an array": cbor2.dumps([5]),
    "record too short": cbor2.dumps([[0, None]]),
    "record too long": cbor2.dumps([[0, None, b"v", None, b"extra"]]),
    "key is text": cbor2.dumps([[0, "k", b"v"]]),
    "value is null": cbor2.dumps([[0, None, None]]),
    "delta is bool": cbor2.dumps([[True, None, b"v"]]),
    "delta is float": cbor2.dumps([[1.0, None, b"v"]]),
    "delta overflows i64": cbor2.dumps([[2**63, None, b"v"]]),
    "headers not a map": cbor2.dumps([[0, None, b"v", 5]]),
    "header value text": cbor2.dumps([[0, None, b"v", {"h": "x"}]]),
    "header name bytes": cbor2.dumps([[0, None, b"v", {b"h": b"x"}]]),
    "trailing bytes": cbor2.dumps([[0, None, b"v"]]) + b"\x00",
    # [[0, null, h'76', {"h": h'78', "h": h'7a'}]]
    "duplicate header": bytes.fromhex("818400f64176a2616841786168417a"),
    "truncated cbor": cbor2.dumps([[0, None, b"value"]])[:-2],
    "empty": b"",
}


@pytest.mark.parametrize("body", MALFORMED_BODIES.values(), ids=MALFORMED_BODIES.keys())
def test_malformed_records_are_corrupt(body: bytes) -> None:
    raw = batch_with_body(body)
    batch.verify(raw)  # the CRC is right; the records are not
    with pytest.raises(CorruptBatch):
        batch.decode_records(raw)


def test_null_headers_and_negative_delta_are_valid() -> None:
    raw = batch_with_body(cbor2.dumps([[-1000, None, b"v", None]]))
    assert batch.decode_records(raw) == [Record(0, 0, None, b"v", None)]


ZLIB_BAD = {
    "not zlib": b"\x00\x01\x02",
    "truncated stream": zlib.compress(cbor2.dumps([[0, None, b"v" * 50]]))[:-6],
    "missing checksum": zlib.compress(cbor2.dumps([[0, None, b"v" * 50]]))[:-4],
    "bytes after stream": zlib.compress(cbor2.dumps([[0, None, b"v"]])) + b"\x00",
}


@pytest.mark.parametrize("body", ZLIB_BAD.values(), ids=ZLIB_BAD.keys())
def test_bad_zlib_is_corrupt(body: bytes) -> None:
    with pytest.raises(CorruptBatch):
        batch.decode_records(batch_with_body(body, compression=1))


# -- bounds ---------------------------------------------------------------------------


def _zlib_bomb(total: int) -> bytes:
    """One record whose value is ``total`` zero bytes, compressed as it streams."""
    comp = zlib.compressobj(9)
    out = [comp.compress(b"\x81\x83\x00\xf6\x5b" + struct.pack(">Q", total))]
    chunk = bytes(1 << 20)
    for _ in range(total >> 20):
        out.append(comp.compress(chunk))
    out.append(comp.flush())
    return b"".join(out)


def test_zlib_bomb_is_bounded() -> None:
    bomb = _zlib_bomb(256 << 20)  # 256 MiB of records in ~250 KiB
    raw = batch_with_body(bomb, compression=1)
    assert len(raw) < batch.MAX_BATCH_BYTES
    tracemalloc.start()
    try:
        with pytest.raises(CorruptBatch, match="exceed limit") as info:
            batch.decode_records(raw)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.data["limit"] == batch.MAX_RECORDS_BYTES
    assert peak < 2 * batch.MAX_RECORDS_BYTES + len(raw) + (1 << 20)


def _exact_body(size: int) -> bytes:
    """A records body of exactly ``size`` bytes: [[0, null, h'00...']]."""
    return b"\x81\x83\x00\xf6\x5a" + struct.pack(">I", size - 9) + bytes(size - 9)


def test_decompressed_limit_is_exact() -> None:
    limit = batch.MAX_RECORDS_BYTES
    at_limit = batch_with_body(zlib.compress(_exact_body(limit)), compression=1)
    [record] = batch.decode_records(at_limit)
    assert len(record.value) == limit - 9
    over = batch_with_body(zlib.compress(_exact_body(limit + 1)), compression=1)
    with pytest.raises(CorruptBatch, match="exceed limit"):
        batch.decode_records(over)


@FAST
@given(records, compressions)
def test_compression_choice_does_not_change_records(
    recs: list[list[Any]], compression: batch.Compression
) -> None:
    plain = batch.encode_batch(recs, first_timestamp=0)
    other = batch.encode_batch(recs, first_timestamp=0, compression=compression)
    assert batch.decode_records(plain) == batch.decode_records(other)
    assert batch.verify(other).compression is compression

"""Byte-exact vectors for the frame and record-batch formats.

These are the golden bytes other clients test against (docs/PROTOCOL.md quotes
them). If one changes, the wire format changed.
"""

from __future__ import annotations

import struct
import zlib

import pytest

from edge.protocol import batch, messages
from edge.protocol.framing import PREFIX_SIZE, FrameDecoder, encode_frame, frame_header

FIRST_TS = 1_700_000_000_000  # 0x0000018BCFE56800
RECORDS = [[0, b"k1", b"v1"], [5, None, b"v2", {"h": b"x"}]]
PRODUCER = {"producer_id": 42, "producer_epoch": 3, "base_sequence": 7}

BATCH_HEX = (
    "0000000000000000"  # 0  base_offset        0 (the leader sets it)
    "00000045"  # 8  batch_length       69 = 81 - 12
    "00000000"  # 12 leader_epoch       0 (the leader sets it)
    "01"  # 16 magic              1
    "4bdbdfcc"  # 17 crc                CRC-32 of bytes 21..80
    "0000"  # 21 attributes        no compression
    "00000001"  # 23 last_offset_delta  1
    "0000018bcfe56800"  # 27 first_timestamp
    "0000018bcfe56805"  # 35 max_timestamp      first + 5
    "000000000000002a"  # 43 producer_id        42
    "0003"  # 51 producer_epoch     3
    "00000007"  # 53 base_sequence      7
    "00000002"  # 57 record_count       2
    "82"  # 61 records: array(2)
    "8300426b31427631"  # [0, h'6b31', h'7631']
    "8405f6427632a161684178"  # [5, null, h'7632', {"h": h'78'}]
)

# The same batch after the leader set base offset 100 and leader epoch 2: only
# bytes 0..7 and 12..15 differ, and the CRC still holds.
PATCHED_HEX = "00000000000000640000004500000002" + BATCH_HEX[32:]

# A zlib batch (level 1, as encode_batch writes it). zlib builds may differ in
# the compressed bytes they emit, so this one is pinned for decoding only.
ZLIB_BATCH_HEX = (
    "0000000000000000"
    "0000004d"
    "00000000"
    "01"
    "0bed2a01"
    "0001"
    "00000001"
    "0000018bcfe56800"
    "0000018bcfe56805"
    "ffffffffffffffff"
    "ffff"
    "ffffffff"
    "00000002"
    "78016b6a6670ca36742a336c61fde65466b43031c3b1020049a10759"
)

FRAME_META = messages.request(messages.ApiKey.PRODUCE, 7, topic="t", partition=0)
FRAME_HEX = (
    "00000028"  # length       40 = 4 + 32 + 4
    "00000020"  # meta_length  32
    "a5"  # map(5)
    "6361706901"  # "api": 1 (PRODUCE)
    "617600"  # "v": 0
    "62696407"  # "id": 7
    "65746f7069636174"  # "topic": "t"
    "69706172746974696f6e00"  # "partition": 0
    "626c6f62"  # blob "blob"
)

# (offset, struct format, value) for each header field of BATCH_HEX, as the
# comment table in edge/protocol/batch.py documents them.
LAYOUT = [
    (0, ">q", 0),
    (8, ">I", 69),
    (12, ">i", 0),
    (16, ">B", 1),
    (17, ">I", 0x4BDBDFCC),
    (21, ">H", 0),
    (23, ">i", 1),
    (27, ">q", FIRST_TS),
    (35, ">q", FIRST_TS + 5),
    (43, ">q", 42),
    (51, ">h", 3),
    (53, ">i", 7),
    (57, ">I", 2),
]


def crc32_reference(data: bytes) -> int:
    """Bitwise CRC-32 (ISO-HDLC, reflected polynomial 0xEDB88320), independent of zlib."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0xEDB88320 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def test_batch_encodes_to_pinned_bytes() -> None:
    raw = batch.encode_batch(RECORDS, first_timestamp=FIRST_TS, **PRODUCER)
    assert raw.hex() == BATCH_HEX


@pytest.mark.parametrize(("offset", "fmt", "value"), LAYOUT)
def test_batch_field_sits_at_documented_offset(offset: int, fmt: str, value: int) -> None:
    raw = bytes.fromhex(BATCH_HEX)
    assert struct.unpack_from(fmt, raw, offset)[0] == value


def test_batch_layout_constants() -> None:
    assert batch.HEADER_SIZE == 61 == sum(struct.calcsize(f) for _, f, _ in LAYOUT)
    assert batch.LOG_OVERHEAD == 12
    assert batch.CRC_START == 21
    assert batch.MAGIC == 1
    # Every field starts where the previous one ends.
    ends = [off + struct.calcsize(fmt) for off, fmt, _ in LAYOUT]
    assert [off for off, _, _ in LAYOUT[1:]] == ends[:-1]


def test_batch_crc_is_standard_crc32_of_bytes_21_to_end() -> None:
    raw = bytes.fromhex(BATCH_HEX)
    assert crc32_reference(b"123456789") == 0xCBF43926  # the catalogue check value
    assert crc32_reference(raw[21:]) == 0x4BDBDFCC == zlib.crc32(raw[21:])


def test_batch_vector_decodes() -> None:
    raw = bytes.fromhex(BATCH_HEX)
    header = batch.verify(raw)
    assert header == batch.BatchHeader(
        0, 69, 0, 1, 0x4BDBDFCC, 0, 1, FIRST_TS, FIRST_TS + 5, 42, 3, 7, 2
    )
    assert header.size == len(raw) == 81
    assert header.next_offset == 2
    assert batch.decode_records(raw) == [
        batch.Record(0, FIRST_TS, b"k1", b"v1", None),
        batch.Record(1, FIRST_TS + 5, None, b"v2", {"h": b"x"}),
    ]


def test_leader_patch_gives_pinned_bytes() -> None:
    buf = bytearray.fromhex(BATCH_HEX)
    batch.set_base_offset(buf, 0, 100)
    batch.set_leader_epoch(buf, 0, 2)
    assert buf.hex() == PATCHED_HEX
    header = batch.verify(buf)
    assert (header.base_offset, header.leader_epoch, header.last_offset) == (100, 2, 101)
    assert [r.offset for r in batch.decode_records(buf)] == [100, 101]


def test_zlib_vector_decodes() -> None:
    raw = bytes.fromhex(ZLIB_BATCH_HEX)
    header = batch.verify(raw)
    assert header.compression is batch.Compression.ZLIB
    assert header.attributes == 1
    assert (header.producer_id, header.producer_epoch, header.base_sequence) == (-1, -1, -1)
    assert [tuple(r) for r in batch.decode_records(raw)] == [
        (0, FIRST_TS, b"k1", b"v1", None),
        (1, FIRST_TS + 5, None, b"v2", {"h": b"x"}),
    ]


def test_zlib_encoding_matches_vector_up_to_compressed_bytes() -> None:
    raw = batch.encode_batch(RECORDS, first_timestamp=FIRST_TS, compression=batch.Compression.ZLIB)
    pinned = bytes.fromhex(ZLIB_BATCH_HEX)
    # Same header except length and CRC (they depend on the compressed bytes).
    assert raw[:8] == pinned[:8]
    assert raw[12:17] == pinned[12:17]
    assert raw[21:61] == pinned[21:61]
    records = bytes.fromhex(BATCH_HEX)[61:]
    assert zlib.decompress(raw[61:]) == zlib.decompress(pinned[61:]) == records


def test_frame_encodes_to_pinned_bytes() -> None:
    assert encode_frame(FRAME_META, b"blob").hex() == FRAME_HEX


def test_frame_header_is_the_frame_without_its_blob() -> None:
    full = bytes.fromhex(FRAME_HEX)
    meta_bytes = full[PREFIX_SIZE:-4]
    assert frame_header(meta_bytes, 4) == full[:-4]


def test_empty_meta_frame_vector() -> None:
    assert encode_frame({}).hex() == "0000000500000001a0"


def test_frame_vector_decodes() -> None:
    dec = FrameDecoder()
    dec.feed(bytes.fromhex(FRAME_HEX))
    [frame] = dec.frames()
    assert frame.meta == {"api": 1, "v": 0, "id": 7, "topic": "t", "partition": 0}
    assert frame.blob == b"blob"
    assert dec.buffered == 0

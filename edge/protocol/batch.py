"""Record batches: the unit that is produced, stored, replicated and fetched.

Layout (big-endian, 61-byte header, then the records)::

    offset size field               meaning
    0      8    base_offset   i64   offset of the first record; set by the leader
    8      4    batch_length  u32   bytes after this field (header rest + records)
    12     4    leader_epoch  i32   epoch of the leader that appended it; set by the leader
    16     1    magic         u8    format version, 1
    17     4    crc           u32   CRC-32 (zlib) of bytes 21..end
    21     2    attributes    u16   bits 0-2: compression (0 none, 1 zlib); bit 4: gap
    23     4    last_offset_delta i32  record_count - 1 (a gap: offsets covered - 1)
    27     8    first_timestamp   i64  ms since the epoch
    35     8    max_timestamp     i64  ms since the epoch
    43     8    producer_id   i64   -1 when not idempotent
    51     2    producer_epoch i16  -1 when not idempotent
    53     4    base_sequence i32   sequence of the first record, -1 when not idempotent
    57     4    record_count  u32
    61     ..   records       CBOR array (compressed as a whole when attributes say so)

Each record is a CBOR array ``[timestamp_delta, key, value]`` or
``[timestamp_delta, key, value, headers]``: ``timestamp_delta`` an integer
(``first_timestamp + timestamp_delta`` fits an i64), ``key`` bytes or null,
``value`` bytes, ``headers`` null or a map of text to bytes. The offset of
record *i* is ``base_offset + i``. The records region holds exactly that one
array (after decompression, when compressed): trailing bytes are corruption.

The CRC leaves out base offset, length, leader epoch and magic, so the leader
patches offset and epoch in place without recomputing it.

A *gap* batch (attribute bit 4) holds no records: it stands for offsets
``base_offset..base_offset + last_offset_delta`` that the source of a mirrored
log deleted before the cloud had them. ``record_count`` is 0, the records are an
empty CBOR array, compression none. Only a cloud leader writes one (MIRROR_GAP);
produced and mirrored batches may not be gaps. Readers skip it.
"""

from __future__ import annotations

import functools
import itertools
import operator
import struct
import zlib
from collections.abc import Iterator, Sequence
from enum import IntEnum
from typing import Any, Final, NamedTuple

import cbor2

from edge.protocol.cbor import loads_exact
from edge.protocol.errors import CorruptBatch

HEADER: Final = struct.Struct(">qIiBIHiqqqhiI")
HEADER_SIZE: Final = HEADER.size  # 61
LOG_OVERHEAD: Final = 12  # base_offset + batch_length
MAGIC: Final = 1
CRC_START: Final = 21
_BASE_OFFSET: Final = struct.Struct(">q")
_EPOCH: Final = struct.Struct(">i")
_PREFIX: Final = struct.Struct(">qI")
# One batch must fit a frame; the producer's default is far smaller (see client).
MAX_BATCH_BYTES: Final = 4 * 1024 * 1024
# Decompressed records are bounded too: a tiny zlib bomb must not eat a Pi's RAM.
MAX_RECORDS_BYTES: Final = 16 * 1024 * 1024
NO_PRODUCER: Final = -1
_I64_MIN: Final = -(2**63)
_I64_MAX: Final = 2**63 - 1


# Attribute bit 4: the batch is a gap marker (see the module docstring).
GAP_ATTRIBUTE: Final = 0x10
# A gap batch covers at most this many offsets (last_offset_delta is an i32).
MAX_GAP_OFFSETS: Final = 2**31
_EMPTY_RECORDS: Final = b"\x80"  # CBOR []


class Compression(IntEnum):
    NONE = 0
    ZLIB = 1


class BatchHeader(NamedTuple):
    base_offset: int
    batch_length: int
    leader_epoch: int
    magic: int
    crc: int
    attributes: int
    last_offset_delta: int
    first_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    record_count: int

    @property
    def size(self) -> int:
        """Total bytes of the batch, header included."""
        return LOG_OVERHEAD + self.batch_length

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.last_offset_delta

    @property
    def next_offset(self) -> int:
        return self.base_offset + self.last_offset_delta + 1

    @property
    def compression(self) -> Compression:
        return Compression(self.attributes & 0x7)

    @property
    def is_gap(self) -> bool:
        return bool(self.attributes & GAP_ATTRIBUTE)


class Record(NamedTuple):
    """One record as a consumer sees it."""

    offset: int
    timestamp: int
    key: bytes | None
    value: bytes
    headers: dict[str, bytes] | None = None


def encode_batch(
    records: Sequence[Sequence[Any]],
    *,
    first_timestamp: int,
    max_timestamp: int | None = None,
    compression: Compression = Compression.NONE,
    producer_id: int = NO_PRODUCER,
    producer_epoch: int = -1,
    base_sequence: int = -1,
) -> bytes:
    """Encode records given as ``[timestamp_delta, key, value(, headers)]`` lists."""
    if not records:
        raise ValueError("a batch holds at least one record")
    body = cbor2.dumps(records)
    if compression == Compression.ZLIB:
        body = zlib.compress(body, 1)
    if HEADER_SIZE + len(body) > MAX_BATCH_BYTES:
        # The decoder rejects such a batch; fail here, where the caller can split it.
        raise ValueError(
            f"batch of {HEADER_SIZE + len(body)} bytes exceeds limit {MAX_BATCH_BYTES}"
        )
    count = len(records)
    if max_timestamp is None:
        max_timestamp = first_timestamp + max(0, *(r[0] for r in records))
    head = HEADER.pack(
        0, HEADER_SIZE - LOG_OVERHEAD + len(body), 0, MAGIC, 0, int(compression), count - 1,
        first_timestamp, max_timestamp, producer_id, producer_epoch, base_sequence, count,
    )
    crc = zlib.crc32(head[CRC_START:])
    crc = zlib.crc32(body, crc)
    out = bytearray(head)
    struct.pack_into(">I", out, 17, crc)
    out += body
    return bytes(out)


def encode_gap(offsets: int, *, timestamp: int) -> bytes:
    """A gap batch covering ``offsets`` offsets (base offset 0, set by the appender)."""
    if not 1 <= offsets <= MAX_GAP_OFFSETS:
        raise ValueError(f"a gap covers 1..{MAX_GAP_OFFSETS} offsets, not {offsets}")
    head = HEADER.pack(
        0, HEADER_SIZE - LOG_OVERHEAD + len(_EMPTY_RECORDS), 0, MAGIC, 0, GAP_ATTRIBUTE,
        offsets - 1, timestamp, timestamp, NO_PRODUCER, -1, -1, 0,
    )
    out = bytearray(head)
    struct.pack_into(">I", out, 17, zlib.crc32(_EMPTY_RECORDS, zlib.crc32(head[CRC_START:])))
    out += _EMPTY_RECORDS
    return bytes(out)


def decode_header(buf: bytes | bytearray | memoryview, pos: int = 0) -> BatchHeader:
    """Parse and sanity-check the header at ``pos`` (the CRC is checked by ``verify``)."""
    if len(buf) - pos < HEADER_SIZE:
        raise CorruptBatch(
            f"batch header needs {HEADER_SIZE} bytes, have {len(buf) - pos}",
            position=pos,
        )
    h = BatchHeader._make(HEADER.unpack_from(buf, pos))
    if h.magic != MAGIC:
        raise CorruptBatch(f"unknown batch magic {h.magic}", position=pos)
    if h.batch_length < HEADER_SIZE - LOG_OVERHEAD or h.size > MAX_BATCH_BYTES:
        raise CorruptBatch(f"batch length {h.batch_length} out of range", position=pos)
    if h.attributes & GAP_ATTRIBUTE:
        if h.record_count != 0 or h.last_offset_delta < 0 or h.attributes != GAP_ATTRIBUTE:
            raise CorruptBatch("a gap batch holds no records, uncompressed", position=pos)
    elif h.record_count < 1 or h.last_offset_delta != h.record_count - 1:
        raise CorruptBatch(
            f"record count {h.record_count} disagrees with offset delta {h.last_offset_delta}",
            position=pos,
        )
    if h.attributes & 0x7 > max(Compression):
        raise CorruptBatch(f"unknown compression {h.attributes & 0x7}", position=pos)
    return h


def batch_prefix(buf: bytes | bytearray | memoryview, pos: int = 0) -> tuple[int, int]:
    """``(base_offset, total_size)`` from the first 12 bytes of a batch."""
    if len(buf) - pos < LOG_OVERHEAD:
        raise CorruptBatch(
            f"batch prefix needs {LOG_OVERHEAD} bytes, have {len(buf) - pos}", position=pos
        )
    base, length = _PREFIX.unpack_from(buf, pos)
    return base, LOG_OVERHEAD + length


def compute_crc(buf: bytes | bytearray | memoryview, pos: int, size: int) -> int:
    return zlib.crc32(memoryview(buf)[pos + CRC_START : pos + size])


def verify(buf: bytes | bytearray | memoryview, pos: int = 0) -> BatchHeader:
    """Header of the whole batch at ``pos``, after checking its length and CRC."""
    h = decode_header(buf, pos)
    if len(buf) - pos < h.size:
        raise CorruptBatch(
            f"batch of {h.size} bytes truncated to {len(buf) - pos}", position=pos
        )
    crc = compute_crc(buf, pos, h.size)
    if crc != h.crc:
        raise CorruptBatch(
            f"batch CRC mismatch: stored {h.crc:#010x}, computed {crc:#010x}",
            position=pos, offset=h.base_offset,
        )
    return h


def validate(buf: bytes | bytearray | memoryview, pos: int = 0) -> BatchHeader:
    """Header of the batch at ``pos`` once everything a consumer relies on holds.

    Beyond ``verify`` (length, CRC): the records decompress within
    ``MAX_RECORDS_BYTES`` (bounded before inflating), decode to exactly
    ``record_count`` records of the documented shape, and no record's timestamp is
    past ``max_timestamp`` (the time index trusts it as an upper bound; records
    may come earlier than the first, as producers keep the order of ``send``).
    Every writer of a log (leader, follower, upstream mirror) calls this before
    appending, so no reader ever meets a batch it cannot decode.
    """
    h = verify(buf, pos)
    if h.max_timestamp < h.first_timestamp:
        raise CorruptBatch(
            f"max timestamp {h.max_timestamp} before first timestamp {h.first_timestamp}",
            offset=h.base_offset,
        )
    raw = _raw_records(buf, pos, h)
    latest = _plain_latest(raw, h.first_timestamp)
    if latest is None:  # not all plain: the per-record checks (headers, or an error)
        records = [_record(r, h.base_offset + i, h.first_timestamp) for i, r in enumerate(raw)]
        latest = max(map(operator.itemgetter(1), records), default=h.max_timestamp)
    if latest > h.max_timestamp:
        raise CorruptBatch(
            f"record timestamp {latest} past the header's max timestamp {h.max_timestamp}",
            offset=h.base_offset,
        )
    return h


def set_base_offset(buf: bytearray | memoryview, pos: int, base_offset: int) -> None:
    _BASE_OFFSET.pack_into(buf, pos, base_offset)


def set_leader_epoch(buf: bytearray | memoryview, pos: int, epoch: int) -> None:
    _EPOCH.pack_into(buf, pos + 12, epoch)


def split_batches(buf: bytes | bytearray | memoryview) -> Iterator[tuple[BatchHeader, int]]:
    """Verify and yield ``(header, position)`` for each whole batch in ``buf``.

    A buffer that does not end on a batch boundary raises CorruptBatch.
    """
    pos = 0
    end = len(buf)
    while pos < end:
        h = verify(buf, pos)
        yield h, pos
        pos += h.size


def decode_records(
    buf: bytes | bytearray | memoryview, pos: int = 0, header: BatchHeader | None = None
) -> list[Record]:
    """Decode the records of a verified batch at ``pos``."""
    h = header or verify(buf, pos)
    raw = _raw_records(buf, pos, h)
    if not raw:
        return []
    fast = _decode_plain(raw, h.base_offset, h.first_timestamp)
    if fast is not None:
        return fast
    return [_record(r, h.base_offset + i, h.first_timestamp) for i, r in enumerate(raw)]


def _raw_records(buf: bytes | bytearray | memoryview, pos: int, h: BatchHeader) -> list[Any]:
    """The batch's records array as CBOR decodes it, ``record_count`` long."""
    body = bytes(memoryview(buf)[pos + HEADER_SIZE : pos + h.size])
    if h.compression == Compression.ZLIB:
        body = _decompress(body, h.base_offset)
    try:
        raw = loads_exact(body)
    except Exception as exc:  # cbor2 raises several types for bad input
        raise CorruptBatch(f"undecodable records: {exc}", offset=h.base_offset) from None
    if not isinstance(raw, list) or len(raw) != h.record_count:
        raise CorruptBatch("records do not match the header count", offset=h.base_offset)
    return raw


_LIST_TYPES: Final = frozenset({list})
_KEY_TYPES: Final = frozenset({bytes, type(None)})
_BYTES_TYPES: Final = frozenset({bytes})
_INT_TYPES: Final = frozenset({int})
_new_record = functools.partial(tuple.__new__, Record)


def _plain_columns(raw: list[Any], first_ts: int) -> tuple[Any, Any, Any, int, int] | None:
    """``(deltas, keys, values, lowest delta, highest delta)`` when every record has
    the plain 3-field shape with valid types, else None. Checked a column at a time
    with C-level ``map``/``set``: no Python call per record."""
    if set(map(type, raw)) != _LIST_TYPES:
        return None
    try:
        deltas, keys, values = zip(*raw, strict=True)  # every record has 3 fields
    except ValueError:
        return None
    if set(map(type, deltas)) != _INT_TYPES:
        return None
    low, high = min(deltas), max(deltas)
    if (set(map(type, values)) != _BYTES_TYPES or not set(map(type, keys)) <= _KEY_TYPES
            or not first_ts + low >= _I64_MIN or not first_ts + high <= _I64_MAX):
        return None
    return deltas, keys, values, low, high


def _plain_latest(raw: list[Any], first_ts: int) -> int | None:
    """The latest timestamp of a plain batch (checked as :func:`_plain_columns`
    checks), without building its records: what validating on append needs."""
    if not raw:
        return first_ts
    columns = _plain_columns(raw, first_ts)
    return None if columns is None else first_ts + columns[4]


def _decode_plain(raw: list[Any], base: int, first_ts: int) -> list[Record] | None:
    """Records of a batch whose records all have the plain 3-field shape, or None.

    The consumer's hot path: types are checked a column at a time with C-level
    ``map``/``set`` and the records built without a Python call per record, so a
    backlog decodes at millions of records per second. Any record that does not
    fit (headers, a wrong type) sends the batch through the per-record checks.
    """
    columns = _plain_columns(raw, first_ts)
    if columns is None:
        return None
    deltas, keys, values, low, high = columns
    n = len(raw)
    stamps = (itertools.repeat(first_ts, n) if low == high == 0
              else map(operator.add, itertools.repeat(first_ts, n), deltas))
    return list(map(_new_record, zip(range(base, base + n), stamps, keys, values,
                                     itertools.repeat(None, n), strict=False)))


def _decompress(body: bytes, base_offset: int) -> bytes:
    d = zlib.decompressobj()
    try:
        # One byte over the limit tells "too large" apart from "exactly the limit".
        out = d.decompress(body, MAX_RECORDS_BYTES + 1)
    except zlib.error as exc:
        raise CorruptBatch(f"undecompressable records: {exc}", offset=base_offset) from None
    if len(out) > MAX_RECORDS_BYTES:
        raise CorruptBatch(
            "decompressed records exceed limit", offset=base_offset, limit=MAX_RECORDS_BYTES
        )
    if not d.eof or d.unused_data:
        raise CorruptBatch(
            "compressed records are truncated or followed by extra bytes", offset=base_offset
        )
    return out


def _record(r: Any, offset: int, first_timestamp: int) -> Record:
    """One decoded record array, checked against the layout in the module comment."""
    if isinstance(r, list) and 3 <= len(r) <= 4:
        delta, key, value = r[0], r[1], r[2]
        headers = r[3] if len(r) == 4 else None
        if (
            isinstance(delta, int)
            and not isinstance(delta, bool)
            and _I64_MIN <= first_timestamp + delta <= _I64_MAX
            and (key is None or isinstance(key, bytes))
            and isinstance(value, bytes)
            and (headers is None or _valid_headers(headers))
        ):
            return Record(offset, first_timestamp + delta, key, value, headers)
    raise CorruptBatch("malformed record", offset=offset)


def _valid_headers(headers: Any) -> bool:
    return isinstance(headers, dict) and all(
        isinstance(k, str) and isinstance(v, bytes) for k, v in headers.items()
    )

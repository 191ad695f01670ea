"""Record batches with a correct length and CRC whose records no consumer can read:
the cases the leader, followers and the upstream mirror must refuse."""

from __future__ import annotations

import struct
import zlib

import cbor2

from edge.protocol import batch as codec


def craft(body: bytes, *, count: int, compression: int = 0, first_ts: int = 1000,
          max_ts: int | None = None) -> bytes:
    """A batch around ``body`` with a correct length and CRC, whatever the body holds."""
    head = codec.HEADER.pack(
        0, codec.HEADER_SIZE - codec.LOG_OVERHEAD + len(body), 0, codec.MAGIC, 0,
        compression, count - 1, first_ts, first_ts if max_ts is None else max_ts,
        -1, -1, -1, count)
    out = bytearray(head + body)
    struct.pack_into(">I", out, 17, zlib.crc32(out[codec.CRC_START:]))
    return bytes(out)


POISON = {
    "str value": craft(cbor2.dumps([[0, None, "a str value"]]), count=1),
    "garbage records": craft(b"\xff\x00not cbor at all", count=1),
    "count larger than records": craft(cbor2.dumps([[0, None, b"a"]]), count=3),
    "count smaller than records": craft(cbor2.dumps([[0, None, b"a"]] * 2), count=1),
    "trailing bytes": craft(cbor2.dumps([[0, None, b"a"]]) + b"\x00", count=1),
    "zlib bomb": craft(zlib.compress(b"\x00" * (codec.MAX_RECORDS_BYTES + 1024), 9),
                       count=2**24, compression=1),
    "record past max timestamp": craft(cbor2.dumps([[50, None, b"a"]]), count=1,
                                       first_ts=1000, max_ts=1010),
    "max timestamp before first": craft(cbor2.dumps([[0, None, b"a"]]), count=1,
                                        first_ts=1000, max_ts=999),
    "int key": craft(cbor2.dumps([[0, 7, b"a"]]), count=1),
    "headers of the wrong type": craft(cbor2.dumps([[0, None, b"a", {"h": 1}]]), count=1),
}

"""zstd compression of a request blob on the wire (MIRROR_APPEND from version 1).

The uplink sends stored record batches byte for byte; on a metered link it
compresses the whole blob as one zstd frame and says so in the request
(``codec = "zstd"``, ``raw_bytes`` = the blob's length before compression). The
receiver inflates it back to exactly the stored bytes before anything else looks
at them, so batches stay as the edge wrote them (a topic's own zlib included).

Inflating is bounded before it runs: the frame must declare its content size,
that size must equal ``raw_bytes`` and be within the receiver's limit, and it is
inflated in one piece into a buffer of exactly that size (one-shot decoding
needs no window buffer besides), so a few hostile bytes cannot make a cloud SPU
allocate more than the limit. Pure: no I/O.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

import zstandard

from edge.protocol.errors import CorruptMessage

# Level 3 (zstd's default) compresses JSON telemetry 5-10x at a few hundred MB/s
# a core; higher levels cost a Pi's CPU for a few percent more.
LEVEL: Final = 3


class Codec(StrEnum):
    NONE = "none"
    ZSTD = "zstd"


def compress(blob: bytes) -> bytes:
    """One zstd frame holding ``blob``, its content size in the header."""
    return zstandard.ZstdCompressor(level=LEVEL, write_content_size=True).compress(blob)


def decompress(data: bytes, raw_bytes: int, limit: int) -> bytes:
    """The ``raw_bytes`` bytes that ``data`` compresses, or CorruptMessage.

    ``raw_bytes`` is checked against ``limit`` and the frame's declared size
    before a byte is inflated; the output is exactly ``raw_bytes`` long.
    """
    if not 0 < raw_bytes <= limit:
        raise CorruptMessage(f"raw_bytes must be in 1..{limit}", limit=limit)
    try:
        declared = zstandard.frame_content_size(data)
    except zstandard.ZstdError as exc:
        raise CorruptMessage(f"not a zstd frame: {exc}") from None
    if declared != raw_bytes:
        raise CorruptMessage(f"zstd frame declares {declared} bytes, request says {raw_bytes}"
                             if declared >= 0 else "zstd frame without a content size")
    try:
        out = zstandard.ZstdDecompressor().decompress(data)
    except zstandard.ZstdError as exc:
        raise CorruptMessage(f"undecodable zstd frame: {exc}") from None
    if len(out) != raw_bytes:  # zstd checks this itself; a second look costs nothing
        raise CorruptMessage(f"zstd frame inflated to {len(out)} bytes, not {raw_bytes}")
    return out

"""Wire framing: ``u32 length | u32 meta_length | CBOR meta | raw blob``.

All integers are big-endian. ``length`` counts every byte after itself
(4 + meta_length + len(blob)). ``meta`` is a CBOR map; ``blob`` carries record
batches untouched, so the bytes a producer sends are the bytes on disk and the
bytes a consumer receives.

The decoder is sans-IO: feed it bytes, take frames out. Both limits are checked
from the 8-byte prefix, before anything is allocated for the body.
"""

from __future__ import annotations

import struct
from typing import Any, Final, NamedTuple

import cbor2

from edge.protocol.cbor import loads_exact
from edge.protocol.errors import FrameTooLarge, ProtocolError

PREFIX: Final = struct.Struct(">II")
PREFIX_SIZE: Final = PREFIX.size
# A produce request carries at most one batch per partition; 8 MiB leaves room
# for the default 1 MiB batch on several partitions while bounding a Pi's memory.
MAX_FRAME_BYTES: Final = 8 * 1024 * 1024
# Metadata is small (names, numbers); a large one is a bug or an attack.
MAX_META_BYTES: Final = 256 * 1024
# What a client accepts in an answer's metadata: a server may list many rows (a
# cloud topic with a partition per site, thousands of them), bounded by the frame.
# The smaller limit above guards servers against what clients send.
MAX_RESPONSE_META_BYTES: Final = MAX_FRAME_BYTES


class Frame(NamedTuple):
    """One decoded frame: the metadata map and the raw blob."""

    meta: dict[Any, Any]
    blob: bytes


def frame_header(meta_bytes: bytes, blob_len: int) -> bytes:
    """The prefix and meta of a frame whose blob (of ``blob_len`` bytes) follows."""
    return PREFIX.pack(4 + len(meta_bytes) + blob_len, len(meta_bytes)) + meta_bytes


def encode_frame(meta: dict[Any, Any], blob: bytes = b"") -> bytes:
    """Encode a whole frame."""
    meta_bytes = cbor2.dumps(meta)
    return frame_header(meta_bytes, len(blob)) + blob


def decode_meta(data: bytes) -> dict[Any, Any]:
    """Decode a CBOR metadata map that fills ``data``, raising ProtocolError otherwise."""
    try:
        meta = loads_exact(data)
    except Exception as exc:  # cbor2 raises several types for bad input
        raise ProtocolError(f"undecodable frame metadata: {exc}") from None
    if not isinstance(meta, dict):
        raise ProtocolError(f"frame metadata is {type(meta).__name__}, expected a map")
    return meta


class FrameDecoder:
    """Incremental decoder: ``feed(data)`` then iterate ``frames()``.

    After a ProtocolError the stream is unusable (framing is lost); the caller
    closes the connection.
    """

    def __init__(
        self, *, max_frame_bytes: int = MAX_FRAME_BYTES, max_meta_bytes: int = MAX_META_BYTES
    ) -> None:
        self._buf = bytearray()
        self._max_frame = max_frame_bytes
        self._max_meta = max_meta_bytes
        self._need: tuple[int, int] | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next_frame(self) -> Frame | None:
        """The next complete frame, or None when more bytes are needed."""
        if self._need is None:
            if len(self._buf) < PREFIX_SIZE:
                return None
            length, meta_len = PREFIX.unpack_from(self._buf, 0)
            self._check(length, meta_len)
            self._need = (length, meta_len)
        length, meta_len = self._need
        end = 4 + length
        if len(self._buf) < end:
            return None
        with memoryview(self._buf) as view:  # one copy per part, not two
            meta_bytes = bytes(view[PREFIX_SIZE : PREFIX_SIZE + meta_len])
            blob = bytes(view[PREFIX_SIZE + meta_len : end])
        del self._buf[:end]
        meta = decode_meta(meta_bytes)
        self._need = None
        return Frame(meta, blob)

    def frames(self) -> list[Frame]:
        """Every complete frame buffered so far."""
        out = []
        while (frame := self.next_frame()) is not None:
            out.append(frame)
        return out

    def _check(self, length: int, meta_len: int) -> None:
        if length > self._max_frame:
            raise FrameTooLarge(
                f"frame of {length} bytes exceeds limit {self._max_frame}",
                length=length, limit=self._max_frame,
            )
        if meta_len > self._max_meta:
            raise FrameTooLarge(
                f"frame metadata of {meta_len} bytes exceeds limit {self._max_meta}",
                length=meta_len, limit=self._max_meta,
            )
        if meta_len + 4 > length:
            raise ProtocolError(
                f"frame metadata length {meta_len} exceeds frame length {length}",
                length=length, meta_length=meta_len,
            )

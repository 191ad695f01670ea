"""Partition checkpoint: what makes recovery fast, replaced atomically.

File ``partition.checkpoint`` (big-endian)::

    offset size field
    0      4    magic              b"HWCP"
    4      2    version            u16  1
    6      4    body_length        u32  bytes after the CRC
    10     4    crc                u32  CRC-32 (zlib) of the body
    14     ..   body:
           8    recovery_offset    i64  every offset below it is fsynced
           8    recovery_segment   i64  base offset of the segment holding that point
           8    recovery_position  i64  byte position of recovery_offset in that segment
           8    high_watermark     i64
           8    log_start_offset   i64
           8    snapshot_offset    i64  log end offset when the producer snapshot was taken
           4    segment_count      u32
           then per segment, oldest first (24 bytes):
           8    base_offset        i64
           8    max_timestamp      i64  -1 empty segment, -2**63 not known
           8    first_write_ms     i64  -2**63 not known
           4    producers_length   u32
           ..   producer snapshot  (layout in producer_state.py)

The segment table spares recovery from reading old segments to learn their
newest timestamp (for retention). The file is written to
``partition.checkpoint.tmp``, fsynced, renamed over the old one, and the
directory fsynced, so a crash leaves the old or the new checkpoint, whole.
"""

from __future__ import annotations

import logging
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Final

CHECKPOINT_NAME: Final = "partition.checkpoint"
MAGIC: Final = b"HWCP"
VERSION: Final = 1
UNKNOWN: Final = -(2**63)
_HEAD: Final = struct.Struct(">4sHII")
_FIXED: Final = struct.Struct(">qqqqqqI")
_SEGMENT: Final = struct.Struct(">qqq")
_LEN: Final = struct.Struct(">I")

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class SegmentMeta:
    base_offset: int
    max_timestamp: int | None
    first_write_ms: int | None


@dataclass(frozen=True, kw_only=True)
class Checkpoint:
    """Everything recovery needs besides the segment files themselves."""

    recovery_offset: int
    recovery_segment: int
    recovery_position: int
    high_watermark: int
    log_start_offset: int
    snapshot_offset: int
    segments: tuple[SegmentMeta, ...]
    producers: bytes

    def encode(self) -> bytes:
        parts = [
            _FIXED.pack(
                self.recovery_offset, self.recovery_segment, self.recovery_position,
                self.high_watermark, self.log_start_offset, self.snapshot_offset,
                len(self.segments),
            )
        ]
        parts.extend(
            _SEGMENT.pack(m.base_offset, _known(m.max_timestamp), _known(m.first_write_ms))
            for m in self.segments
        )
        parts += [_LEN.pack(len(self.producers)), self.producers]
        body = b"".join(parts)
        return _HEAD.pack(MAGIC, VERSION, len(body), zlib.crc32(body)) + body

    @classmethod
    def decode(cls, data: bytes) -> Checkpoint:
        """Parse ``encode`` output; ValueError when anything does not add up."""
        if len(data) < _HEAD.size:
            raise ValueError("checkpoint shorter than its header")
        magic, version, length, crc = _HEAD.unpack_from(data)
        body = memoryview(data)[_HEAD.size :]
        if magic != MAGIC or version != VERSION:
            raise ValueError(f"not a version {VERSION} checkpoint")
        if length != len(body) or zlib.crc32(body) != crc:
            raise ValueError("checkpoint length or CRC mismatch")
        try:
            *fixed, count = _FIXED.unpack_from(body)
            pos = _FIXED.size
            metas = []
            for _ in range(count):
                base, max_ts, first = _SEGMENT.unpack_from(body, pos)
                metas.append(SegmentMeta(
                    base_offset=base, max_timestamp=_maybe(max_ts), first_write_ms=_maybe(first)
                ))
                pos += _SEGMENT.size
            (plen,) = _LEN.unpack_from(body, pos)
        except struct.error as exc:
            raise ValueError(f"truncated checkpoint: {exc}") from None
        producers = bytes(body[pos + _LEN.size :])
        if len(producers) != plen:
            raise ValueError("producer snapshot length mismatch")
        rec_off, rec_seg, rec_pos, hw, start, snap = fixed
        return cls(
            recovery_offset=rec_off, recovery_segment=rec_seg, recovery_position=rec_pos,
            high_watermark=hw, log_start_offset=start, snapshot_offset=snap,
            segments=tuple(metas), producers=producers,
        )


def _known(value: int | None) -> int:
    return UNKNOWN if value is None else value


def _maybe(value: int) -> int | None:
    return None if value == UNKNOWN else value


def read_checkpoint(directory: Path) -> Checkpoint | None:
    """The partition checkpoint, or None (with a warning) when missing or unusable."""
    path = directory / CHECKPOINT_NAME
    try:
        return Checkpoint.decode(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring checkpoint %s: %s", path, exc)
        return None

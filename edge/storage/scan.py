"""Recovery scan: verify every batch after the recovery point by length and CRC.

Only bytes that were never known to be fsynced are scanned, so start-up time
depends on how much was written since the last flush, not on the log size.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Final, NamedTuple

from edge.protocol import batch as batch_codec
from edge.protocol.batch import HEADER_SIZE, MAX_BATCH_BYTES, BatchHeader
from edge.protocol.errors import CorruptBatch

# Large sequential reads: an SD card gives its best throughput at >= 512 KiB.
CHUNK: Final = 1024 * 1024

Visitor = Callable[[int, BatchHeader], None]


class ScanOutcome(NamedTuple):
    end: int
    """Position after the last whole, valid batch."""
    next_offset: int
    """Offset that follows that batch."""
    problem: str | None
    """Why the scan stopped before the end of the file; None when it reached it."""


class _Reader:
    """Chunked preads over ``[start, size)``, re-reading when a batch crosses a chunk."""

    __slots__ = ("buf", "buf_start", "fd", "size")

    def __init__(self, fd: int, start: int, size: int) -> None:
        self.fd, self.size = fd, size
        self.buf, self.buf_start = b"", start

    def window(self, pos: int, need: int) -> tuple[bytes, int] | None:
        """A buffer holding ``[pos, pos + need)`` and ``pos``'s index in it; None past EOF."""
        if pos + need > self.size:
            return None
        off = pos - self.buf_start
        if off < 0 or off + need > len(self.buf):
            self.buf = os.pread(self.fd, min(max(CHUNK, need), self.size - pos), pos)
            self.buf_start, off = pos, 0
            if len(self.buf) < need:  # the file shrank under us
                return None
        return self.buf, off


def scan(fd: int, start: int, size: int, expected_offset: int, visit: Visitor) -> ScanOutcome:
    """Verify the batches in ``[start, size)`` of a segment file, calling ``visit`` for each.

    Stops at the first batch that is torn (runs past ``size``), fails its
    header checks or CRC, or does not continue the offsets.
    """
    reader = _Reader(fd, start, size)
    pos, expected = start, expected_offset
    while pos < size:
        got = reader.window(pos, HEADER_SIZE)
        if got is None:
            return ScanOutcome(pos, expected, f"torn batch header at {pos}")
        buf, off = got
        _, total = batch_codec.batch_prefix(buf, off)
        if not HEADER_SIZE <= total <= MAX_BATCH_BYTES:
            return ScanOutcome(pos, expected, f"impossible batch length {total} at {pos}")
        got = reader.window(pos, total)
        if got is None:
            return ScanOutcome(pos, expected, f"torn batch of {total} bytes at {pos}")
        buf, off = got
        try:
            header = batch_codec.verify(buf, off)
        except CorruptBatch as exc:
            return ScanOutcome(pos, expected, f"{exc} at {pos}")
        if header.base_offset != expected:
            return ScanOutcome(
                pos, expected, f"offset {header.base_offset} at {pos}, expected {expected}"
            )
        visit(pos, header)
        pos += total
        expected = header.next_offset
    return ScanOutcome(pos, expected, None)

"""Sparse offset index of one segment, held in memory and mirrored to a file.

File ``<20-digit base offset>.index``: back-to-back 8-byte entries, big-endian::

    offset size field
    0      4    relative_offset u32  base offset of a batch minus the segment's base offset
    4      4    position        u32  byte position of that batch in the segment's .log file

Both fields strictly increase from entry to entry. A batch gets an entry when at
least ``index_interval_bytes`` of log lie between the previous entry (or the
start of the file) and the batch, so position 0 never has one: a lookup that
finds no entry starts at 0. Whole entries only: a trailing partial entry is
ignored.

The file is a cache of the log, never the truth. Entries are buffered in memory
and written when the SPU flushes and when the segment rolls (no write per
append); the file is fsynced when its segment is rolled and at close. A missing,
short or inconsistent file is rebuilt from the segment (see ``segment.py``).
"""

from __future__ import annotations

import struct
import sys
from array import array
from bisect import bisect_right
from typing import Final

ENTRY: Final = struct.Struct(">II")
ENTRY_SIZE: Final = ENTRY.size
MAX_RELATIVE: Final = 2**32 - 1
if array("I").itemsize != 4:  # the file format and the arrays share one layout
    raise ImportError("edge.storage needs a platform with 4-byte unsigned ints")


class OffsetIndex:
    """In-memory sparse index: relative offsets and positions as two u32 arrays."""

    __slots__ = ("interval", "positions", "relatives", "written")

    def __init__(self, interval: int) -> None:
        self.interval = interval
        self.relatives = array("I")
        self.positions = array("I")
        self.written = 0
        """How many leading entries the index file already holds."""

    def __len__(self) -> int:
        return len(self.relatives)

    @property
    def last_position(self) -> int:
        """Position of the last indexed batch (0, the implicit first entry, if none)."""
        return self.positions[-1] if self.positions else 0

    def maybe_add(self, relative: int, position: int) -> None:
        """Index the batch at ``position`` if it lies an interval past the last entry."""
        if position - self.last_position >= self.interval:
            self.relatives.append(relative)
            self.positions.append(position)

    def floor(self, relative: int) -> tuple[int, int]:
        """``(relative, position)`` of the last entry at or before ``relative`` (else 0, 0)."""
        i = bisect_right(self.relatives, relative) - 1
        if i < 0:
            return 0, 0
        return self.relatives[i], self.positions[i]

    def last_within(self, position: int, relative: int) -> int:
        """Position of the last entry with ``position <= position`` and ``relative <= relative``.

        Both columns increase, so the answer is the lower of two binary searches;
        0 (the implicit entry) when no entry qualifies.
        """
        i = min(
            bisect_right(self.positions, position), bisect_right(self.relatives, relative)
        ) - 1
        return self.positions[i] if i >= 0 else 0

    def truncate_entries(self, count: int) -> None:
        """Keep only the first ``count`` entries."""
        del self.relatives[count:]
        del self.positions[count:]
        self.written = min(self.written, count)

    def truncate_at(self, position: int) -> None:
        """Drop entries for batches at or after ``position``."""
        self.truncate_entries(bisect_right(self.positions, position - 1))

    def take_pending(self) -> bytes:
        """Encoded entries not yet in the file; they count as written afterwards."""
        start = self.written
        self.written = len(self.relatives)
        return encode_entries(self.relatives[start:], self.positions[start:])

    def valid_prefix(self, segment_size: int) -> int:
        """How many leading entries are plausible for a segment of ``segment_size`` bytes."""
        prev_rel, prev_pos = 0, 0
        for i, (rel, pos) in enumerate(zip(self.relatives, self.positions, strict=True)):
            if rel <= prev_rel or pos <= prev_pos or pos >= segment_size:
                return i
            prev_rel, prev_pos = rel, pos
        return len(self.relatives)

    @classmethod
    def from_bytes(cls, data: bytes, interval: int) -> OffsetIndex:
        """Index holding the whole entries of an index file (all counted as written)."""
        index = cls(interval)
        words = array("I")
        words.frombytes(data[: len(data) - len(data) % ENTRY_SIZE])
        if sys.byteorder == "little":
            words.byteswap()
        index.relatives = words[0::2]
        index.positions = words[1::2]
        index.written = len(index.relatives)
        return index


def encode_entries(relatives: array[int], positions: array[int]) -> bytes:
    """Interleave two u32 columns into index-file bytes."""
    words = array("I", bytes(8 * len(relatives)))
    words[0::2] = relatives
    words[1::2] = positions
    if sys.byteorder == "little":
        words.byteswap()
    return words.tobytes()

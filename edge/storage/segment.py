"""One segment of a partition log: a file of record batches plus its sparse index.

File ``<20-digit base offset>.log`` holds the batches of consecutive offsets
from the base offset on, back to back, byte for byte as ``edge.protocol.batch``
lays them out (no file header, no padding, no trailer)::

    position 0              batch whose base_offset is the segment's base offset
    position p + size(b)    the batch after b; its base_offset is b's last offset + 1
    ...                     until the file size, which is the segment's ``size``

Names sort like offsets because the base offset is written in 20 digits. Every
append is one ``os.write``/``os.writev`` of one whole batch at the end of the
file, so after a crash only the bytes after the last fsync can be torn; the
recovery scan (``scan.py``) verifies them and cuts the file at the last whole
batch. The index (``index.py``) is rebuilt from this file whenever it is short
or inconsistent.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any, Final

from edge.protocol.batch import (
    HEADER_SIZE,
    LOG_OVERHEAD,
    MAX_BATCH_BYTES,
    set_base_offset,
    set_leader_epoch,
)
from edge.protocol.errors import StorageError
from edge.storage.fileio import Buffer, write_all
from edge.storage.index import ENTRY_SIZE, OffsetIndex

LOG_SUFFIX: Final = ".log"
INDEX_SUFFIX: Final = ".index"
NAME_DIGITS: Final = 20
NO_TIMESTAMP: Final = -1
# Header fields read while walking: (base_offset, batch_length, ...) always first.
PREFIX: Final = struct.Struct(">qI")
SPAN: Final = struct.Struct(">qI11xi")  # + last_offset_delta (byte 23)
TIMES: Final = struct.Struct(">qI11xi8xq")  # + max_timestamp (byte 35)
PATCHED_BYTES: Final = 16  # base offset, batch length, leader epoch: what the leader sets
# One pread serves every header of small batches inside an index interval.
WALK_WINDOW: Final = 8192
_OPEN_FLAGS: Final = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC

log = logging.getLogger(__name__)

def log_name(base_offset: int) -> str:
    return f"{base_offset:0{NAME_DIGITS}d}{LOG_SUFFIX}"


def parse_log_name(name: str) -> int | None:
    """Base offset of a segment file name, None for any other name."""
    stem = name[: -len(LOG_SUFFIX)]
    if name.endswith(LOG_SUFFIX) and len(stem) == NAME_DIGITS and stem.isdigit():
        return int(stem)
    return None


def walk(
    fd: int, start: int, end: int, layout: struct.Struct, window: int = WALK_WINDOW
) -> Iterator[tuple[int, tuple[Any, ...]]]:
    """``(position, header fields)`` of each batch in ``[start, end)`` of trusted data.

    Reads headers only (no CRC): for data that is already known to be whole.
    Raises StorageError when a length is impossible or a batch crosses ``end``.
    """
    pos, buf, buf_start, last_size = start, b"", start, 0
    while pos < end:
        off = pos - buf_start
        if off + layout.size > len(buf):
            want = layout.size if last_size > window else window
            buf, buf_start, off = os.pread(fd, min(want, end - pos), pos), pos, 0
            if len(buf) < layout.size:
                raise StorageError(f"batch header at {pos} cut short", position=pos)
        fields = layout.unpack_from(buf, off)
        last_size = LOG_OVERHEAD + fields[1]
        if not HEADER_SIZE <= last_size <= MAX_BATCH_BYTES or pos + last_size > end:
            raise StorageError(f"impossible batch length at {pos}", position=pos)
        yield pos, fields
        pos += last_size


class Segment:
    """A segment file, its index and what the log knows about them in memory."""

    __slots__ = (
        "_fd", "_index_fd", "_index_file_len", "base_offset", "directory", "first_write_ms",
        "index", "index_loaded", "max_timestamp", "next_offset", "size",
    )

    def __init__(self, directory: Path, base_offset: int, *, size: int, interval: int) -> None:
        self.directory = directory
        self.base_offset = base_offset
        self.size = size
        self.next_offset = base_offset
        """Offset after the last batch; set by whoever learns it (recovery, append)."""
        self.max_timestamp: int | None = None
        """Largest batch max_timestamp, NO_TIMESTAMP when empty, None when not yet known."""
        self.first_write_ms: int | None = None
        self.index = OffsetIndex(interval)
        self.index_loaded = False
        self._fd: int | None = None
        self._index_fd: int | None = None
        self._index_file_len = 0

    @property
    def log_path(self) -> Path:
        return self.directory / log_name(self.base_offset)

    @property
    def index_path(self) -> Path:
        return self.log_path.with_suffix(INDEX_SUFFIX)

    @classmethod
    def create(cls, directory: Path, base_offset: int, interval: int) -> Segment:
        """A new empty segment file (the caller fsyncs the directory)."""
        seg = cls(directory, base_offset, size=0, interval=interval)
        seg._fd = os.open(seg.log_path, _OPEN_FLAGS | os.O_CREAT | os.O_EXCL, 0o644)
        seg.max_timestamp = NO_TIMESTAMP
        seg.index_loaded = True
        with suppress(FileNotFoundError):
            os.unlink(seg.index_path)  # a stale index of an earlier life
        return seg

    @property
    def fd(self) -> int:
        """Descriptor of the .log file, opened on first use."""
        if self._fd is None:
            self._fd = os.open(self.log_path, _OPEN_FLAGS)
        return self._fd

    @property
    def index_fd(self) -> int | None:
        return self._index_fd

    def append_batch(self, batch: Buffer, base_offset: int, leader_epoch: int) -> None:
        """Write one whole batch at the end of the file with its offset and epoch set.

        A writable buffer is patched in place; an immutable one goes out as a
        patched copy of its first 16 bytes followed by the rest, never copied.
        """
        if isinstance(batch, bytearray) or (isinstance(batch, memoryview) and not batch.readonly):
            set_base_offset(batch, 0, base_offset)
            set_leader_epoch(batch, 0, leader_epoch)
            parts: list[Buffer] = [batch]
        else:
            head = bytearray(batch[:PATCHED_BYTES])
            set_base_offset(head, 0, base_offset)
            set_leader_epoch(head, 0, leader_epoch)
            parts = [head, memoryview(batch)[PATCHED_BYTES:]]
        write_all(self.fd, parts)
        self.size += len(batch)

    def cut(self, position: int) -> None:
        """Truncate the file at ``position`` durably, dropping index entries beyond it."""
        os.ftruncate(self.fd, position)
        os.fsync(self.fd)
        self.size = position
        self.index.truncate_at(position)

    # -- index -----------------------------------------------------------------------

    def restore_index(self, end: int) -> int:
        """Load the index file, keep its plausible entries before ``end`` and index the
        batches from the last entry up to ``end`` (trusted data); returns the offset
        that follows them."""
        try:
            data = self.index_path.read_bytes()
        except FileNotFoundError:
            data = b""
        index = OffsetIndex.from_bytes(data, self.index.interval)
        keep = index.valid_prefix(end)
        if keep and not self._entry_matches(index, keep - 1):
            keep = 0
        index.truncate_entries(keep)
        self.index, self._index_file_len = index, len(data)
        self.index_loaded = True
        return self.fill_index(end)

    def fill_index(self, end: int) -> int:
        """Index the batches between the last entry and ``end``; their next offset."""
        idx = self.index
        start = idx.last_position
        expected = self.base_offset + (idx.relatives[-1] if len(idx) else 0)
        for pos, (base, _, delta) in walk(self.fd, start, end, SPAN):
            if base != expected:
                raise StorageError(
                    f"{self.log_path.name}: offset {base} at {pos}, expected {expected}",
                    position=pos,
                )
            idx.maybe_add(base - self.base_offset, pos)
            expected = base + delta + 1
        return expected

    def _entry_matches(self, index: OffsetIndex, i: int) -> bool:
        """Whether index entry ``i`` points at the batch it names."""
        head = os.pread(self.fd, PREFIX.size, index.positions[i])
        return len(head) == PREFIX.size and (
            PREFIX.unpack(head)[0] == self.base_offset + index.relatives[i]
        )

    def load_index(self) -> int:
        """Load the index of a whole (trusted) segment, repairing the file if needed;
        returns the offset after its last batch."""
        end = self.restore_index(self.size)
        idx = self.index
        if idx.written != len(idx) or self._index_file_len != ENTRY_SIZE * idx.written:
            log.info("rebuilt index %s", self.index_path)
            self.write_index(sync=True)
            self.close_index()
        return end

    def ensure_index(self) -> None:
        """Load the index of a segment that recovery did not touch, on first use."""
        if self.index_loaded:
            return
        end = self.load_index()
        if end != self.next_offset:
            # Reads of the missing offsets fail with StorageError; nothing else is served.
            log.error("%s ends at offset %d, the next segment starts at %d",
                      self.log_path, end, self.next_offset)

    def open_index(self) -> int:
        if self._index_fd is None:
            self._index_fd = os.open(self.index_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        return self._index_fd

    def write_index(self, *, sync: bool = False) -> None:
        """Bring the index file up to the in-memory entries (a cache: errors are logged)."""
        try:
            fd = self.open_index()
            start = ENTRY_SIZE * self.index.written
            if self._index_file_len != start:
                os.ftruncate(fd, start)
            pending = self.index.take_pending()
            if pending:
                os.pwrite(fd, pending, start)
            self._index_file_len = start + len(pending)
            if sync:
                os.fsync(fd)
        except OSError as exc:
            # The index is rebuilt from the log on the next open; the log is the truth.
            log.warning("cannot write index %s: %s", self.index_path, exc)
            self._index_file_len = -1

    def close_index(self) -> None:
        if self._index_fd is not None:
            os.close(self._index_fd)
            self._index_fd = None

    # -- lookups -----------------------------------------------------------------------

    def locate(self, offset: int) -> tuple[int, int]:
        """``(position, base_offset)`` of the batch that holds ``offset``."""
        self.ensure_index()
        _, start = self.index.floor(offset - self.base_offset)
        for pos, (base, _, delta) in walk(self.fd, start, self.size, SPAN):
            if offset <= base + delta:
                return pos, base
        raise StorageError(
            f"offset {offset} not found in {self.log_path.name}", offset=offset
        )

    def extent(self, start: int, max_bytes: int, max_offset: int) -> tuple[int, int]:
        """``(end position, next offset)`` of the whole batches read from ``start``.

        The batch at ``start`` is always included; later ones only while the total
        stays within ``max_bytes`` and their base offset is below ``max_offset``.
        """
        limit = min(self.size, start + max_bytes)
        from_pos = max(start, self.index.last_within(limit, max_offset - self.base_offset))
        for pos, (base, length) in walk(self.fd, from_pos, self.size, PREFIX):
            if pos > start and (pos + LOG_OVERHEAD + length > limit or base >= max_offset):
                return pos, base
        return self.size, self.next_offset

    def find_timestamp(self, timestamp_ms: int) -> int | None:
        """Base offset of the first batch whose max_timestamp >= ``timestamp_ms``."""
        for _, (base, _, _, max_ts) in walk(self.fd, 0, self.size, TIMES):
            if max_ts >= timestamp_ms:
                return int(base)
        return None

    def known_max_timestamp(self) -> int:
        """``max_timestamp``, computed by walking the headers when not yet known."""
        if self.max_timestamp is None:
            self.max_timestamp = max(
                (f[3] for _, f in walk(self.fd, 0, self.size, TIMES)), default=NO_TIMESTAMP
            )
        return self.max_timestamp

    # -- lifetime -----------------------------------------------------------------------

    def close(self) -> None:
        self.close_index()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def open_fds(self) -> list[int]:
        return [fd for fd in (self._fd, self._index_fd) if fd is not None]

    def remove_files(self) -> None:
        """Unlink the .log and .index files (the caller fsyncs the directory)."""
        for path in (self.log_path, self.index_path):
            with suppress(FileNotFoundError):
                os.unlink(path)


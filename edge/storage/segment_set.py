"""The segments of one partition directory, oldest first, and their lifetimes."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from edge.protocol.errors import StorageError
from edge.storage.checkpoint import SegmentMeta
from edge.storage.config import LogConfig
from edge.storage.fileio import DirLock
from edge.storage.segment import Segment

# A fetch may still be sending from a deleted segment; its descriptor is closed
# this much later, so the number can never be reused under a running sendfile.
RETIRED_FD_GRACE_MS: Final = 60_000


class SegmentSet:
    """Ordered segments (the last one active), their total size and retired descriptors."""

    def __init__(
        self, directory: Path, segments: list[Segment], lock: DirLock, interval: int
    ) -> None:
        self.directory = directory
        self.lock = lock
        self.interval = interval
        self._segments = segments
        self._bases = [s.base_offset for s in segments]
        self.size = sum(s.size for s in segments)
        self._retired: list[tuple[int, Segment]] = []
        self.active.open_index()

    @property
    def active(self) -> Segment:
        return self._segments[-1]

    @property
    def first(self) -> Segment:
        return self._segments[0]

    def __iter__(self) -> Iterator[Segment]:
        return iter(self._segments)

    def __len__(self) -> int:
        return len(self._segments)

    def find(self, offset: int) -> tuple[int, Segment]:
        """``(index, segment)`` of the segment whose range holds ``offset``."""
        i = bisect_right(self._bases, offset) - 1
        return i, self._segments[i]

    def roll(self, base_offset: int) -> Segment:
        """Close the active segment's index writes and start a new active segment."""
        new = None
        try:
            new = Segment.create(self.directory, base_offset, self.interval)
            new.open_index()
        except OSError as exc:
            if new is not None:  # a full disk: the next attempt must find no leftovers
                new.close()
                new.remove_files()
            raise StorageError(f"cannot roll segment: {exc}", errno=exc.errno) from exc
        self.active.write_index()
        self._segments.append(new)
        self._bases.append(base_offset)
        return new

    def expired_prefix(self, config: LogConfig, now: int, max_offset: int | None) -> int:
        """How many of the oldest closed segments retention deletes now."""
        total, count = self.size, 0
        for seg in self._segments[:-1]:
            if max_offset is not None and seg.next_offset > max_offset:
                break
            oversize = config.retention_bytes is not None and total > config.retention_bytes
            if not oversize and (
                config.retention_ms is None
                or seg.known_max_timestamp() >= now - config.retention_ms
            ):
                break
            total -= seg.size
            count += 1
        return count

    def drop(self, start: int, stop: int | None, now: int) -> set[int]:
        """Unlink ``segments[start:stop]`` (caller fsyncs the directory); ids of those gone.

        Their descriptors retire rather than close, see ``RETIRED_FD_GRACE_MS``.
        """
        gone = self._segments[start:stop]
        for seg in gone:
            seg.remove_files()
            self._retired.append((now, seg))
            self.size -= seg.size
        del self._segments[start:stop]
        del self._bases[start:stop]
        return {id(s) for s in gone}

    def start_over(self, offset: int) -> Segment:
        """After every segment was dropped: a new empty segment at ``offset``."""
        seg = Segment.create(self.directory, offset, self.interval)
        seg.open_index()
        self._segments, self._bases = [seg], [offset]
        return seg

    def recount(self) -> None:
        self.size = sum(s.size for s in self._segments)

    def close_retired(self, now: int | None, busy: set[int]) -> None:
        """Close retired descriptors after the grace period unless a flush holds them."""
        keep = []
        for when, seg in self._retired:
            if (now is None or now - when >= RETIRED_FD_GRACE_MS) and not busy & set(
                seg.open_fds()
            ):
                seg.close()
            else:
                keep.append((when, seg))
        self._retired = keep

    def release(self, pinned: set[int], *, active: bool) -> int:
        """Close descriptors that reopen on first use; returns how many were closed.

        Every closed segment's, except those whose ids are in ``pinned`` (a flush
        still has to sync them); with ``active`` also the active segment's (its
        index written first) and the directory's, unless that one holds the lock.
        """
        closed = 0
        for seg in self._segments[:-1]:
            if id(seg) not in pinned:
                closed += len(seg.open_fds())
                seg.close()
        if active:
            seg = self.active
            seg.write_index()
            closed += len(seg.open_fds())
            seg.close()
            closed += self.lock.release()
        return closed

    def close(self) -> None:
        for seg in self._segments:
            seg.close()
        self.close_retired(None, set())
        self.lock.close()

    def metas(self) -> tuple[SegmentMeta, ...]:
        return tuple(
            SegmentMeta(
                base_offset=s.base_offset, max_timestamp=s.max_timestamp,
                first_write_ms=s.first_write_ms,
            )
            for s in self._segments
        )

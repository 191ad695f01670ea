"""Group-commit plumbing: capture a flush on the loop thread, fsync in a worker.

The SPU calls ``PartitionLog.prepare_flush`` on its event loop, hands the ticket
to ``asyncio.to_thread(PartitionLog.run_flush, ticket)`` and then calls
``complete_flush`` on the loop again. ``run`` touches only the descriptors the
ticket captured and the partition's ``Health`` flag, so the loop keeps appending
while the disk syncs.
"""

from __future__ import annotations

import os
from typing import Final

from edge.protocol.errors import StorageError
from edge.storage.segment import Segment

# Rolled segments keep their index descriptor open until a flush covered them;
# past this many (a "never" partition that is not flushed) they are closed unsynced.
MAX_OPEN_ROLLED_INDEXES: Final = 8

RecoveryPoint = tuple[int, int, int]
"""(offset, segment base offset, byte position): everything before it is fsynced."""


class Health:
    """Failure flag of one partition; a failed fsync sets it from a worker thread.

    Linux reports a writeback error to one fsync only and then marks the pages
    clean, so a later fsync can "succeed" over lost data: after one failure the
    partition must refuse every write and flush for good.
    """

    __slots__ = ("error",)

    def __init__(self) -> None:
        self.error: str | None = None

    def fail(self, message: str) -> None:
        if self.error is None:
            self.error = message

    def check(self) -> None:
        if self.error is not None:
            raise StorageError(f"partition failed: {self.error}", reason=self.error)


class FlushTicket:
    """One pending fsync: what to sync, and the recovery point it makes durable."""

    __slots__ = (
        "_dir_fds", "_fds", "_health", "error", "offset", "position", "ran", "segment_base",
        "segments",
    )

    def __init__(
        self,
        *,
        fds: tuple[int, ...],
        health: Health,
        offset: int,
        segment_base: int,
        position: int,
        segments: tuple[Segment, ...],
        dir_fds: tuple[int, ...] = (),
    ) -> None:
        self._fds = fds
        self._dir_fds = dir_fds
        self._health = health
        self.offset = offset
        """Every offset below this is durable once the ticket ran."""
        self.segment_base = segment_base
        self.position = position
        self.segments = segments
        """Rolled segments whose index descriptors close when the ticket completes."""
        self.error: str | None = None
        self.ran = False

    @property
    def fds(self) -> tuple[int, ...]:
        return self._fds

    def run(self) -> None:
        """fsync every captured descriptor; safe to call from a worker thread.

        A failing fsync re-raises its OSError after marking the partition failed,
        so ``complete_flush`` and every later write raise StorageError.
        """
        try:
            for fd in self._fds:
                # fdatasync syncs the data and the size (what reading it back needs)
                # and skips timestamps: a shorter, steadier wait than fsync for an
                # append-only file. Directories get a full fsync.
                if fd in self._dir_fds:
                    os.fsync(fd)
                else:
                    os.fdatasync(fd)
        except OSError as exc:
            self.error = f"fsync failed: {exc}"
            self._health.fail(self.error)
            raise
        finally:
            self.ran = True

    def __repr__(self) -> str:
        return f"FlushTicket(offset={self.offset}, fds={len(self._fds)})"


class FlushTracker:
    """What is flushed, what still needs an fsync, and which tickets are in flight."""

    def __init__(self, health: Health, recovery: RecoveryPoint) -> None:
        self.health = health
        self.recovery = recovery
        self.flushed = recovery[0]
        self.rolled: list[Segment] = []  # rolled since the last completed flush
        self.dir_dirty = False
        self.outstanding: list[FlushTicket] = []

    def on_roll(self, old: Segment) -> None:
        """``old`` stopped being active: the next flush syncs it and the new directory entry."""
        self.rolled.append(old)
        self.dir_dirty = True
        held = self.held_segments()
        for seg in self.rolled[:-MAX_OPEN_ROLLED_INDEXES]:
            if id(seg) not in held:
                seg.close_index()

    def held_segments(self) -> set[int]:
        return {id(s) for t in self.outstanding for s in t.segments}

    def busy_fds(self) -> set[int]:
        return {fd for t in self.outstanding for fd in t.fds}

    def prepare(self, active: Segment, leo: int, dir_fd: int) -> FlushTicket | None:
        if self.flushed == leo and not self.rolled and not self.dir_dirty:
            return None
        active.write_index()
        rolled = tuple(self.rolled)
        fds = [fd for seg in rolled for fd in seg.open_fds()]
        fds.append(active.fd)
        dir_fds: tuple[int, ...] = ()
        if self.dir_dirty:
            fds.append(dir_fd)
            dir_fds = (dir_fd,)
            self.dir_dirty = False
        ticket = FlushTicket(
            fds=tuple(fds), dir_fds=dir_fds, health=self.health, offset=leo,
            segment_base=active.base_offset, position=active.size, segments=rolled,
        )
        self.outstanding.append(ticket)
        return ticket

    def complete(self, ticket: FlushTicket, active: Segment) -> int:
        if ticket in self.outstanding:
            self.outstanding.remove(ticket)
        if ticket.error is not None:
            self.health.fail(ticket.error)
        self.health.check()
        if not ticket.ran:
            raise ValueError("complete_flush before run_flush")
        if ticket.offset > self.flushed:
            self.flushed = ticket.offset
            self.recovery = (ticket.offset, ticket.segment_base, ticket.position)
        held = self.held_segments()
        for seg in ticket.segments:
            if seg in self.rolled:
                self.rolled.remove(seg)
            if id(seg) not in held and seg is not active:
                seg.close_index()
        return self.flushed

    def forget(self, gone: set[int]) -> None:
        """Segments with these ids were deleted: nothing of theirs needs a sync."""
        self.rolled = [s for s in self.rolled if id(s) not in gone]

    def truncated(self, leo: int, active: Segment) -> None:
        """The log was cut (and fsynced) at ``leo``, now the end of ``active``."""
        self.flushed = min(self.flushed, leo)
        point = (leo, active.base_offset, active.size)
        if self.recovery[0] > leo or self.recovery[1] > active.base_offset:
            self.recovery = point
        for ticket in self.outstanding:
            # It syncs everything that was written below ``leo``; data appended
            # from now on reuses those offsets and is not covered.
            if ticket.offset > leo:
                ticket.offset, ticket.segment_base, ticket.position = point
        if active in self.rolled:
            self.rolled.remove(active)

    def log_start_moved(self, log_start: int, first: Segment) -> None:
        """Retention deleted the segments before ``first``: no point may refer to them."""
        point = (log_start, first.base_offset, 0)
        if self.recovery[0] < log_start:
            self.recovery = point
        for ticket in self.outstanding:
            if ticket.segment_base < first.base_offset:
                ticket.offset, ticket.segment_base, ticket.position = point

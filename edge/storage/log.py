"""The append-only, segmented log of one partition.

A partition directory holds::

    00000000000000000000.log      record batches (layout in segment.py)
    00000000000000000000.index    sparse offset index (layout in index.py)
    00000000000000123456.log      the next segment, named by its base offset
    00000000000000123456.index
    partition.checkpoint          recovery point, HW, log start, producer state (checkpoint.py)
    dropped.cbor, gaps.cbor       what the disk budget dropped, gap markers held (losses.py)

A full disk (ENOSPC while writing) is not a failure: the partial write is cut
off, the append raises DiskFull, and for ``DISK_FULL_RETRY_S`` further appends
are refused without touching the disk (so a pipelined producer cannot slip a
later batch in before the refused one). The next append after that tries again,
so the log takes writes again once space returns, without a restart.

Threading: every method runs on the SPU's event-loop thread except
``run_flush``, which only fsyncs the descriptors captured in its ticket and may
run in a worker thread. Calls block on disk I/O only where they say so.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Final, NamedTuple, NoReturn

from edge.protocol.batch import HEADER_SIZE, BatchHeader, decode_header
from edge.protocol.errors import CorruptBatch, DiskFull, OffsetOutOfRange, StorageError
from edge.storage.budget import Candidate
from edge.storage.checkpoint import CHECKPOINT_NAME, Checkpoint
from edge.storage.config import LogConfig
from edge.storage.fileio import TMP_SUFFIX, Buffer, DirLock, write_atomic
from edge.storage.flush import FlushTicket, FlushTracker, Health
from edge.storage.index import MAX_RELATIVE
from edge.storage.losses import DropTally, GapLedger
from edge.storage.recovery import recover
from edge.storage.segment import Segment
from edge.storage.segment_set import RETIRED_FD_GRACE_MS, SegmentSet

__all__ = ["RETIRED_FD_GRACE_MS", "AppendResult", "FlushTicket", "PartitionLog", "ReadSlice"]

log = logging.getLogger(__name__)

# After ENOSPC, appends are refused this long before the disk is tried again:
# short enough that writes resume within a second of space returning.
DISK_FULL_RETRY_S: Final = 0.5
_FULL_ERRNOS: Final = (errno.ENOSPC, errno.EDQUOT)
# Closed segments reads keep open per partition (release_idle closes them all).
READ_SEGMENTS_OPEN: Final = 4


class Evicted(NamedTuple):
    """What one eviction deleted, and how much of it the cloud lacked."""

    segments: int
    bytes: int
    lost_records: int
    lost_bytes: int


class AppendResult(NamedTuple):
    base_offset: int
    last_offset: int
    duplicate: bool
    max_timestamp: int


class ReadSlice(NamedTuple):
    """Whole batches in one segment file: ``os.sendfile(out, fd, position, length)``."""

    fd: int
    position: int
    length: int
    first_offset: int
    next_offset: int


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class PartitionLog:
    """Segmented log with sparse indexes, group-commit flushes, recovery and retention."""

    def __init__(self, directory: Path, config: LogConfig, lock: DirLock, now: int) -> None:
        """Use ``PartitionLog.open``."""
        state = recover(directory, config, lock.fd, now)
        self._dir, self._config = directory, config
        self._segs = SegmentSet(directory, state.segments, lock, config.index_interval_bytes)
        active = self._segs.active
        self._health = Health()
        self._leo = active.next_offset
        self._log_start = state.log_start_offset
        self._hw = state.high_watermark
        self._flush = FlushTracker(self._health, (self._leo, active.base_offset, active.size))
        self._producers = state.producers
        self._closed = False
        self._checkpoint_written: bytes | None = None
        self._used = False  # appended to or read since the last release_idle
        self._reading: list[Segment] = []  # closed segments reads opened, oldest first
        self._full_since: float | None = None
        self.dropped = DropTally(directory)
        self.gaps = GapLedger(directory)
        self.gaps.truncate(self._leo, self._segs.lock.fd)
        # The recovered state is fsynced: record it, so a crash soon after (or a new
        # partition that never reaches its first checkpoint) is not verified again.
        # On a full disk the next checkpoint does it.
        with suppress(DiskFull):
            self.write_checkpoints()
        log.info(
            "opened %s: offsets %d..%d, %d segments, verified %d bytes",
            directory, self._log_start, self._leo, len(self._segs), state.scanned_bytes,
        )

    @classmethod
    def open(cls, directory: Path, config: LogConfig, *, exclusive: bool = True
             ) -> PartitionLog:
        """Create the partition directory, or recover it (blocks: reads the unflushed tail).

        ``exclusive`` locks the directory (``flock``) while the log is open; a caller
        that holds a lock over all its partitions passes False (see ``DirLock``).
        """
        directory.mkdir(parents=True, exist_ok=True)
        lock = DirLock(directory, exclusive=exclusive)
        try:
            return cls(directory, config, lock, wall_clock_ms())
        except OSError as exc:
            lock.close()
            raise StorageError(f"cannot open {directory}: {exc}", path=str(directory)) from exc
        except BaseException:
            lock.close()
            raise

    # -- settings -----------------------------------------------------------------------

    @property
    def config(self) -> LogConfig:
        return self._config

    def reconfigure(self, config: LogConfig) -> bool:
        """Take new settings on the live log; False if they are the ones it has.

        Nothing written is rewritten: the next append rolls by the new segment size
        and age, the next ``apply_retention`` keeps by the new retention, and
        segments created from now on are indexed at the new interval.
        """
        self._check_open()
        if config == self._config:
            return False
        self._config = config
        self._segs.interval = config.index_interval_bytes
        return True

    # -- offsets ------------------------------------------------------------------------

    @property
    def directory(self) -> Path:
        return self._dir

    @property
    def log_start_offset(self) -> int:
        return self._log_start

    @property
    def log_end_offset(self) -> int:
        """LEO: the offset the next appended record gets."""
        return self._leo

    @property
    def flushed_offset(self) -> int:
        """Every offset below this one is on disk (fsynced)."""
        return self._flush.flushed

    @property
    def high_watermark(self) -> int:
        return self._hw

    def set_high_watermark(self, hw: int) -> None:
        """Set the HW (persisted by ``write_checkpoints``); it may not pass the LEO."""
        if not 0 <= hw <= self._leo:
            raise ValueError(f"high watermark {hw} outside 0..{self._leo}")
        self._hw = hw

    @property
    def size_bytes(self) -> int:
        """Bytes of all segment files."""
        return self._segs.size

    @property
    def segment_count(self) -> int:
        return len(self._segs)

    @property
    def disk_full(self) -> bool:
        """True from an ENOSPC until the next append that fits."""
        return self._full_since is not None

    @property
    def failed(self) -> bool:
        """True after a failed fsync or write: the partition refuses writes for good."""
        return self._health.error is not None

    # -- append -------------------------------------------------------------------------

    def append(
        self, batch: Buffer, *, leader_epoch: int, now_ms: int | None = None,
        replica: bool = False, before_write: Callable[[int], None] | None = None,
    ) -> AppendResult:
        """Append one CRC-verified batch (to the page cache: durable after a flush).

        A writable buffer gets its base offset and leader epoch patched in place.
        A retried batch of an idempotent producer is answered with its original
        offsets and ``duplicate=True``, and nothing is written. A follower copying
        its leader's log passes ``replica=True``: the leader already judged the
        sequence, so the batch is written as is and only recorded. ``before_write``
        is told the batch's size once it is known to be written (not a retry): the
        disk budget makes room there, or refuses by raising.
        """
        self._check_writable()
        self._check_space()
        self._used = True
        h = decode_header(batch)
        if h.size != len(batch):
            raise CorruptBatch(f"expected one batch of {h.size} bytes, got {len(batch)}")
        if not replica:
            dup = self._producers.check(
                h.producer_id, h.producer_epoch, h.base_sequence, h.record_count
            )
            if dup is not None:
                return AppendResult(dup.base_offset, dup.last_offset, True, h.max_timestamp)
        if before_write is not None:
            before_write(h.size)
        now = wall_clock_ms() if now_ms is None else now_ms
        base, last = self._leo, self._leo + h.last_offset_delta
        seg = self._segs.active
        if seg.size and self._should_roll(seg, h.size, last, now):
            old, seg = seg, self._roll(base)
            self._flush.on_roll(old)
        position = seg.size
        try:
            seg.append_batch(batch, base, leader_epoch)
        except OSError as exc:
            self._undo_write(seg, exc)
        self._full_since = None
        if seg.first_write_ms is None:
            seg.first_write_ms = now
        seg.index.maybe_add(base - seg.base_offset, position)
        seg.max_timestamp = max(seg.known_max_timestamp(), h.max_timestamp)
        seg.next_offset = self._leo = last + 1
        self._segs.size += h.size
        self._record_producer(h, base, last)
        if h.is_gap:
            self._record_gap(base, last + 1)
        return AppendResult(base, last, False, h.max_timestamp)

    def _check_space(self) -> None:
        since = self._full_since
        if since is not None and time.monotonic() - since < DISK_FULL_RETRY_S:
            raise DiskFull(f"disk full under {self._dir}; retry", path=str(self._dir))

    def _roll(self, base: int) -> Segment:
        try:
            return self._segs.roll(base)
        except StorageError as exc:
            if exc.data.get("errno") in _FULL_ERRNOS:
                self._full_since = time.monotonic()
                raise DiskFull(f"disk full rolling a segment under {self._dir}",
                               path=str(self._dir)) from exc
            raise

    def _record_gap(self, start: int, end: int) -> None:
        try:
            self.gaps.add(start, end, self._segs.lock.fd)
        except OSError as exc:
            # The gap batch itself is in the log; only the counter is behind.
            log.warning("cannot record the gap %d..%d of %s: %s", start, end - 1, self._dir, exc)

    def _should_roll(self, seg: Segment, size: int, last: int, now: int) -> bool:
        cfg = self._config
        first = seg.first_write_ms
        return (
            seg.size + size > cfg.segment_bytes
            or (first is not None and now - first >= cfg.segment_ms)
            or last - seg.base_offset > MAX_RELATIVE
        )

    def _undo_write(self, seg: Segment, exc: OSError) -> NoReturn:
        """Cut a partial write; a full disk is retriable, anything else is fatal."""
        try:
            os.ftruncate(seg.fd, seg.size)
        except OSError as cut_exc:
            self._health.fail(f"cannot undo a failed write: {cut_exc}")
            raise StorageError(f"write failed: {exc}", errno=exc.errno) from exc
        if exc.errno in _FULL_ERRNOS:
            self._full_since = time.monotonic()
            raise DiskFull(
                f"disk full writing {seg.log_path.name}", path=str(seg.log_path)
            ) from exc
        self._health.fail(f"write failed: {exc}")
        raise StorageError(f"write failed: {exc}", errno=exc.errno) from exc

    def _record_producer(self, h: BatchHeader, base: int, last: int) -> None:
        self._producers.record(
            h.producer_id, h.producer_epoch, h.base_sequence, h.record_count,
            base_offset=base, last_offset=last,
        )

    # -- flush --------------------------------------------------------------------------

    def prepare_flush(self) -> FlushTicket | None:
        """Capture what a flush must fsync; None when everything is already flushed."""
        self._check_writable()
        return self._flush.prepare(self._segs.active, self._leo, self._segs.lock.fd)

    @staticmethod
    def run_flush(ticket: FlushTicket) -> None:
        """fsync the ticket's descriptors; the one call that may run in a worker thread.

        Raises the OSError of a failed fsync (the partition is failed from then on).
        """
        ticket.run()

    def complete_flush(self, ticket: FlushTicket) -> int:
        """Advance ``flushed_offset`` after ``run_flush``; raises StorageError if it failed."""
        return self._flush.complete(ticket, self._segs.active)

    def flush(self) -> int:
        """prepare + run + complete, blocking the caller for the fsyncs."""
        ticket = self.prepare_flush()
        if ticket is None:
            return self._flush.flushed
        with suppress(OSError):  # complete_flush reports it as StorageError
            ticket.run()
        return self.complete_flush(ticket)

    # -- read ---------------------------------------------------------------------------

    def read(
        self, offset: int, max_bytes: int, *, max_offset: int | None = None
    ) -> ReadSlice | None:
        """Whole batches from the one holding ``offset``, all in one segment file.

        At least one batch, more while within ``max_bytes``; never a batch whose
        base offset is ``>= max_offset`` (the HW for consumers). None when there
        is nothing to read yet. The descriptor stays valid for at least
        ``RETIRED_FD_GRACE_MS`` after retention or truncation removed its segment.
        """
        self._check_open()
        if not self._log_start <= offset <= self._leo:
            raise OffsetOutOfRange(
                f"offset {offset} outside {self._log_start}..{self._leo}", offset=offset,
                log_start_offset=self._log_start, log_end_offset=self._leo,
            )
        limit = self._leo if max_offset is None else min(max_offset, self._leo)
        if offset >= limit:
            return None
        _, seg = self._segs.find(offset)
        self._used = True
        if seg is not self._segs.active and seg not in self._reading:
            self._switch_reading(seg)
        try:
            start, first = seg.locate(offset)
            end, next_offset = seg.extent(start, max_bytes, limit)
        except OSError as exc:
            raise StorageError(f"cannot read {seg.log_path.name}: {exc}", errno=exc.errno) from exc
        return ReadSlice(seg.fd, start, end - start, first, next_offset)

    def _switch_reading(self, seg: Segment) -> None:
        """Reads moved to another closed segment: past ``READ_SEGMENTS_OPEN`` of them,
        close the one read longest ago, so a consumer walking an old log keeps a few
        descriptors open, not one a segment (and a few consumers at different places
        do not reopen files on every read). A slice handed out earlier is safe: its
        sender duplicated the descriptor."""
        self._reading.append(seg)
        if len(self._reading) > READ_SEGMENTS_OPEN:
            oldest = self._reading.pop(0)
            if oldest is not self._segs.active and id(oldest) not in self._pinned():
                oldest.close()

    def _pinned(self) -> set[int]:
        """Ids of the segments whose descriptors a flush still needs."""
        return {id(s) for s in self._flush.rolled} | self._flush.held_segments()

    def release_idle(self) -> int:
        """Close the descriptors that reopen on first use; returns how many closed.

        Closed segments' descriptors always (unless a flush still needs them). The
        active segment's and the directory's too when nothing was appended or read
        since the last call and everything written is flushed, so the open files of
        an SPU follow the partitions in use, not all it hosts. (A ``never`` partition
        is not flushed, so it keeps its active segment open.) Blocks: may write the
        active segment's index.
        """
        if self._closed:
            return 0
        used, self._used = self._used, False
        f = self._flush
        settled = (not used and not f.outstanding and not f.rolled and not f.dir_dirty
                   and f.flushed == self._leo)
        self._reading = []
        return self._segs.release(self._pinned(), active=settled)

    def read_bytes(self, offset: int, max_bytes: int, *, max_offset: int | None = None) -> bytes:
        """Like ``read`` but copied into memory (for links that cannot sendfile)."""
        piece = self.read(offset, max_bytes, max_offset=max_offset)
        if piece is None:
            return b""
        data = os.pread(piece.fd, piece.length, piece.position)
        if len(data) != piece.length:
            raise StorageError(f"short read at offset {offset}", offset=offset)
        return data

    def bytes_from(self, offset: int) -> int:
        """Bytes of the batches from the one holding ``offset`` to the log end (what
        an uplink at ``offset`` still has to send)."""
        self._check_open()
        offset = max(offset, self._log_start)
        if offset >= self._leo:
            return 0
        try:
            return self._beyond(len(self._segs), offset)[1]
        except OSError as exc:
            raise StorageError(f"cannot read {self._dir}: {exc}", errno=exc.errno) from exc

    def timestamp_at(self, offset: int) -> int | None:
        """The first timestamp of the batch holding ``offset`` (None past the end)."""
        piece = self.read(max(offset, self._log_start), HEADER_SIZE)
        if piece is None:
            return None
        try:
            head = os.pread(piece.fd, HEADER_SIZE, piece.position)
        except OSError as exc:
            raise StorageError(f"cannot read {self._dir}: {exc}", errno=exc.errno) from exc
        return decode_header(head).first_timestamp

    def offset_for_timestamp(self, timestamp_ms: int) -> int | None:
        """Base offset of the first batch whose max_timestamp >= ``timestamp_ms``."""
        self._check_open()
        for seg in self._segs:
            if seg.known_max_timestamp() >= timestamp_ms:
                found = seg.find_timestamp(timestamp_ms)
                if found is not None:
                    return max(found, self._log_start)
        return None

    # -- truncation, retention ----------------------------------------------------------

    def truncate_to(self, offset: int) -> None:
        """Drop every batch at or after the one holding ``offset`` (blocks: fsyncs).

        The LEO becomes the base offset of that batch; at or below the log start
        the log is emptied and restarts at ``offset``. Checkpoints are rewritten, so
        data appended afterwards is never taken for data flushed before.
        """
        self._check_writable()
        if offset >= self._leo:
            return
        now = wall_clock_ms()
        self._reading = []
        try:
            if offset <= self._log_start:
                gone = self._segs.drop(0, None, now)
                self._segs.start_over(offset)
                self._log_start = self._leo = offset
            else:
                i, seg = self._segs.find(offset)
                position, base = seg.locate(offset)
                gone = self._segs.drop(i + 1, None, now)
                seg.cut(position)
                seg.write_index()
                seg.next_offset = self._leo = base
                seg.first_write_ms = seg.first_write_ms if seg.size else None
            self._segs.lock.fsync()
        except OSError as exc:
            self._health.fail(f"truncation failed: {exc}")
            raise StorageError(f"truncation failed: {exc}", errno=exc.errno) from exc
        self._segs.active.open_index()
        self._segs.recount()
        self._hw = min(self._hw, self._leo)
        self._flush.forget(gone)
        self._flush.truncated(self._leo, self._segs.active)
        self._producers.truncate(self._leo)
        self.gaps.truncate(self._leo, self._segs.lock.fd)
        self.write_checkpoints()

    def apply_retention(self, now_ms: int | None = None, *, max_offset: int | None = None,
                        covered: int | None = None) -> int:
        """Delete the oldest closed segments retention allows; returns the bytes freed.

        A segment goes when its newest timestamp is older than ``retention_ms``, or
        while the partition is larger than ``retention_bytes``, oldest first; the
        active segment always stays. With ``max_offset`` (the HW) only segments
        wholly below it may go. With ``covered`` (what the cloud acknowledged)
        deleted offsets at or above it are counted in ``dropped``.
        """
        self._check_writable()
        now = wall_clock_ms() if now_ms is None else now_ms
        count = self._segs.expired_prefix(self._config, now, max_offset)
        before = self._segs.size
        if count:
            self._drop_prefix(count, now, covered, "retention")
        self._segs.close_retired(now, self._flush.busy_fds())
        return before - self._segs.size

    def evictable(self, key: tuple[str, int], max_offset: int, sent: int | None
                  ) -> list[Candidate]:
        """The closed segments wholly below ``max_offset`` (the HW), oldest first, as
        budget candidates of partition ``key``; ``sent`` marks those wholly below it
        as already in the cloud."""
        out = []
        for seg in list(self._segs)[:-1]:
            if seg.next_offset > max_offset:
                break
            out.append(Candidate(key, seg.base_offset, seg.next_offset, seg.size,
                                 seg.known_max_timestamp(),
                                 sent is not None and seg.next_offset <= sent))
        return out

    def evict_oldest(self, count: int, *, covered: int | None) -> Evicted:
        """Delete the ``count`` oldest closed segments for the disk budget (blocks: one
        directory fsync). Offsets at or above ``covered`` (what the cloud
        acknowledged; None: all of them) count as dropped."""
        self._check_writable()
        count = min(count, len(self._segs) - 1)
        if count <= 0:
            return Evicted(0, 0, 0, 0)
        before = self._segs.size
        lost_records, lost_bytes = self._drop_prefix(count, wall_clock_ms(),
                                                     covered or 0, "the disk budget")
        return Evicted(count, before - self._segs.size, lost_records, lost_bytes)

    def _drop_prefix(self, count: int, now: int, covered: int | None, why: str
                     ) -> tuple[int, int]:
        """Delete the first ``count`` segments; the records and bytes at or above
        ``covered`` among them, also added to ``dropped``."""
        lost = (0, 0) if covered is None else self._beyond(count, covered)
        self._reading = []  # a dropped segment's descriptor retires (grace period)
        try:
            gone = self._segs.drop(0, count, now)
            self._segs.lock.fsync()
        except OSError as exc:
            raise StorageError(f"{why} failed: {exc}", errno=exc.errno) from exc
        first = self._segs.first
        self._log_start = max(self._log_start, first.base_offset)
        self._hw = max(self._hw, self._log_start)
        self._flush.forget(gone)
        self._flush.log_start_moved(self._log_start, first)
        self._producers.evict_below(self._log_start)
        if lost[0]:
            try:
                self.dropped.add(lost[0], lost[1], self._segs.lock.fd)
            except OSError as exc:
                log.warning("cannot save the drop counters of %s: %s", self._dir, exc)
        return lost

    def _beyond(self, count: int, covered: int) -> tuple[int, int]:
        """Records and bytes at or above ``covered`` in the first ``count`` segments."""
        records = size = 0
        for seg in list(self._segs)[:count]:
            if seg.next_offset <= covered:
                continue
            start = max(seg.base_offset, self._log_start)
            if covered <= start:
                records, size = records + seg.next_offset - start, size + seg.size
            else:
                position, _ = seg.locate(covered)
                records += seg.next_offset - covered
                size += seg.size - position
        return records, size

    # -- checkpoints, lifetime ----------------------------------------------------------

    def write_checkpoints(self) -> None:
        """Persist recovery point, HW, log start and producer state (blocks: 2 fsyncs).

        A checkpoint equal to the last one written is not written again: an idle
        partition costs no fsync (and no SD card wear) and keeps its files closed.
        """
        self._check_writable()
        rec_offset, rec_segment, rec_position = self._flush.recovery
        ckpt = Checkpoint(
            recovery_offset=rec_offset, recovery_segment=rec_segment,
            recovery_position=rec_position, high_watermark=self._hw,
            log_start_offset=self._log_start, snapshot_offset=self._leo,
            segments=self._segs.metas(), producers=self._producers.to_bytes(),
        )
        data = ckpt.encode()
        if data == self._checkpoint_written:
            return
        try:
            write_atomic(self._dir, self._segs.lock.fd, CHECKPOINT_NAME, data)
        except OSError as exc:
            if exc.errno in _FULL_ERRNOS:
                # The old checkpoint is whole, and a checkpoint only shortens recovery.
                with suppress(OSError):
                    os.unlink(self._dir / (CHECKPOINT_NAME + TMP_SUFFIX))
                raise DiskFull(f"disk full writing the checkpoint of {self._dir}",
                               path=str(self._dir)) from exc
            self._health.fail(f"checkpoint failed: {exc}")
            raise StorageError(f"checkpoint failed: {exc}", errno=exc.errno) from exc
        self._checkpoint_written = data

    def close(self) -> None:
        """Flush, write checkpoints and close every descriptor (a failed log just closes)."""
        if self._closed:
            return
        if self._flush.outstanding:
            raise StorageError("close() while a flush is in progress")
        try:
            if self._health.error is None:
                self.flush()
                self._segs.active.write_index(sync=True)
                with suppress(DiskFull):  # the data is flushed; recovery scans a longer tail
                    self.write_checkpoints()
        finally:
            self._closed = True
            self._segs.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(f"{self._dir} is closed", path=str(self._dir))

    def _check_writable(self) -> None:
        self._check_open()
        self._health.check()

"""Opening a partition directory after a clean stop or a crash.

Everything before the checkpoint's recovery point was fsynced and is trusted:
those segments are only listed and stat'ed. From the recovery point on, every
batch is verified by length, CRC and offset continuity (``scan.py``); the file
is cut at the first bad byte and segments that start beyond the cut are
deleted. The index tail and the producer state are rebuilt from the scanned
batches, so start-up costs O(segments) plus the unflushed tail.

Every open ends by writing a checkpoint, so a partition lacks one only when the
file was lost or damaged. Then the last segment is verified whole and earlier
ones get a structural check of their tail (see ``plan_without_checkpoint``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

from edge.protocol.batch import BatchHeader
from edge.protocol.errors import StorageError
from edge.storage.checkpoint import Checkpoint, read_checkpoint
from edge.storage.config import LogConfig
from edge.storage.fileio import TMP_SUFFIX
from edge.storage.producer_state import ProducerStateTable
from edge.storage.scan import scan
from edge.storage.segment import (
    INDEX_SUFFIX,
    LOG_SUFFIX,
    NO_TIMESTAMP,
    Segment,
    log_name,
    parse_log_name,
)

log = logging.getLogger(__name__)


@dataclass
class Recovered:
    """The in-memory state of a partition rebuilt from its directory."""

    segments: list[Segment]
    log_start_offset: int
    high_watermark: int
    producers: ProducerStateTable
    scanned_bytes: int = 0
    dropped_bytes: int = 0


class _Recovery:
    """One recovery run; holds what the scan learns while it walks the tail."""

    def __init__(self, directory: Path, config: LogConfig, ckpt: Checkpoint | None) -> None:
        self.directory = directory
        self.interval = config.index_interval_bytes
        self.ckpt = ckpt
        self.producers = ProducerStateTable()
        self.snapshot_offset = -1
        if ckpt is not None and ckpt.producers:
            try:
                self.producers = ProducerStateTable.from_bytes(ckpt.producers)
                self.snapshot_offset = ckpt.snapshot_offset
            except ValueError as exc:
                log.warning("%s: ignoring producer snapshot: %s", directory, exc)
        self.scanned = 0
        self.dropped = 0

    def segments(self) -> list[Segment]:
        bases = list_segments(self.directory)
        segs = [
            Segment(self.directory, b, size=os.stat(self.directory / log_name(b)).st_size,
                    interval=self.interval)
            for b in bases
        ]
        for seg, nxt in pairwise(segs):
            seg.next_offset = nxt.base_offset
        metas = {m.base_offset: m for m in self.ckpt.segments} if self.ckpt else {}
        for seg in segs:
            meta = metas.get(seg.base_offset)
            if meta is not None:
                seg.max_timestamp, seg.first_write_ms = meta.max_timestamp, meta.first_write_ms
        return segs

    def plan(self, segs: list[Segment]) -> tuple[int, int]:
        """``(segment index, position)`` where verification starts."""
        ck = self.ckpt
        if ck is None:
            return self.plan_without_checkpoint(segs), 0
        if ck.recovery_segment < segs[0].base_offset:
            return 0, 0  # the recovery point's segment is gone: verify what is left
        i = max(j for j, s in enumerate(segs) if s.base_offset <= ck.recovery_segment)
        seg = segs[i]
        if seg.base_offset != ck.recovery_segment or seg.size < ck.recovery_position:
            log.warning(
                "%s: recovery point %d:%d not on disk, verifying %s whole", self.directory,
                ck.recovery_segment, ck.recovery_position, seg.log_path.name,
            )
            return i, 0
        return i, ck.recovery_position

    def plan_without_checkpoint(self, segs: list[Segment]) -> int:
        """Index of the first segment to verify when nothing says what was fsynced.

        The last segment is verified whole. Earlier ones get a structural check
        (index loaded, headers walked from its last entry to the end of the file,
        offsets continuing into the next segment), which finds a torn tail at the
        cost of a pread or two per segment; the first that fails is verified whole.
        """
        log.warning("%s: no usable checkpoint, checking every segment's tail", self.directory)
        for i, seg in enumerate(segs[:-1]):
            try:
                if seg.load_index() == seg.next_offset:
                    continue
            except StorageError:
                pass
            log.warning("%s: tail does not add up, verifying from here", seg.log_path)
            return i
        return len(segs) - 1

    def start(self, seg: Segment, position: int) -> tuple[int, int]:
        """Load ``seg``'s index up to ``position``; ``(position, offset)`` to verify from."""
        if position:
            try:
                offset = seg.restore_index(position)
                ck = self.ckpt
                if ck is None or offset == ck.recovery_offset:
                    return position, offset
                log.warning("%s: recovery point offset disagrees with the log", seg.log_path)
            except StorageError as exc:
                log.warning("%s: %s; verifying the whole segment", seg.log_path, exc)
        return 0, seg.restore_index(0)

    def verify(self, segs: list[Segment], first: int, position: int) -> int:
        """Verify ``segs[first:]`` from ``position``; index of the last segment to keep."""
        for i in range(first, len(segs)):
            seg = segs[i]
            if i > first and seg.base_offset != segs[i - 1].next_offset:
                log.warning("%s: does not continue the log, deleting it", seg.log_path)
                return i - 1
            start, offset = self.start(seg, position if i == first else 0)
            if not start:
                seg.max_timestamp = NO_TIMESTAMP  # the scan sees every batch
            out = scan(seg.fd, start, seg.size, offset, self._visitor(seg))
            self.scanned += out.end - start
            seg.next_offset = out.next_offset
            if out.problem is not None:
                log.warning("%s: %s; truncating to %d bytes", seg.log_path, out.problem, out.end)
                self.dropped += seg.size - out.end
                seg.cut(out.end)
                return i
        return len(segs) - 1

    def _visitor(self, seg: Segment) -> _Visit:
        return _Visit(seg, self.producers, self.snapshot_offset)


class _Visit:
    """Per-batch bookkeeping while a segment is verified."""

    __slots__ = ("producers", "seg", "snapshot_offset")

    def __init__(self, seg: Segment, producers: ProducerStateTable, snapshot_offset: int) -> None:
        self.seg, self.producers, self.snapshot_offset = seg, producers, snapshot_offset

    def __call__(self, pos: int, h: BatchHeader) -> None:
        seg = self.seg
        seg.index.maybe_add(h.base_offset - seg.base_offset, pos)
        if seg.max_timestamp is not None and h.max_timestamp > seg.max_timestamp:
            seg.max_timestamp = h.max_timestamp
        if h.base_offset >= self.snapshot_offset:
            self.producers.record(
                h.producer_id, h.producer_epoch, h.base_sequence, h.record_count,
                base_offset=h.base_offset, last_offset=h.last_offset,
            )


def list_segments(directory: Path) -> list[int]:
    """Sorted base offsets of the segment files in ``directory``."""
    return sorted(b for b in map(parse_log_name, os.listdir(directory)) if b is not None)


def remove_strays(directory: Path) -> bool:
    """Delete temporary files and indexes without a segment; True if any went."""
    names = set(os.listdir(directory))
    stray = [
        n for n in names
        if n.endswith(TMP_SUFFIX)
        or (n.endswith(INDEX_SUFFIX) and n.removesuffix(INDEX_SUFFIX) + LOG_SUFFIX not in names)
    ]
    for n in stray:
        os.unlink(directory / n)
    return bool(stray)


def recover(directory: Path, config: LogConfig, dir_fd: int, now_ms: int) -> Recovered:
    """Rebuild a partition's state from its directory (see the module docstring)."""
    dir_dirty = remove_strays(directory)
    ckpt = read_checkpoint(directory)
    run = _Recovery(directory, config, ckpt)
    segs = run.segments()
    if not segs:
        start = ckpt.log_start_offset if ckpt is not None else 0
        segs = [Segment.create(directory, start, config.index_interval_bytes)]
        os.fsync(dir_fd)
        return Recovered(segs, start, start, ProducerStateTable())
    first, position = run.plan(segs)
    keep = run.verify(segs, first, position)
    for seg in segs[keep + 1 :]:
        run.dropped += seg.size
        seg.close()
        seg.remove_files()
        dir_dirty = True
    segs = segs[: keep + 1]
    _finish_segments(segs[first:], now_ms)
    if dir_dirty:
        os.fsync(dir_fd)
    return _state(run, segs, ckpt)


def _finish_segments(scanned: list[Segment], now_ms: int) -> None:
    """Persist rebuilt indexes and make the verified tail durable."""
    active = scanned[-1]
    for seg in scanned:
        seg.write_index(sync=True)
        os.fsync(seg.fd)  # the tail may have lived only in the page cache of a dead process
        if seg is not active:
            seg.close_index()
    active.known_max_timestamp()  # appends keep it up to date from here on
    if active.size and active.first_write_ms is None:
        active.first_write_ms = now_ms  # unknown age: count it from now, never roll early


def _state(run: _Recovery, segs: list[Segment], ckpt: Checkpoint | None) -> Recovered:
    leo = segs[-1].next_offset
    start = segs[0].base_offset
    if ckpt is not None:
        start = min(max(start, ckpt.log_start_offset), leo)
    hw = min(max(ckpt.high_watermark, start), leo) if ckpt is not None else start
    run.producers.truncate(leo)
    run.producers.evict_below(start)
    if run.dropped:
        log.warning("%s: recovery dropped %d bytes", run.directory, run.dropped)
    return Recovered(segs, start, hw, run.producers, run.scanned, run.dropped)

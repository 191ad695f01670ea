"""Flush tickets (group commit), failed fsyncs and failed writes."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path
from typing import Any

import pytest
from storage_helpers import SMALL, batch, read_everything

from edge.protocol.errors import DiskFull, StorageError
from edge.storage import LogConfig, PartitionLog
from edge.storage import log as storage_log
from edge.storage.checkpoint import read_checkpoint
from edge.storage.log import RETIRED_FD_GRACE_MS
from edge.storage.segment import Segment


def index_open(seg: Segment) -> bool:
    return seg.index_fd is not None


def eio(*_: Any) -> None:
    raise OSError(errno.EIO, "Input/output error")


def test_flush_advances_flushed_offset(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path / "p", SMALL)
    assert log.prepare_flush() is None  # nothing written yet
    log.append(batch(3), leader_epoch=0)
    assert (log.flushed_offset, log.log_end_offset) == (0, 3)
    assert log.flush() == 3
    assert log.flushed_offset == 3
    assert log.prepare_flush() is None
    log.close()


def test_ticket_covers_only_what_was_appended_before_it(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path / "p", SMALL)
    log.append(batch(3), leader_epoch=0)
    ticket = log.prepare_flush()
    assert ticket is not None
    log.append(batch(3), leader_epoch=0)  # the loop keeps appending while the disk syncs
    PartitionLog.run_flush(ticket)
    assert log.complete_flush(ticket) == 3
    assert log.flush() == 6
    log.close()


async def test_group_commit_runs_fsync_in_a_worker_thread(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path / "p", SMALL)
    for _ in range(30):  # several rolls while nothing is flushed
        log.append(batch(3), leader_epoch=0)
    assert log.segment_count > 2
    ticket = log.prepare_flush()
    assert ticket is not None
    run = asyncio.create_task(asyncio.to_thread(PartitionLog.run_flush, ticket))
    log.append(batch(3), leader_epoch=0)
    await run
    assert log.complete_flush(ticket) == 90
    assert log.flushed_offset == 90 < log.log_end_offset
    log.close()


def test_rolled_segments_stay_open_until_a_covering_flush(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path / "p", SMALL)
    segs = log._segs
    while log.segment_count < 3:
        log.append(batch(3), leader_epoch=0)
    rolled = list(segs)[:-1]
    assert all(s.index_fd is not None for s in rolled)
    ticket = log.prepare_flush()
    assert ticket is not None
    for seg in rolled:
        assert seg.fd in ticket.fds
        assert seg.index_fd in ticket.fds
    assert segs.lock.fd in ticket.fds  # new directory entries need a directory fsync
    second = log.prepare_flush()  # overlapping ticket, as a busy group commit may take
    assert second is not None
    log.run_flush(ticket)
    log.complete_flush(ticket)
    assert all(s.index_fd is not None for s in rolled)  # still held by the second ticket
    log.run_flush(second)
    log.complete_flush(second)
    assert all(s.index_fd is None for s in rolled)
    assert segs.active.index_fd is not None
    log.close()


def test_complete_before_run_is_refused(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path / "p", SMALL)
    log.append(batch(), leader_epoch=0)
    ticket = log.prepare_flush()
    assert ticket is not None
    with pytest.raises(ValueError):
        log.complete_flush(ticket)
    assert log.flushed_offset == 0


def test_close_with_a_flush_in_flight_is_refused(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path / "p", SMALL)
    log.append(batch(), leader_epoch=0)
    ticket = log.prepare_flush()
    assert ticket is not None
    with pytest.raises(StorageError):
        log.close()
    ticket.run()
    log.complete_flush(ticket)
    log.close()


def test_truncation_clamps_a_pending_ticket(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path / "p", SMALL)
    for _ in range(4):
        log.append(batch(3), leader_epoch=0)
    ticket = log.prepare_flush()
    assert ticket is not None
    assert ticket.offset == 12
    log.truncate_to(6)
    log.append(batch(3), leader_epoch=1)  # new data at offsets the ticket did not sync
    ticket.run()
    assert log.complete_flush(ticket) == 6
    log.close()


def test_failed_fsync_fails_the_partition_for_good(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = PartitionLog.open(tmp_path / "p", SMALL)
    log.append(batch(3), leader_epoch=0)
    log.flush()
    log.write_checkpoints()
    log.append(batch(3), leader_epoch=0)
    with monkeypatch.context() as m:
        m.setattr(os, "fsync", eio)
        m.setattr(os, "fdatasync", eio)
        with pytest.raises(StorageError):
            log.flush()
    assert log.failed
    assert log.flushed_offset == 3  # never reported as flushed
    # fsync works again, but Linux may have dropped the dirty pages: still refused
    with pytest.raises(StorageError):
        log.append(batch(3), leader_epoch=0)
    with pytest.raises(StorageError):
        log.prepare_flush()
    with pytest.raises(StorageError):
        log.flush()
    with pytest.raises(StorageError):
        log.write_checkpoints()
    assert len(read_everything(log)) == 2  # reads still work
    log.close()
    ckpt = read_checkpoint(tmp_path / "p")
    assert ckpt is not None
    assert ckpt.recovery_offset == 3


async def test_failed_fsync_in_a_worker_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = PartitionLog.open(tmp_path / "p", SMALL)
    log.append(batch(3), leader_epoch=0)
    ticket = log.prepare_flush()
    assert ticket is not None
    monkeypatch.setattr(os, "fsync", eio)
    monkeypatch.setattr(os, "fdatasync", eio)
    with pytest.raises(OSError):
        await asyncio.to_thread(PartitionLog.run_flush, ticket)
    # the flag is set by the worker already: appends fail even before complete_flush
    with pytest.raises(StorageError):
        log.append(batch(3), leader_epoch=0)
    with pytest.raises(StorageError):
        log.complete_flush(ticket)
    assert log.flushed_offset == 0
    monkeypatch.undo()
    log.close()


def test_full_disk_is_retriable_and_leaves_no_partial_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = PartitionLog.open(tmp_path / "p", LogConfig(retention_ms=None))
    log.append(batch(3), leader_epoch=0)
    size = log.size_bytes
    real = os.writev

    def half_then_full(fd: int, bufs: list[Any]) -> int:
        if not getattr(half_then_full, "done", False):
            half_then_full.done = True  # type: ignore[attr-defined]
            return real(fd, [bytes(memoryview(bufs[0])[:50])])
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(os, "writev", half_then_full)
        with pytest.raises(DiskFull) as exc:
            log.append(batch(3), leader_epoch=0)
    assert exc.value.retriable
    assert not log.failed
    assert (tmp_path / "p" / "00000000000000000000.log").stat().st_size == size
    assert log.disk_full
    # Refused without touching the disk for a moment: a pipelined later batch
    # cannot land before the refused one is retried.
    with pytest.raises(DiskFull):
        log.append(batch(3), leader_epoch=0)
    monkeypatch.setattr(storage_log, "DISK_FULL_RETRY_S", 0.0)
    assert log.append(batch(3), leader_epoch=0).base_offset == 3
    assert not log.disk_full
    assert [h.base_offset for h in read_everything(log)] == [0, 3]
    log.close()


def test_other_write_errors_fail_the_partition(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = PartitionLog.open(tmp_path / "p", SMALL)
    with monkeypatch.context() as m:
        m.setattr(os, "writev", eio)
        with pytest.raises(StorageError):
            log.append(batch(3), leader_epoch=0)
    assert log.failed
    assert log.log_end_offset == 0
    with pytest.raises(StorageError):
        log.append(batch(3), leader_epoch=0)
    log.close()


def test_an_older_ticket_completing_late_never_moves_flushed_back(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path / "p", SMALL)
    log.append(batch(3), leader_epoch=0)
    older = log.prepare_flush()
    log.append(batch(3), leader_epoch=0)
    newer = log.prepare_flush()
    assert older is not None
    assert newer is not None
    newer.run()
    older.run()
    assert log.complete_flush(newer) == 6
    assert log.complete_flush(older) == 6
    assert log.flushed_offset == 6
    log.close()


def test_descriptors_of_deleted_segments_outlive_a_running_fetch(tmp_path: Path) -> None:
    cfg = LogConfig(segment_bytes=600, retention_ms=None, retention_bytes=1)
    log = PartitionLog.open(tmp_path / "p", cfg)
    for _ in range(10):
        log.append(batch(2), leader_epoch=0)
    piece = log.read(0, 1 << 20)
    assert piece is not None
    expected = log.read_bytes(0, 1 << 20)
    log.apply_retention(now_ms=1_000_000)
    assert log.log_start_offset > 0
    assert os.pread(piece.fd, piece.length, piece.position) == expected  # still readable
    log.apply_retention(now_ms=1_000_000 + RETIRED_FD_GRACE_MS)
    with pytest.raises(OSError):
        os.fstat(piece.fd)
    log.close()


def test_a_segment_rolled_during_a_flush_waits_for_the_next_one(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path / "p", SMALL)
    log.append(batch(3), leader_epoch=0)
    pending = log.prepare_flush()
    assert pending is not None
    old = log._segs.active
    while log.segment_count == 1:  # roll while the ticket waits for its thread
        log.append(batch(3), leader_epoch=0)
    assert old.fd in pending.fds  # still a valid descriptor for the running fsync
    pending.run()
    log.complete_flush(pending)
    assert log.flushed_offset == 3
    assert index_open(old)  # its tail is not synced yet: kept for the next ticket
    covering = log.prepare_flush()
    assert covering is not None
    assert old.fd in covering.fds
    assert old.index_fd in covering.fds
    covering.run()
    assert log.complete_flush(covering) == log.log_end_offset
    assert not index_open(old)
    log.close()

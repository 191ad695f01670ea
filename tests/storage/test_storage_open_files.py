"""Open files of a partition follow its use: reads of an old log keep a few closed
segments open, an idle log closes everything that reopens on use, and nothing a
flush still has to sync is ever closed.

Descriptors are counted from ``/proc/self/fd``: those that point into the
partition directory (or are the directory)."""

from __future__ import annotations

import os
from pathlib import Path

from storage_helpers import SMALL, batch, read_everything

from edge.storage import PartitionLog
from edge.storage.checkpoint import CHECKPOINT_NAME
from edge.storage.log import READ_SEGMENTS_OPEN


def open_in(directory: Path) -> list[str]:
    """Names (relative to ``directory``, "." for itself) this process has open there."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = Path(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # the listing's own descriptor, closed meanwhile
            continue
        if target == directory:
            out.append(".")
        elif target.parent == directory:
            out.append(target.name)
    return sorted(out)


def filled(directory: Path, batches: int = 200, *, exclusive: bool = False) -> PartitionLog:
    log = PartitionLog.open(directory, SMALL, exclusive=exclusive)
    for i in range(batches):
        log.append(batch(tag=i), leader_epoch=0)
    log.flush()
    return log


def test_a_reader_walking_an_old_log_keeps_a_few_closed_segments_open(tmp_path: Path) -> None:
    log = filled(tmp_path / "p")
    assert log.segment_count >= 20
    log.release_idle()
    log.release_idle()
    offset = log.log_start_offset
    most = 0
    while offset < log.log_end_offset:
        piece = log.read(offset, 512)
        assert piece is not None
        most = max(most, len([n for n in open_in(tmp_path / "p") if n.endswith(".log")]))
        offset = piece.next_offset
    # The last segments read, and the active one.
    assert most <= READ_SEGMENTS_OPEN + 1
    assert log.segment_count > 2 * (READ_SEGMENTS_OPEN + 1)  # so the bound is a bound
    log.close()


def test_an_idle_log_closes_all_its_files_and_reopens_them_on_use(tmp_path: Path) -> None:
    d = tmp_path / "p"
    log = filled(d)
    before = read_everything(log)
    assert "." in open_in(d)
    assert any(n.endswith(".log") for n in open_in(d))
    log.release_idle()  # used since the last round: only closed segments go
    assert any(n.endswith(".log") for n in open_in(d))
    assert log.release_idle() > 0
    assert open_in(d) == []
    # Everything reopens on use: reads, appends, flushes, a roll and a restart.
    assert read_everything(log) == before
    for i in range(40):
        log.append(batch(tag=1000 + i), leader_epoch=0)
    assert log.flush() == log.log_end_offset
    after = read_everything(log)
    assert after[: len(before)] == before
    assert len(after) == len(before) + 40
    log.close()
    again = PartitionLog.open(d, SMALL)
    assert read_everything(again) == after
    again.close()


def test_an_exclusive_log_keeps_its_locked_directory_open(tmp_path: Path) -> None:
    d = tmp_path / "p"
    log = filled(d, exclusive=True)
    log.release_idle()
    log.release_idle()
    assert open_in(d) == ["."]  # the flock lives on this descriptor
    log.close()


def test_unflushed_data_keeps_its_files_open(tmp_path: Path) -> None:
    d = tmp_path / "p"
    log = filled(d, 20)
    log.release_idle()
    log.release_idle()
    assert open_in(d) == []
    first = log.segment_count
    for i in range(60):  # rolls several segments, none flushed
        log.append(batch(tag=i), leader_epoch=0)
    assert log.segment_count > first + 1
    open_before = open_in(d)
    log.release_idle()
    log.release_idle()
    # Rolled but unflushed segments and the active one stay open: the next flush
    # must fsync them.
    rolled = sorted(n for n in open_before if n.endswith(".log"))
    assert rolled
    assert sorted(n for n in open_in(d) if n.endswith(".log")) == rolled
    ticket = log.prepare_flush()
    assert ticket is not None
    log.release_idle()
    log.release_idle()
    for fd in ticket.fds:  # a flush in flight: nothing it captured was closed
        os.fstat(fd)
    assert sorted(n for n in open_in(d) if n.endswith(".log")) == rolled
    log.run_flush(ticket)
    assert log.complete_flush(ticket) == log.log_end_offset
    log.release_idle()
    assert open_in(d) == []
    log.close()


def test_a_slice_handed_out_survives_the_next_read_elsewhere(tmp_path: Path) -> None:
    """What a sender does with a slice (SPU: ``os.dup`` at once, then sendfile)
    stays valid when later reads of another segment close the first one."""
    d = tmp_path / "p"
    log = filled(d)
    log.release_idle()
    log.release_idle()
    piece = log.read(0, 512)
    assert piece is not None
    held = os.dup(piece.fd)
    try:
        step = log.log_end_offset // (READ_SEGMENTS_OPEN + 2)
        for i in range(1, READ_SEGMENTS_OPEN + 2):  # other segments: the first one closes
            log.read(i * step, 512)
        assert open_in(d).count("00000000000000000000.log") == 1  # ours alone
        data = os.pread(held, piece.length, piece.position)
        assert data == log.read_bytes(0, 512)
    finally:
        os.close(held)
    log.close()


def test_an_unchanged_checkpoint_is_not_written_again(tmp_path: Path) -> None:
    """The SPU checkpoints every partition each few seconds: an idle one must cost
    no fsync and keep its directory closed."""
    d = tmp_path / "p"
    log = filled(d, 5)
    log.write_checkpoints()
    written = (d / CHECKPOINT_NAME).stat().st_ino  # each write renames a new file in
    log.release_idle()
    log.release_idle()
    log.write_checkpoints()
    assert (d / CHECKPOINT_NAME).stat().st_ino == written
    assert open_in(d) == []
    log.append(batch(tag=99), leader_epoch=0)
    log.flush()
    log.write_checkpoints()
    assert (d / CHECKPOINT_NAME).stat().st_ino != written
    log.close()
    again = PartitionLog.open(d, SMALL)
    assert again.log_end_offset == log.log_end_offset
    again.close()

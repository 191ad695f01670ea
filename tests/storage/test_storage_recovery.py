"""Recovery: torn tails, flipped bits, what is (and is not) scanned, lost checkpoints."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from storage_helpers import SMALL, batch, copy_dir, crash, headers, read_everything

from edge.protocol import batch as batch_codec
from edge.storage import LogConfig, PartitionLog
from edge.storage.checkpoint import CHECKPOINT_NAME, read_checkpoint
from edge.storage.segment import log_name

CFG = LogConfig(segment_bytes=4096, index_interval_bytes=256, retention_ms=None)


def build(
    path: Path, *, flushed: int, unflushed: int, cfg: LogConfig = CFG
) -> tuple[list[int], list[int]]:
    """A crashed log: ``flushed`` batches flushed and checkpointed, then ``unflushed`` more.

    Returns the base offsets of all batches and their sizes (the last ones are in the
    active segment, written after the recovery point).
    """
    log = PartitionLog.open(path, cfg)
    bases, sizes = [], []
    for i in range(flushed + unflushed):
        data = batch(1 + i % 4, tag=i, value_size=20 + i % 50)
        bases.append(log.append(data, leader_epoch=1).base_offset)
        sizes.append(len(data))
        if i == flushed - 1:
            log.flush()
            log.write_checkpoints()
    crash(log)
    return bases, sizes


def active_segment(path: Path) -> Path:
    return max(path.glob("*.log"))


def count_verify(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real: Callable[..., Any] = batch_codec.verify

    def counting(buf: Any, pos: int = 0) -> batch_codec.BatchHeader:
        calls.append(pos)
        header: batch_codec.BatchHeader = real(buf, pos)
        return header

    monkeypatch.setattr(batch_codec, "verify", counting)
    return calls


def test_torn_tail_at_every_byte_of_the_last_two_batches(tmp_path: Path) -> None:
    bases, sizes = build(tmp_path / "orig", flushed=12, unflushed=2)
    seg = active_segment(tmp_path / "orig")
    full = seg.stat().st_size
    last_two = sizes[-2] + sizes[-1]
    assert full >= last_two  # both unflushed batches sit in the active segment
    for cut in range(full - last_two, full + 1):
        work = copy_dir(tmp_path / "orig", tmp_path / f"cut{cut}")
        os.truncate(active_segment(work), cut)
        log = PartitionLog.open(work, CFG)
        expected = len(bases) - 2 + (cut >= full - sizes[-1]) + (cut == full)
        whole = bases[expected] if expected < len(bases) else bases[-1] + 1 + (len(bases) - 1) % 4
        assert log.log_end_offset == whole, cut
        assert active_segment(work).stat().st_size == full - last_two + sum(
            sizes[len(bases) - 2 : expected]
        )
        got = read_everything(log)
        assert [h.base_offset for h in got] == bases[:expected]
        r = log.append(batch(2, tag=1000), leader_epoch=2)
        assert r.base_offset == whole
        log.close()
        reopened = PartitionLog.open(work, CFG)
        assert [h.base_offset for h in read_everything(reopened)][-1] == whole
        reopened.close()


def test_flipped_bit_after_the_recovery_point_truncates_there(tmp_path: Path) -> None:
    bases, sizes = build(tmp_path / "p", flushed=10, unflushed=5)
    seg = active_segment(tmp_path / "p")
    data = bytearray(seg.read_bytes())
    victim = len(data) - sum(sizes[-3:])  # the third-last batch, after the recovery point
    data[victim + 70] ^= 0x10
    seg.write_bytes(bytes(data))
    log = PartitionLog.open(tmp_path / "p", CFG)
    assert log.log_end_offset == bases[-3]
    assert seg.stat().st_size == victim
    assert [h.base_offset for h in read_everything(log)] == bases[:-3]
    log.close()


def test_recovery_verifies_only_what_follows_the_recovery_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, _ = build(tmp_path / "p", flushed=40, unflushed=3)
    calls = count_verify(monkeypatch)
    PartitionLog.open(tmp_path / "p", CFG).close()
    assert len(calls) == 3
    calls.clear()
    PartitionLog.open(tmp_path / "p", CFG).close()  # clean close: nothing to verify
    assert calls == []


def test_checkpointed_batches_are_trusted_a_full_scan_is_not(tmp_path: Path) -> None:
    """A byte rotted in a checkpointed batch goes unnoticed by open(): it never read it."""
    bases, _ = build(tmp_path / "p", flushed=12, unflushed=0)
    seg = active_segment(tmp_path / "p")
    data = bytearray(seg.read_bytes())
    data[80] ^= 0xFF  # inside the first batch of the active segment
    seg.write_bytes(bytes(data))
    log = PartitionLog.open(tmp_path / "p", CFG)
    assert log.log_end_offset == bases[-1] + 1 + 11 % 4  # nothing noticed, nothing cut
    log.close()
    (tmp_path / "p" / CHECKPOINT_NAME).unlink()  # without a checkpoint, the segment is verified
    log = PartitionLog.open(tmp_path / "p", CFG)
    assert log.log_end_offset == int(seg.stem)
    assert seg.stat().st_size == 0
    log.close()


def test_missing_checkpoint_scans_the_last_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bases, _ = build(tmp_path / "p", flushed=30, unflushed=4)
    (tmp_path / "p" / CHECKPOINT_NAME).unlink()
    last = active_segment(tmp_path / "p")
    in_last = sum(1 for b in bases if b >= int(last.stem))
    calls = count_verify(monkeypatch)
    log = PartitionLog.open(tmp_path / "p", CFG)
    assert len(calls) == in_last
    assert [h.base_offset for h in read_everything(log)] == bases
    assert log.high_watermark == log.log_start_offset  # unknown HW starts at the bottom
    log.close()


def test_corrupt_checkpoint_is_ignored_with_a_fallback(tmp_path: Path) -> None:
    bases, _ = build(tmp_path / "p", flushed=30, unflushed=4)
    ckpt = tmp_path / "p" / CHECKPOINT_NAME
    raw = bytearray(ckpt.read_bytes())
    raw[-1] ^= 1
    ckpt.write_bytes(bytes(raw))
    assert read_checkpoint(tmp_path / "p") is None
    log = PartitionLog.open(tmp_path / "p", CFG)
    assert [h.base_offset for h in read_everything(log)] == bases
    log.close()


def test_without_checkpoint_a_torn_earlier_segment_is_found(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path / "p", CFG)
    while log.segment_count < 4:
        log.append(batch(2), leader_epoch=0)
    crash(log)
    (tmp_path / "p" / CHECKPOINT_NAME).unlink()
    segs = sorted((tmp_path / "p").glob("*.log"))
    os.truncate(segs[1], segs[1].stat().st_size - 5)  # rolled, never fsynced, torn
    log = PartitionLog.open(tmp_path / "p", CFG)
    assert [p.exists() for p in segs] == [True, True, False, False]
    assert int(segs[1].stem) < log.log_end_offset < int(segs[2].stem)
    assert read_everything(log)[-1].next_offset == log.log_end_offset
    log.close()


def test_segments_beyond_the_cut_are_deleted(tmp_path: Path) -> None:
    cfg = LogConfig(segment_bytes=600, index_interval_bytes=128, retention_ms=None)
    bases, _ = build(tmp_path / "p", flushed=5, unflushed=20, cfg=cfg)
    segs = sorted((tmp_path / "p").glob("*.log"))
    ckpt = read_checkpoint(tmp_path / "p")
    assert ckpt is not None
    later = [s for s in segs if int(s.stem) > ckpt.recovery_segment]
    assert len(later) >= 3
    victim = later[0]
    os.truncate(victim, victim.stat().st_size - 1)
    log = PartitionLog.open(tmp_path / "p", cfg)
    assert all(not s.exists() for s in later[1:])
    assert not any(s.with_suffix(".index").exists() for s in later[1:])
    assert active_segment(tmp_path / "p") == victim
    assert log.log_end_offset < int(later[1].stem)
    assert [h.base_offset for h in read_everything(log)] == [
        b for b in bases if b < log.log_end_offset
    ]
    log.close()


def test_missing_or_short_index_of_an_old_segment_is_rebuilt(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path / "p", SMALL)
    for i in range(60):
        log.append(batch(3, tag=i), leader_epoch=0)
    log.close()
    first = tmp_path / "p" / log_name(0)
    index = first.with_suffix(".index")
    original = index.read_bytes()
    assert len(original) >= 16
    shifted = b"".join(
        (int.from_bytes(original[i : i + 8], "big") + 1).to_bytes(8, "big")
        for i in range(0, len(original), 8)
    )  # plausible (increasing, in range) but every position is off by one
    for damage in ("missing", "short", "garbage", "shifted"):
        if damage == "missing":
            index.unlink()
        elif damage == "short":
            index.write_bytes(original[:-8])
        elif damage == "garbage":
            index.write_bytes(original[:8] + b"\x00" * (len(original) - 8))
        else:
            index.write_bytes(shifted)
        log = PartitionLog.open(tmp_path / "p", SMALL)
        everything = read_everything(log)
        assert [h.base_offset for h in everything] == list(range(0, 180, 3))
        assert index.read_bytes() == original, damage
        log.close()


def test_index_tail_is_rebuilt_from_the_recovery_point(tmp_path: Path) -> None:
    cfg = LogConfig(segment_bytes=1 << 20, index_interval_bytes=128, retention_ms=None)
    _bases, _ = build(tmp_path / "p", flushed=10, unflushed=10, cfg=cfg)
    index = (tmp_path / "p" / log_name(0)).with_suffix(".index")
    log = PartitionLog.open(tmp_path / "p", cfg)
    log.close()
    rebuilt = index.read_bytes()
    work = tmp_path / "fresh"
    log = PartitionLog.open(work, cfg)
    for i in range(20):
        log.append(batch(1 + i % 4, tag=i, value_size=20 + i % 50), leader_epoch=1)
    log.close()
    assert rebuilt == (work / log_name(0)).with_suffix(".index").read_bytes()
    assert len(rebuilt) > 8 * 5


def test_high_watermark_is_clamped_to_the_recovered_end(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path / "p", CFG)
    for _ in range(10):
        log.append(batch(2), leader_epoch=0)
    log.flush()
    log.set_high_watermark(20)
    log.write_checkpoints()
    crash(log)
    seg = active_segment(tmp_path / "p")
    os.truncate(seg, seg.stat().st_size - 1)  # the disk lied about the last fsync
    log = PartitionLog.open(tmp_path / "p", CFG)
    assert log.log_end_offset == 18
    assert log.high_watermark == 18
    log.close()


def test_log_start_and_high_watermark_survive_a_restart(tmp_path: Path) -> None:
    cfg = LogConfig(segment_bytes=600, retention_ms=None, retention_bytes=1500)
    log = PartitionLog.open(tmp_path / "p", cfg)
    for _ in range(30):
        log.append(batch(2), leader_epoch=0)
    log.set_high_watermark(50)
    log.apply_retention(now_ms=0)
    start = log.log_start_offset
    assert start > 0
    log.close()
    log = PartitionLog.open(tmp_path / "p", cfg)
    assert (log.log_start_offset, log.high_watermark) == (start, 50)
    assert headers(log.read_bytes(start, 1))[0].base_offset == start
    log.close()


def test_stray_files_are_cleaned_up(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path / "p", CFG)
    log.append(batch(), leader_epoch=0)
    log.close()
    (tmp_path / "p" / "partition.checkpoint.tmp").write_bytes(b"half")
    (tmp_path / "p" / (log_name(999).removesuffix(".log") + ".index")).write_bytes(b"x" * 8)
    PartitionLog.open(tmp_path / "p", CFG).close()
    names = sorted(os.listdir(tmp_path / "p"))
    assert names == [log_name(0).replace(".log", ".index"), log_name(0), CHECKPOINT_NAME]


def test_a_wrong_base_offset_is_caught_though_the_crc_skips_it(tmp_path: Path) -> None:
    """The CRC leaves the base offset out (the leader patches it): continuity checks it."""
    bases, sizes = build(tmp_path / "p", flushed=10, unflushed=3)
    seg = active_segment(tmp_path / "p")
    data = bytearray(seg.read_bytes())
    victim = len(data) - sizes[-1] - sizes[-2]
    data[victim + 7] ^= 0x04  # base offset of the second-last batch
    seg.write_bytes(bytes(data))
    log = PartitionLog.open(tmp_path / "p", CFG)
    assert log.log_end_offset == bases[-2]
    log.close()


def test_the_verified_tail_is_fsynced_before_it_counts_as_flushed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a process crash the tail may live only in the page cache."""
    build(tmp_path / "p", flushed=5, unflushed=3)
    synced: list[int] = []
    real = os.fsync

    def recording(fd: int) -> None:
        synced.append(os.fstat(fd).st_ino)
        real(fd)

    monkeypatch.setattr(os, "fsync", recording)
    log = PartitionLog.open(tmp_path / "p", CFG)
    assert active_segment(tmp_path / "p").stat().st_ino in synced
    assert log.flushed_offset == log.log_end_offset
    log.close()


def test_unflushed_segments_are_verified_when_the_recovery_segment_is_gone(
    tmp_path: Path,
) -> None:
    """Retention may delete the checkpoint's segment before the next checkpoint is written."""
    cfg = LogConfig(segment_bytes=600, retention_ms=None, retention_bytes=1800)
    log = PartitionLog.open(tmp_path / "p", cfg)
    for i in range(3):
        log.append(batch(2, tag=i), leader_epoch=0)
    log.flush()
    log.write_checkpoints()
    for i in range(30):  # unflushed, over many segments
        log.append(batch(2, tag=i), leader_epoch=0)
    log.apply_retention(now_ms=0)
    assert not (tmp_path / "p" / log_name(0)).exists()
    crash(log)
    oldest = min((tmp_path / "p").glob("*.log"))
    data = bytearray(oldest.read_bytes())
    data[-3] ^= 0x01
    oldest.write_bytes(bytes(data))
    log = PartitionLog.open(tmp_path / "p", cfg)
    assert [p.name for p in (tmp_path / "p").glob("*.log")] == [oldest.name]
    assert read_everything(log)[-1].next_offset == log.log_end_offset
    log.close()

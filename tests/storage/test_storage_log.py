"""PartitionLog: appends, reads, index lookups, rolling, retention, truncation."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from storage_helpers import SMALL, batch, crash, headers, read_everything

from edge.protocol.batch import decode_records, split_batches
from edge.protocol.errors import CorruptBatch, OffsetOutOfRange, StorageError
from edge.storage import LogConfig, PartitionLog
from edge.storage.segment import log_name

DAY = 24 * 3600 * 1000


def fill(log: PartitionLog, count: int, *, records: int = 3, ts: int = 1_000) -> list[int]:
    """Append ``count`` batches tagged 0..count-1; returns their base offsets."""
    return [
        log.append(batch(records, tag=i, ts=ts + i), leader_epoch=7).base_offset
        for i in range(count)
    ]


def test_append_assigns_offsets_and_patches_in_place(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path / "p", SMALL)
    first = bytearray(batch(3))
    r1 = log.append(first, leader_epoch=9)
    r2 = log.append(batch(2), leader_epoch=9)  # immutable bytes: written patched, not copied
    assert (r1.base_offset, r1.last_offset, r1.duplicate) == (0, 2, False)
    assert (r2.base_offset, r2.last_offset) == (3, 4)
    assert log.log_end_offset == 5
    h = headers(bytes(first))[0]
    assert (h.base_offset, h.leader_epoch) == (0, 9)
    on_disk = headers(log.read_bytes(0, 1 << 20))
    assert [(x.base_offset, x.leader_epoch) for x in on_disk] == [(0, 9), (3, 9)]
    log.close()


def test_append_refuses_anything_but_one_batch(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path / "p", SMALL)
    with pytest.raises(CorruptBatch):
        log.append(batch(1) + batch(1), leader_epoch=0)
    with pytest.raises(CorruptBatch):
        log.append(b"\x00" * 10, leader_epoch=0)
    assert log.log_end_offset == 0
    log.close()


def test_round_trip_across_segment_rolls(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path / "p", SMALL)
    bases = fill(log, 60)
    assert log.segment_count > 5
    got = read_everything(log)
    assert [h.base_offset for h in got] == bases
    data = b"".join(log.read_bytes(h.base_offset, 1) for h in got)
    tags = [decode_records(data, pos)[0].value[:4] for _, pos in split_batches(data)]
    assert tags == [i.to_bytes(4, "big") for i in range(60)]
    names = sorted(os.listdir(tmp_path / "p"))
    assert log_name(0) in names
    assert all(len(n.split(".")[0]) == 20 for n in names if n.endswith((".log", ".index")))
    assert log.size_bytes == sum(
        os.path.getsize(tmp_path / "p" / n) for n in names if n.endswith(".log")
    )
    log.close()


def test_every_offset_finds_the_batch_that_holds_it(tmp_path: Path) -> None:
    """Sparse index lookups, checked against a brute-force model, small and large batches."""
    log = PartitionLog.open(tmp_path / "p", SMALL)
    spans = []
    for i in range(80):
        r = log.append(batch(1 + i % 7, value_size=8 + (i * 37) % 300), leader_epoch=0)
        spans.append((r.base_offset, r.last_offset))
    for offset in range(log.log_end_offset):
        piece = log.read(offset, 1)
        assert piece is not None
        base, last = next(s for s in spans if s[0] <= offset <= s[1])
        assert piece.first_offset == base
        data = os.pread(piece.fd, piece.length, piece.position)
        (h,) = headers(data)
        assert (h.base_offset, h.last_offset) == (base, last)
        assert piece.next_offset == last + 1
    log.close()


def test_index_is_sparse_and_points_at_batches(tmp_path: Path) -> None:
    cfg = LogConfig(segment_bytes=1 << 20, index_interval_bytes=512, retention_ms=None)
    log = PartitionLog.open(tmp_path / "p", cfg)
    fill(log, 100)
    log.flush()
    index = (tmp_path / "p" / log_name(0)).with_suffix(".index").read_bytes()
    entries = [
        (int.from_bytes(index[i : i + 4], "big"), int.from_bytes(index[i + 4 : i + 8], "big"))
        for i in range(0, len(index), 8)
    ]
    seg = (tmp_path / "p" / log_name(0)).read_bytes()
    assert 0 < len(entries) < 100
    prev = 0
    for rel, pos in entries:
        assert pos - prev >= 512  # one entry per interval, not per batch
        assert headers(seg[pos:])[0].base_offset == rel
        prev = pos
    log.close()


def test_read_limits_by_bytes_and_max_offset(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path / "p", LogConfig(retention_ms=None))
    fill(log, 10)  # 3 records each: bases 0, 3, ..., 27
    size = len(batch(3))
    one = log.read(0, 1)
    assert one is not None
    assert (one.length, one.next_offset) == (size, 3)
    three = log.read(4, 3 * size)
    assert three is not None
    assert (three.first_offset, three.length) == (3, 3 * size)
    assert three.next_offset == 12
    assert len(headers(log.read_bytes(4, 3 * size + size - 1))) == 3
    capped = log.read(0, 1 << 20, max_offset=9)
    assert capped is not None
    assert capped.next_offset == 9
    mid = log.read(0, 1 << 20, max_offset=10)  # batch 9..11 starts below 10: included
    assert mid is not None
    assert mid.next_offset == 12
    assert log.read(9, 100, max_offset=9) is None
    assert log.read(30, 100) is None  # at the LEO: nothing yet
    assert log.read_bytes(30, 100) == b""
    with pytest.raises(OffsetOutOfRange) as exc:
        log.read(31, 100)
    assert exc.value.data["log_end_offset"] == 30
    assert exc.value.data["log_start_offset"] == 0
    log.close()


def test_read_slice_serves_sendfile(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path / "p", SMALL)
    fill(log, 20)
    piece = log.read(7, 600)
    assert piece is not None
    a, b = socket.socketpair()
    with a, b:
        sent = os.sendfile(a.fileno(), piece.fd, piece.position, piece.length)
        assert sent == piece.length
        got = b.recv(1 << 16)
    assert got == log.read_bytes(7, 600)
    assert headers(got)[0].base_offset <= 7
    log.close()


def test_roll_by_size_keeps_segments_under_the_limit(tmp_path: Path) -> None:
    cfg = LogConfig(segment_bytes=1000, index_interval_bytes=128, retention_ms=None)
    log = PartitionLog.open(tmp_path / "p", cfg)
    size = len(batch(3))
    fill(log, 30)
    logs = sorted((tmp_path / "p").glob("*.log"))
    assert len(logs) == log.segment_count == -(-30 // (1000 // size))
    assert all(p.stat().st_size <= 1000 for p in logs)
    big = batch(30, value_size=100)  # larger than a segment: gets one of its own
    log.append(big, leader_epoch=0)
    assert log.read_bytes(log.log_end_offset - 1, 1)[12:] == big[12:]
    assert max(p.stat().st_size for p in (tmp_path / "p").glob("*.log")) == len(big)
    log.close()


def test_roll_by_age_of_the_first_write(tmp_path: Path) -> None:
    cfg = LogConfig(segment_ms=1_000, retention_ms=None)
    log = PartitionLog.open(tmp_path / "p", cfg)
    log.append(batch(), leader_epoch=0, now_ms=10_000)
    log.append(batch(), leader_epoch=0, now_ms=10_999)
    assert log.segment_count == 1
    log.append(batch(), leader_epoch=0, now_ms=11_000)
    assert log.segment_count == 2
    log.append(batch(), leader_epoch=0, now_ms=11_500)
    assert log.segment_count == 2
    log.close()
    log = PartitionLog.open(tmp_path / "p", cfg)  # the age survives a restart
    log.append(batch(), leader_epoch=0, now_ms=12_000)
    assert log.segment_count == 3
    log.close()


def test_retention_by_time_deletes_old_closed_segments(tmp_path: Path) -> None:
    cfg = LogConfig(segment_bytes=1000, retention_ms=DAY)
    log = PartitionLog.open(tmp_path / "p", cfg)
    for i in range(30):
        log.append(batch(3, ts=i * DAY // 10), leader_epoch=0, now_ms=i * DAY // 10)
    segs = sorted((tmp_path / "p").glob("*.log"))
    before = log.size_bytes
    freed = log.apply_retention(now_ms=2 * DAY + DAY // 2)
    # batch i has max timestamp i*DAY/10 + 2; anything wholly older than 1.5 days goes
    assert freed > 0
    assert log.size_bytes == before - freed
    remaining = sorted((tmp_path / "p").glob("*.log"))
    assert len(remaining) < len(segs)
    assert log.log_start_offset == int(remaining[0].stem)
    assert read_everything(log)[0].max_timestamp >= DAY // 2 - DAY // 10
    assert log.apply_retention(now_ms=100 * DAY) > 0
    assert log.segment_count == 1  # the active segment always stays
    assert log.log_start_offset == int(sorted((tmp_path / "p").glob("*.log"))[0].stem)
    with pytest.raises(OffsetOutOfRange):
        log.read(0, 100)
    log.close()


def test_retention_by_bytes_keeps_the_partition_under_budget(tmp_path: Path) -> None:
    cfg = LogConfig(segment_bytes=1000, retention_ms=None, retention_bytes=3000)
    log = PartitionLog.open(tmp_path / "p", cfg)
    fill(log, 40)
    assert log.size_bytes > 3000
    log.apply_retention(now_ms=0)
    assert log.size_bytes <= 3000
    assert log.segment_count >= 1
    first = read_everything(log)[0]
    assert first.base_offset == log.log_start_offset > 0
    log.close()
    log = PartitionLog.open(tmp_path / "p", cfg)
    assert log.log_start_offset == first.base_offset
    log.close()


def test_retention_respects_max_offset(tmp_path: Path) -> None:
    cfg = LogConfig(segment_bytes=1000, retention_ms=None, retention_bytes=1)
    log = PartitionLog.open(tmp_path / "p", cfg)
    fill(log, 40)
    log.apply_retention(now_ms=0, max_offset=30)
    assert 0 < log.log_start_offset <= 30
    kept = read_everything(log)
    assert kept[0].base_offset == log.log_start_offset
    log.close()


def test_reopen_keeps_everything(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path / "p", SMALL)
    fill(log, 50)
    log.set_high_watermark(100)
    before = read_everything(log)
    leo, size = log.log_end_offset, log.size_bytes
    log.close()
    log = PartitionLog.open(tmp_path / "p", SMALL)
    assert (log.log_end_offset, log.size_bytes, log.high_watermark) == (leo, size, 100)
    assert log.flushed_offset == leo
    assert read_everything(log) == before
    assert log.append(batch(), leader_epoch=1).base_offset == leo
    log.close()


def test_a_directory_is_opened_once(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path / "p", SMALL)
    with pytest.raises(StorageError):
        PartitionLog.open(tmp_path / "p", SMALL)
    log.close()
    PartitionLog.open(tmp_path / "p", SMALL).close()


def test_offset_for_timestamp(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path / "p", SMALL)
    for i in range(40):  # 3 records, timestamps ts..ts+2
        log.append(batch(3, ts=1_000 + 10 * i), leader_epoch=0)
    assert log.offset_for_timestamp(0) == 0
    assert log.offset_for_timestamp(1_002) == 0
    assert log.offset_for_timestamp(1_003) == 3
    assert log.offset_for_timestamp(1_250) == 75
    assert log.offset_for_timestamp(1_392) == 117
    assert log.offset_for_timestamp(1_393) is None
    log.close()
    log = PartitionLog.open(tmp_path / "p", SMALL)
    assert log.offset_for_timestamp(1_250) == 75
    log.close()


def test_truncate_to_drops_the_tail_and_continues(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path / "p", SMALL)
    fill(log, 40)
    log.set_high_watermark(120)
    log.truncate_to(50)  # inside batch 48..50: the whole batch goes
    assert log.log_end_offset == 48
    assert log.high_watermark == 48
    assert log.flushed_offset <= 48
    assert read_everything(log)[-1].last_offset == 47
    assert not [p for p in (tmp_path / "p").glob("*.log") if int(p.stem) > 48]
    assert log.append(batch(2), leader_epoch=8).base_offset == 48
    log.close()
    log = PartitionLog.open(tmp_path / "p", SMALL)
    assert log.log_end_offset == 50
    assert [h.leader_epoch for h in read_everything(log, 45)] == [7, 8]
    log.truncate_to(0)
    assert (log.log_start_offset, log.log_end_offset, log.size_bytes) == (0, 0, 0)
    assert log.append(batch(1), leader_epoch=9).base_offset == 0
    log.close()


def test_truncate_then_crash_does_not_trust_new_data(tmp_path: Path) -> None:
    """Bytes appended after a truncation lie where flushed bytes were: recovery re-verifies."""
    log = PartitionLog.open(tmp_path / "p", SMALL)
    fill(log, 5)  # equal-sized batches: the old recovery point stays on a batch boundary
    log.flush()
    log.write_checkpoints()
    flushed_end = log.size_bytes
    log.truncate_to(6)
    fill(log, 4)
    assert log.size_bytes > flushed_end
    seg = tmp_path / "p" / log_name(0)
    data = bytearray(seg.read_bytes())
    data[flushed_end - 10] ^= 0xFF  # inside new, unflushed data, below the old point
    crash(log)
    seg.write_bytes(bytes(data))
    log = PartitionLog.open(tmp_path / "p", SMALL)
    assert log.log_end_offset == 12
    log.close()


def test_closed_log_refuses_calls(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path / "p", SMALL)
    log.close()
    log.close()  # idempotent
    with pytest.raises(StorageError):
        log.append(batch(), leader_epoch=0)
    with pytest.raises(StorageError):
        log.read(0, 10)


def test_high_watermark_cannot_pass_the_leo(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path / "p", SMALL)
    fill(log, 2)
    with pytest.raises(ValueError):
        log.set_high_watermark(7)
    log.set_high_watermark(6)
    assert log.high_watermark == 6
    log.close()

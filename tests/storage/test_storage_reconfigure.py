"""PartitionLog.reconfigure: new topic settings on a live log, nothing rewritten."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from storage_helpers import batch, read_everything

from edge.storage import LogConfig, PartitionLog

BIG = LogConfig(segment_bytes=1 << 20, index_interval_bytes=4096, retention_ms=None)


def fill(log: PartitionLog, count: int) -> None:
    for i in range(count):
        log.append(batch(3, tag=i), leader_epoch=0, now_ms=1_000 + i)


def segment_sizes(directory: Path) -> list[int]:
    return [p.stat().st_size for p in sorted(directory.glob("*.log"))]


def test_same_settings_change_nothing(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path / "p", BIG)
    assert log.reconfigure(dataclasses.replace(BIG)) is False
    assert log.reconfigure(dataclasses.replace(BIG, segment_bytes=1000)) is True
    assert log.config.segment_bytes == 1000
    log.close()


def test_a_smaller_segment_size_rolls_from_the_next_append(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path / "p", BIG)
    fill(log, 20)
    assert log.segment_count == 1
    first = log.size_bytes
    log.reconfigure(dataclasses.replace(BIG, segment_bytes=1000))
    fill(log, 20)
    sizes = segment_sizes(tmp_path / "p")
    assert sizes[0] == first  # what was written stays as it was
    assert len(sizes) > 3
    assert all(size <= 1000 for size in sizes[1:])
    assert len(read_everything(log)) == 40
    log.close()


def test_tighter_retention_applies_at_the_next_pass(tmp_path: Path) -> None:
    small = dataclasses.replace(BIG, segment_bytes=1000)
    log = PartitionLog.open(tmp_path / "p", small)
    fill(log, 40)
    assert log.apply_retention(now_ms=0) == 0
    log.reconfigure(dataclasses.replace(small, retention_bytes=3000))
    assert log.apply_retention(now_ms=0) > 0
    assert log.size_bytes <= 3000
    assert read_everything(log)[0].base_offset == log.log_start_offset > 0
    log.close()


def test_a_new_index_interval_indexes_new_segments(tmp_path: Path) -> None:
    cfg = dataclasses.replace(BIG, segment_bytes=4000)
    log = PartitionLog.open(tmp_path / "p", cfg)
    fill(log, 30)
    old = {s.base_offset for s in log._segs}
    log.reconfigure(dataclasses.replace(cfg, index_interval_bytes=64))
    fill(log, 60)
    new = [s for s in log._segs if s.base_offset not in old]
    assert new
    assert {s.index.interval for s in log._segs if s.base_offset in old} == {4096}
    assert {s.index.interval for s in new} == {64}
    assert all(len(s.index) > 5 for s in new[:-1])
    assert len(read_everything(log)) == 90
    log.close()

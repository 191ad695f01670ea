"""Builders shared by the storage tests."""

from __future__ import annotations

import shutil
from pathlib import Path

from edge.protocol.batch import BatchHeader, encode_batch, split_batches
from edge.storage import LogConfig, PartitionLog

SMALL = LogConfig(segment_bytes=2048, index_interval_bytes=256, retention_ms=None)


def batch(
    records: int = 3,
    *,
    ts: int = 1_000,
    value_size: int = 40,
    tag: int = 0,
    producer: tuple[int, int, int] | None = None,
) -> bytes:
    """A batch of ``records`` records whose values encode ``tag`` (to tell batches apart)."""
    pid, epoch, seq = producer if producer is not None else (-1, -1, -1)
    value = tag.to_bytes(4, "big") * (value_size // 4)
    return encode_batch(
        [[i, None, value] for i in range(records)],
        first_timestamp=ts,
        producer_id=pid,
        producer_epoch=epoch,
        base_sequence=seq,
    )


def headers(data: bytes) -> list[BatchHeader]:
    return [h for h, _ in split_batches(data)]


def read_everything(log: PartitionLog, start: int | None = None) -> list[BatchHeader]:
    """Every batch from ``start`` (default: log start) to the LEO, CRC-verified."""
    out: list[BatchHeader] = []
    offset = log.log_start_offset if start is None else start
    while offset < log.log_end_offset:
        data = log.read_bytes(offset, 1 << 20)
        got = headers(data)
        out.extend(got)
        offset = got[-1].next_offset
    return out


def crash(log: PartitionLog) -> None:
    """What the kernel does when the process dies: close every descriptor, flush nothing."""
    segs = log._segs
    for seg in segs:
        seg.close()
    segs.lock.close()
    log._closed = True


def copy_dir(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst

"""How long PartitionLog.open takes on a large log (it should not grow with the size).

Builds a log of ~16 KiB batches of 100-byte records (1 GiB by default) in a
temporary directory, closes it, then times ``PartitionLog.open`` five times and
prints the median. For contrast it also times an open without the checkpoint
(the fallback that verifies the whole last segment).

    .venv/bin/python bench/storage_recovery.py [--size-mib 1024] [--dir PATH]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

from edge.protocol.batch import encode_batch
from edge.storage import LogConfig, PartitionLog
from edge.storage.checkpoint import CHECKPOINT_NAME

RECORD_BYTES = 100
BATCH_BYTES = 16 * 1024
RUNS = 5


def template() -> bytes:
    """One ~16 KiB batch of records that each take about 100 bytes of CBOR."""
    value = b"v" * (RECORD_BYTES - 8)  # array, delta, null key, byte-string header
    count = BATCH_BYTES // RECORD_BYTES
    return encode_batch([[i % 24, None, value] for i in range(count)], first_timestamp=0)


def build(path: Path, size: int, cfg: LogConfig) -> tuple[int, float, int]:
    """Fill the log; returns (records, seconds, segments)."""
    data = template()
    records = BATCH_BYTES // RECORD_BYTES
    log = PartitionLog.open(path, cfg)
    start = time.perf_counter()
    written = appended = 0
    while written < size:
        log.append(data, leader_epoch=0)
        written += len(data)
        appended += 1
        if appended % 64 == 0:  # ~1 MiB per group commit
            log.flush()
    log.close()
    elapsed = time.perf_counter() - start
    return appended * records, elapsed, len(list(path.glob("*.log")))


def time_open(path: Path, cfg: LogConfig) -> list[float]:
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        log = PartitionLog.open(path, cfg)
        times.append(time.perf_counter() - start)
        log.close()
    return times


def report(label: str, times: list[float]) -> None:
    ms = [t * 1000 for t in times]
    print(
        f"{label}: median {statistics.median(ms):.1f} ms "
        f"(min {min(ms):.1f}, max {max(ms):.1f}, {len(ms)} runs)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--dir", type=Path, default=None, help="where to build (default: tmp)")
    args = parser.parse_args()
    cfg = LogConfig(retention_ms=None)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "partition"
        size = args.size_mib * 1024 * 1024
        records, seconds, segments = build(path, size, cfg)
        print(
            f"built {size / 2**20:.0f} MiB in {segments} segments: {records} records in "
            f"{seconds:.1f} s ({records / seconds:,.0f} records/s, "
            f"{size / 2**20 / seconds:.0f} MiB/s, group commit every 64 batches)"
        )
        report("open with checkpoint", time_open(path, cfg))
        last = max(path.glob("*.log")).stat().st_size
        logging.getLogger("edge.storage").setLevel(logging.ERROR)  # the fallback warns each time
        times = []
        for _ in range(RUNS):
            (path / CHECKPOINT_NAME).unlink(missing_ok=True)
            start = time.perf_counter()
            log = PartitionLog.open(path, cfg)
            times.append(time.perf_counter() - start)
            log.close()
        label = f"open without checkpoint (verifies the last segment, {last / 2**20:.1f} MiB)"
        report(label, times)


if __name__ == "__main__":
    main()

"""A batch damaged on disk stops a consumer with an error naming the offset, and
``--skip-unreadable`` (``Consumer(skip_unreadable=True)``) goes past it to the next
readable offset, counted and reported once per skip."""

from __future__ import annotations

import asyncio
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from edge.client import Admin, Consumer, Offset, Producer, SkippedBatch
from edge.protocol.batch import HEADER_SIZE
from edge.protocol.errors import CorruptBatch
from edge.testing import LocalCluster

VALUES = [b"a", b"b", b"c", b"d", b"e"]
DAMAGED = 2  # the batch holding offset 2 (one record per batch)


def _damage_batch(partition_dir: Path, offset: int) -> None:
    """Flip a byte inside the records of the batch at ``offset`` (its CRC no longer
    matches), as a failing SD card would."""
    (segment,) = sorted(partition_dir.glob("*.log"))
    data = bytearray(segment.read_bytes())
    pos = 0
    while pos < len(data):
        base, length = struct.unpack_from(">qI", data, pos)
        if base == offset:
            data[pos + HEADER_SIZE] ^= 0xFF
            segment.write_bytes(bytes(data))
            return
        pos += 12 + length
    pytest.fail(f"no batch at offset {offset} in {segment}")


def _consume(c: LocalCluster, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge.cli.main", "--sc", c.sc_addr, "consume", "t", "-B", "-d",
         *extra], capture_output=True, text=True, timeout=60, check=False)


async def test_a_damaged_batch_stops_the_consumer_until_it_is_skipped(tmp_path: Path) -> None:
    async with LocalCluster(tmp_path / "c") as c:
        async with Admin(c.sc_addr) as admin:
            await admin.create_topic("t", partitions=1)
            await admin.wait_ready("t")
        async with Producer(c.sc_addr, linger_ms=0) as p:
            for value in VALUES:
                await (await p.send("t", value))
        await c.stop_spu(1)  # a clean stop checkpoints: recovery will not re-verify
        _damage_batch(c.data_dir / "spu-1" / "partitions" / "t-0", DAMAGED)
        await c.start_spu(1)

        async with Consumer(c.sc_addr, "t", offset=Offset.beginning()) as consumer:
            with pytest.raises(CorruptBatch, match="t/0: unreadable batch at offset 2"):
                await consumer.fetch_until_end()

        stopped = await asyncio.to_thread(_consume, c)
        assert stopped.returncode == 1
        assert stopped.stdout.split() == ["a", "b"]
        assert "offset 2" in stopped.stderr
        assert "--skip-unreadable" in stopped.stderr
        assert len(stopped.stderr.strip().splitlines()) == 1

        skipped = await asyncio.to_thread(_consume, c, "--skip-unreadable")
        assert skipped.returncode == 0, skipped.stderr
        assert skipped.stdout.split() == ["a", "b", "d", "e"]
        assert skipped.stderr.count("skipped unreadable records 2..2 of t/0") == 1

        # One batch per answer: the damaged one ends it, so the SPU's "next" is used.
        seen: list[SkippedBatch] = []
        async with Consumer(c.sc_addr, "t", offset=Offset.beginning(), consumer="app",
                            max_bytes=1, skip_unreadable=True,
                            on_skip=seen.append) as consumer:
            records = await consumer.fetch_until_end()
            await consumer.commit()
            assert [r.value for r in records] == [b"a", b"b", b"d", b"e"]
            assert consumer.skipped == 1
        assert [(s.offset, s.next_offset) for s in seen] == [(2, 3)]
        async with Consumer(c.sc_addr, "t", consumer="app", stop_at_end=True) as consumer:
            assert consumer.positions == {0: 5}

"""A full disk is a state in the SPU's log: one line when appends start failing,
one when they succeed again, while every refused client still gets DISK_FULL.
The SPU's data directory is a real, tiny tmpfs (needs root)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import require_root

from edge.client import Admin, Consumer, Offset
from edge.net.connection import ClientConnection
from edge.protocol.batch import encode_batch
from edge.protocol.errors import DiskFull
from edge.protocol.messages import ApiKey
from edge.testing import LocalCluster


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    require_root()
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(directory: Path) -> Path:
    filler = directory / "filler"
    with filler.open("wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    return filler


async def test_disk_full_is_logged_when_it_begins_and_when_it_ends(
        tmp_path: Path, tiny_disk: Path) -> None:
    async with LocalCluster(tmp_path / "c", log_level="info",
                            extra_spu_args=["--data-dir", str(tiny_disk / "spu-1")]) as c:
        async with Admin(c.sc_addr) as admin:
            await admin.create_topic("t", partitions=1)
            await admin.wait_ready("t")
        batch = encode_batch([[0, None, b"v" * 16384]] * 4, first_timestamp=1)
        filler = _fill(tiny_disk)
        refused = 0
        acked: list[int] = []
        async with ClientConnection(c.spu_addr()) as conn:
            for _ in range(200):
                try:
                    meta, _ = await conn.request(ApiKey.PRODUCE, batch, topic="t", partition=0,
                                                 acks=1)
                    acked.append(meta["base"])
                except DiskFull:
                    refused += 1
            assert refused >= 150  # the rest fitted the pages the segment already had
            filler.unlink()
            # A refused append holds further appends back for a moment (so a later
            # pipelined batch cannot overtake it), then the disk is tried again.
            deadline = asyncio.get_running_loop().time() + 5
            while True:
                try:
                    meta, _ = await conn.request(ApiKey.PRODUCE, batch, topic="t",
                                                 partition=0, acks=1)
                    break
                except DiskFull:
                    refused += 1
                    assert asyncio.get_running_loop().time() < deadline
                    await asyncio.sleep(0.1)
            assert meta["base"] >= 0
            acked.append(meta["base"])
        # Every acknowledged batch is in the log, whole; nothing refused is.
        async with Consumer(c.sc_addr, "t", offset=Offset.beginning(), stop_at_end=True) as cons:
            stored = [r.offset async for r in cons]
        assert stored == [base + i for base in acked for i in range(4)]
        log = (c.data_dir / "spu-1.log").read_text()
    assert log.count("t/0: disk full, appends refused") == 1, log
    assert log.count("t/0: appends succeed again after disk full") == 1, log
    assert f"({refused} time(s) in" in log

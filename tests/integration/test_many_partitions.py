"""An SPU hosting many partitions (a cloud SPU holding thousands of sites' mirrors):
its assignment and its status outgrow frame metadata and travel in the blob, and its
open files follow the partitions in use, not the partitions hosted.

1,000 partitions with long names make an assignment, a heartbeat and a partition
list of about 300 KiB each, past the 256 KiB limit on the metadata of a request
that once stopped an SPU from taking its push near 800 partitions."""

from __future__ import annotations

from pathlib import Path

import cbor2
import psutil

from edge.client import Admin, Consumer, Offset, Producer
from edge.net.connection import ClientConnection
from edge.protocol.framing import MAX_META_BYTES
from edge.protocol.messages import ApiKey
from edge.testing import LocalCluster
from tests.integration.faults import wait_for

PARTITIONS = 1000
TOPIC = "t" * 200  # the longest name the SC accepts: the rows are as large as they get


async def test_an_spu_takes_an_assignment_larger_than_frame_metadata(tmp_path: Path) -> None:
    async with LocalCluster(tmp_path / "c") as c:
        async with Admin(c.sc_addr) as admin:
            await admin.create_topic(TOPIC, partitions=PARTITIONS, config={
                "retention_bytes": 1 << 30, "segment_bytes": 1 << 20})

            async def hosted() -> bool:
                rows = await admin.list_partitions(TOPIC)
                return len(rows) == PARTITIONS and all(r.get("hw") == 0 for r in rows)

            await wait_for(hosted, timeout=90)
            rows = await admin.list_partitions(TOPIC)
        assert len(cbor2.dumps(rows)) > MAX_META_BYTES  # the cases this is about
        async with ClientConnection(c.spu_addr()) as conn:
            status, _ = await conn.request(ApiKey.PARTITION_STATUS)
        assert len(cbor2.dumps(status["partitions"])) > MAX_META_BYTES  # each heartbeat
        async with Producer(c.sc_addr) as p:
            await (await p.send(TOPIC, b"last", partition=PARTITIONS - 1))
        async with Consumer(c.sc_addr, TOPIC, partition=[PARTITIONS - 1],
                            offset=Offset.beginning(), stop_at_end=True) as cons:
            assert [r.value async for r in cons] == [b"last"]


IDLE_PARTITIONS = 300
IDLE_CLOSE_S = 10.0


async def test_idle_partitions_close_their_files_and_reopen_them_on_use(
    tmp_path: Path,
) -> None:
    # Long enough that all 300 are still open when counted, on a loaded machine too.
    async with LocalCluster(tmp_path / "c", spu_settings={"idle_close_s": IDLE_CLOSE_S}) as c:
        spu = psutil.Process(c.spu_procs[1].pid)
        async with Admin(c.sc_addr) as admin:
            await admin.create_topic("idle", partitions=IDLE_PARTITIONS)
            await admin.wait_ready("idle", timeout=60)
            async with Producer(c.sc_addr) as p:
                futures = [await p.send("idle", b"r%d" % i, partition=i)
                           for i in range(IDLE_PARTITIONS)]
                for fut in futures:
                    await fut
            # Written a moment ago: at least each partition's log is open.
            busy = spu.num_fds()
            assert busy > IDLE_PARTITIONS

            async def settled() -> bool:
                return spu.num_fds() < 100

            await wait_for(settled, timeout=4 * IDLE_CLOSE_S)
            # Everything reopens on use: each record is still there, and more go in.
            async with Producer(c.sc_addr) as p:
                await (await p.send("idle", b"again", partition=7))
            async with Consumer(c.sc_addr, "idle", partition=[7, IDLE_PARTITIONS - 1],
                                offset=Offset.beginning(), stop_at_end=True) as cons:
                got = sorted([r.value async for r in cons])
            assert got == sorted([b"r7", b"again", b"r%d" % (IDLE_PARTITIONS - 1)])

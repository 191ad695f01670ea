"""A follower whose log ends inside one of its leader's batches (its tail diverged at
the same epoch, so truncation by epoch keeps it) converges instead of spinning.

The leader answers a fetch at such an offset at once with the batch holding it,
which the follower cannot append; asking again as is kept both SPUs busy. Real SC
and two SPUs; the follower's divergent batch is written into its log while it is
stopped.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import psutil
from faults import rows, spu_status, wait_for

from edge.client import Acks, Admin
from edge.net.connection import ClientConnection
from edge.protocol import batch as codec
from edge.protocol.errors import HeadwaterError
from edge.protocol.messages import ApiKey
from edge.storage.config import LogConfig
from edge.storage.log import PartitionLog
from edge.testing import LocalCluster

TOPIC = "d"
MAX_CPU_PERCENT = 15.0  # of one core, over 2 s: a fetch loop without a pause takes far more


def batch(prefix: str, count: int) -> bytes:
    return codec.encode_batch([[i, None, f"{prefix}{i}".encode()] for i in range(count)],
                              first_timestamp=int(time.time() * 1000))


async def produce(addr: str, data: bytes, acks: Acks) -> int:
    """One batch straight to the leader, retried while it cannot acknowledge yet."""
    async with asyncio.timeout(20), ClientConnection(addr) as conn:
        while True:
            try:
                meta, _ = await conn.request(ApiKey.PRODUCE, data, topic=TOPIC, partition=0,
                                             acks=int(acks))
                return int(meta["base"])
            except HeadwaterError as exc:
                if not exc.retriable:
                    raise
                await asyncio.sleep(0.1)


async def test_a_follower_ending_inside_a_leader_batch_converges(tmp_path: Path) -> None:
    async with LocalCluster(tmp_path / "c", spus=2) as cluster:
        async with Admin(cluster.sc_addr) as admin:
            await admin.create_topic(TOPIC, partitions=1, replication=2, prefer_leader=1)
            await admin.wait_ready(TOPIC)

        async def full_isr() -> bool:
            return sorted((await rows(cluster, TOPIC))[0]["isr"]) == [1, 2]

        async def follower_at(leo: int) -> bool:
            return int((await spu_status(cluster, 2, TOPIC))["leo"]) == leo

        await wait_for(full_isr, what="an ISR of two")
        assert await produce(cluster.spu_addr(1), batch("a", 5), Acks.ALL) == 0
        await wait_for(lambda: follower_at(5), what="the follower at offset 5")
        await cluster.stop_spu(2)
        assert await produce(cluster.spu_addr(1), batch("b", 10), Acks.LEADER) == 5

        # The stopped follower's log gets a batch of 3 its leader never had, at the
        # same epoch: it now ends at 8, inside the leader's batch 5..14.
        plog = PartitionLog.open(cluster.data_dir / "spu-2" / "partitions" / f"{TOPIC}-0",
                                 LogConfig())
        try:
            plog.append(bytearray(batch("x", 3)), leader_epoch=0)
            plog.flush()
            assert plog.log_end_offset == 8
        finally:
            plog.close()

        await cluster.start_spu(2)
        await wait_for(lambda: follower_at(15), timeout=10, what="the follower at offset 15")
        await wait_for(full_isr, what="the follower back in the ISR")
        procs = {i: psutil.Process(p.pid) for i, p in cluster.spu_procs.items()}
        for proc in procs.values():
            proc.cpu_percent(None)
        await asyncio.sleep(2.0)
        cpu = {i: proc.cpu_percent(None) for i, proc in procs.items()}
        assert all(v < MAX_CPU_PERCENT for v in cpu.values()), cpu
    log = (cluster.data_dir / "spu-2.log").read_text()
    assert "ends at 8, inside leader" in log, log
    # The follower holds the leader's records, byte for byte: its own batch is gone.
    copy = PartitionLog.open(cluster.data_dir / "spu-2" / "partitions" / f"{TOPIC}-0",
                             LogConfig())
    leader = PartitionLog.open(cluster.data_dir / "spu-1" / "partitions" / f"{TOPIC}-0",
                               LogConfig())
    try:
        assert copy.read_bytes(0, 1 << 20) == leader.read_bytes(0, 1 << 20)
    finally:
        copy.close()
        leader.close()

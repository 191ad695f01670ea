"""Three SPUs, one replicated partition: replication, failover, rejoin."""

from __future__ import annotations

import asyncio
from pathlib import Path

from edge.client import Acks, Admin, Consumer, Offset, Producer
from edge.testing import LocalCluster


async def partition_row(cluster: LocalCluster, topic: str) -> dict:
    async with Admin(cluster.sc_addr) as admin:
        return (await admin.list_partitions(topic))[0]


async def wait_for(cond, timeout: float = 20.0, what: str = "condition") -> None:
    async with asyncio.timeout(timeout):
        while not await cond():
            await asyncio.sleep(0.1)


async def test_replicated_produce_failover_and_rejoin(tmp_path: Path) -> None:
    async with LocalCluster(tmp_path / "c", spus=3) as cluster:
        async with Admin(cluster.sc_addr) as admin:
            await admin.create_topic("r3", replication=3, config={"min_insync_replicas": 2})
            await admin.wait_ready("r3")
        async with Producer(cluster.sc_addr, acks=Acks.ALL) as p:
            for i in range(1000):
                await p.send("r3", b"%d" % i)
        row = await partition_row(cluster, "r3")
        assert sorted(row["isr"]) == [1, 2, 3]
        async with Consumer(cluster.sc_addr, "r3", offset=Offset.beginning(), consumer="app",
                            end_offset=499) as c:
            assert len(await c.fetch_until_end()) == 500
            await c.commit()
        await asyncio.sleep(1.5)  # followers copy positions with their next fetches
        leader = row["leader"]
        await cluster.kill_spu(leader)

        async def moved() -> bool:
            r = await partition_row(cluster, "r3")
            return r["leader"] not in (None, leader)

        await wait_for(moved, what="new leader")
        async with Producer(cluster.sc_addr, acks=Acks.ALL) as p:
            for i in range(1000, 2000):
                await p.send("r3", b"%d" % i)
        async with Consumer(cluster.sc_addr, "r3", offset=Offset.beginning()) as c:
            values = [int(r.value) for r in await c.fetch_until_end()]
        assert values == list(range(2000))
        # The committed position moved with the leadership.
        async with Consumer(cluster.sc_addr, "r3", consumer="app", stop_at_end=True) as c:
            assert c.positions[0] == 500
        await cluster.start_spu(leader)

        async def rejoined() -> bool:
            r = await partition_row(cluster, "r3")
            return sorted(r["isr"]) == [1, 2, 3]

        await wait_for(rejoined, what="ISR of three again")

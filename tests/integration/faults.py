"""Fault helpers shared by the replication fault tests and ``bench/failover_soak.py``:
cluster state as the SC and the SPUs report it, and one SIGKILL-the-leader cycle."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from workload import Workload, partition_rows

from edge.client import Admin
from edge.net.connection import ClientConnection
from edge.protocol import batch as codec
from edge.protocol.messages import ApiKey
from edge.testing import LocalCluster


async def wait_for(cond: Callable[[], Awaitable[bool]], *, timeout: float = 20.0,
                   what: str = "condition") -> None:
    try:
        async with asyncio.timeout(timeout):
            while not await cond():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None


async def create_topic(cluster: LocalCluster, topic: str, *, partitions: int = 1,
                       **config: Any) -> None:
    async with Admin(cluster.sc_addr) as admin:
        await admin.create_topic(topic, partitions=partitions, replication=3,
                                 config={"min_insync_replicas": 2, **config})
        await admin.wait_ready(topic)


async def rows(cluster: LocalCluster, topic: str) -> list[dict[str, Any]]:
    return await partition_rows(cluster.sc_addr, topic)


async def wait_full_isr(cluster: LocalCluster, topic: str, timeout: float = 30.0) -> None:
    async def full() -> bool:
        return all(sorted(r["isr"]) == [1, 2, 3] for r in await rows(cluster, topic))
    await wait_for(full, timeout=timeout, what=f"ISR of three on every partition of {topic}")


async def wait_new_leader(cluster: LocalCluster, topic: str, part: int, old: int) -> int:
    async def moved() -> bool:
        r = (await rows(cluster, topic))[part]
        return r["leader"] not in (None, old)
    await wait_for(moved, what=f"a leader other than SPU {old} for {topic}/{part}")
    return int((await rows(cluster, topic))[part]["leader"])


async def spu_status(cluster: LocalCluster, spu_id: int, topic: str, part: int = 0
                     ) -> dict[str, Any]:
    """What one SPU reports of its replica of ``topic/part`` (PARTITION_STATUS)."""
    async with ClientConnection(cluster.spu_addr(spu_id)) as conn:
        meta, _ = await conn.request(ApiKey.PARTITION_STATUS)
    return next(r for r in meta["partitions"] if r["topic"] == topic and r["partition"] == part)


async def leader_ahead_of_followers(cluster: LocalCluster, spu_id: int, topic: str,
                                    part: int) -> bool:
    """The leader holds records that no follower has fetched."""
    status = await spu_status(cluster, spu_id, topic, part)
    followers = status["followers"] or {}
    return bool(followers) and all(f["lag"] > 0 for f in followers.values())


def raw_batch(value: str) -> bytes:
    return codec.encode_batch([[0, None, value.encode()]],
                              first_timestamp=int(time.time() * 1000))


async def at_epoch(cluster: LocalCluster, spu_id: int, topic: str, epoch: int) -> bool:
    return int((await spu_status(cluster, spu_id, topic))["epoch"]) == epoch


async def leads(cluster: LocalCluster, spu_id: int, topic: str) -> bool:
    status = await spu_status(cluster, spu_id, topic)
    return bool(status["leader"])


async def kill_leader_cycle(cluster: LocalCluster, w: Workload, *, part: int,
                            cut_first: bool = False) -> float:
    """SIGKILL the leader of ``w.topic/part`` (after cutting it off from its
    followers until it holds records they lack, with ``cut_first``), wait for a new
    leader and for writes to go on, restart the old one. Returns the seconds from
    the kill to the first acknowledged record sent after it."""
    await wait_full_isr(cluster, w.topic)
    victim = int((await rows(cluster, w.topic))[part]["leader"])
    if cut_first:
        cluster.isolate(victim)
        await wait_for(lambda: leader_ahead_of_followers(cluster, victim, w.topic, part),
                       what="records only the leader has")
    killed = time.monotonic()
    await cluster.kill_spu(victim)
    cluster.heal(victim)
    await wait_new_leader(cluster, w.topic, part, victim)
    # Writes go on: the producers found the new leader by themselves.
    first = await w.wait_acked(50, since=killed, partition=part)
    await cluster.start_spu(victim)
    return first - killed

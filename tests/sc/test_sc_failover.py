"""Several SCs on a real three-member etcd: one active, a standby taking over when it
is killed or paused past its lease, fencing of the one that comes back, and etcd
members lost one and two at a time. SPUs and clients are given every SC's address."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from etcd_harness import EtcdCluster

from edge.client import Acks, Admin, Consumer, Offset, Producer
from edge.protocol.errors import HeadwaterError, TopicExists
from edge.testing import HaCluster

TTL_S = 2
SC_FAILOVER_CYCLES = int(os.environ.get("HEADWATER_FAILOVER_CYCLES", "6"))


@pytest.fixture
async def ha(tmp_path: Path, etcd_cluster: EtcdCluster, etcd_prefix: str
             ) -> AsyncIterator[HaCluster]:
    cluster = HaCluster(tmp_path, etcd=etcd_cluster.endpoints, prefix=etcd_prefix, scs=2,
                        spus=3, ttl_s=TTL_S, log_level="info")
    await cluster.start()
    try:
        yield cluster
    finally:
        await cluster.stop()


async def produce_steadily(sc: str, topic: str, stop: asyncio.Event, acked: list[bytes],
                           errors: list[BaseException]) -> None:
    async with Producer(sc, acks=Acks.ALL, linger_ms=1, delivery_timeout_s=60) as p:
        i = 0
        while not stop.is_set():
            value = f"r{i}".encode()
            try:
                await (await p.send(topic, value, partition=i % 3))
                acked.append(value)
            except HeadwaterError as exc:
                errors.append(exc)
            i += 1
            await asyncio.sleep(0.005)


async def read_all(sc: str, topic: str) -> list[bytes]:
    async with Consumer(sc, topic, offset=Offset.beginning(), stop_at_end=True) as c:
        return [r.value async for r in c]


async def leaders(sc: str, topic: str) -> dict[int, tuple[Any, int]]:
    async with Admin(sc) as admin:
        rows = await admin.list_partitions(topic)
    return {r["partition"]: (r["leader"], r["epoch"]) for r in rows}


async def test_a_standby_takes_over_from_a_killed_sc_and_fails_over_an_spu(
        ha: HaCluster) -> None:
    async with Admin(ha.sc_addr) as admin:
        await admin.create_topic("t", partitions=3, replication=3)
        await admin.wait_ready("t")
    stop, acked, errors = asyncio.Event(), [], []  # type: ignore[var-annotated]
    writer = asyncio.create_task(produce_steadily(ha.sc_addr, "t", stop, acked, errors))
    await asyncio.sleep(1)

    first = await ha.wait_active()
    killed_at = time.monotonic()
    await ha.kill_sc_number(first)
    second = await ha.wait_active(timeout=10, other_than=first)
    took = time.monotonic() - killed_at
    assert second != first
    assert took < TTL_S + 3, took  # the benchmark's goal is 3 s; here a margin for load

    # An SPU killed right after: the new SC fails its partitions over.
    before = await leaders(ha.sc_addr, "t")
    victim = before[0][0]
    await ha.kill_spu(victim)
    async with asyncio.timeout(15):
        while True:
            now = await leaders(ha.sc_addr, "t")
            if all(leader not in (None, victim) for leader, _ in now.values()):
                break
            await asyncio.sleep(0.1)
    await asyncio.sleep(1)
    stop.set()
    await writer
    assert len(acked) > 100
    # Only retriable errors reach the application, and nothing acknowledged is lost.
    assert all(getattr(e, "retriable", False) for e in errors), errors
    stored = await read_all(ha.sc_addr, "t")
    assert set(acked) <= set(stored)

    async with Admin(ha.sc_addr) as admin:
        status = await admin.cluster_status()
    plane = status["control_plane"]
    assert plane["metadata"] == "etcd"
    assert str(ha.sc_procs[second].pid) in plane["active"]


async def test_a_paused_sc_changes_nothing_when_it_comes_back(ha: HaCluster) -> None:
    async with Admin(ha.sc_addr) as admin:
        await admin.create_topic("t", partitions=3, replication=3)
        await admin.wait_ready("t")
    first = await ha.wait_active()
    ha.signal_sc(first, signal.SIGSTOP)
    try:
        second = await ha.wait_active(timeout=TTL_S + 8, other_than=first)
        # While the old one sleeps, the cluster moves on: an SPU dies, the new SC
        # elects other leaders at higher epochs.
        victim = (await leaders(ha.sc_addr, "t"))[0][0]
        await ha.kill_spu(victim)
        async with asyncio.timeout(15):
            while any(leader in (None, victim)
                      for leader, _ in (await leaders(ha.sc_addr, "t")).values()):
                await asyncio.sleep(0.1)
        settled = await leaders(ha.sc_addr, "t")
        log_before = (ha.data_dir / f"sc-{first}.log").read_text()
    finally:
        ha.signal_sc(first, signal.SIGCONT)
    # It wakes believing it is active and that every SPU went silent: it must step
    # down without writing (its transactions carry the old leadership and fail).
    public = ha.sc_publics[first]
    async with asyncio.timeout(TTL_S + 10):
        while True:
            with contextlib.suppress(HeadwaterError, OSError):
                async with Admin(public) as probe:
                    if probe.cluster.sc_addr and (await ha.active()) == second:
                        break
            await asyncio.sleep(0.1)
    await asyncio.sleep(TTL_S + 1)
    assert await ha.active() == second
    assert await leaders(ha.sc_addr, "t") == settled
    after = (ha.data_dir / f"sc-{first}.log").read_text()[len(log_before):]
    assert "stepping down to standby" in after
    assert not re.search(r"leads, epoch \d+", after), after


async def created(ha: HaCluster, topic: str, failures: list[HeadwaterError]) -> bool:
    """Create ``topic`` (a write applied before, when etcd timed out, counts) and wait
    until it has leaders; False, the error noted, while the SCs cannot yet."""
    try:
        async with Admin(ha.sc_addr) as admin:
            with contextlib.suppress(TopicExists):
                await admin.create_topic(topic, partitions=1, replication=3)
            await admin.wait_ready(topic)
    except HeadwaterError as exc:
        failures.append(exc)
        return False
    return True


async def create_fails(ha: HaCluster, topic: str) -> HeadwaterError:
    """The error a topic create meets (within 30 s); AssertionError if it succeeds."""
    try:
        async with asyncio.timeout(30), Admin(ha.sc_addr) as admin:
            await admin.create_topic(topic, partitions=1, replication=3)
    except HeadwaterError as exc:
        return exc
    raise AssertionError(f"topic {topic} was created without an etcd quorum")


async def test_etcd_members_lost_one_then_two(ha: HaCluster, etcd_cluster: EtcdCluster
                                              ) -> None:
    async with Admin(ha.sc_addr) as admin:
        await admin.create_topic("t", partitions=1, replication=3)
        await admin.wait_ready("t")
    etcd_cluster.stop_member(etcd_cluster.leader_index())
    async with Admin(ha.sc_addr) as admin:  # one member down: nothing changes
        await admin.create_topic("u", partitions=1, replication=3)
        await admin.wait_ready("u")
    # Quorum lost: the data plane keeps serving the clients it serves (a producer
    # already started: a new one needs a producer id, an etcd write); metadata
    # changes fail, retriably.
    async with Producer(ha.sc_addr, acks=Acks.ALL, delivery_timeout_s=20) as p:
        await (await p.send("t", b"before"))
        etcd_cluster.stop_member(etcd_cluster.running()[0])
        for i in range(20):
            await (await p.send("t", f"q{i}".encode()))
        refused = await create_fails(ha, "v")
    assert refused.retriable, refused
    assert [v for v in await read_all(ha.sc_addr, "t") if v.startswith(b"q")] == [
        f"q{i}".encode() for i in range(20)]
    # Quorum back: everything resumes.
    for i in range(len(etcd_cluster.members)):
        if i not in etcd_cluster.running():
            etcd_cluster.start_member(i, wait=False)
    etcd_cluster.wait_healthy()
    failures: list[HeadwaterError] = []
    async with asyncio.timeout(60):
        while not await created(ha, "v", failures):
            await asyncio.sleep(0.5)
    assert all(f.retriable for f in failures), failures


async def test_the_replication_fault_workload_with_sc_failovers_mixed_in(
        tmp_path: Path, etcd_cluster: EtcdCluster, etcd_prefix: str) -> None:
    """The leader-kill workload of tests/integration (idempotent producers, consumers
    reading throughout, the history checker), with the active SC SIGKILLed and
    restarted between leader kills: nothing acknowledged lost, no duplicate, no gap."""
    integration = str(Path(__file__).resolve().parents[1] / "integration")
    if integration not in sys.path:
        sys.path.insert(0, integration)
    from checker import check
    from faults import create_topic, kill_leader_cycle, wait_full_isr
    from workload import Workload

    cluster = HaCluster(tmp_path / "c", etcd=etcd_cluster.endpoints, prefix=etcd_prefix,
                        scs=2, spus=3, ttl_s=TTL_S, private_proxy=True)
    await cluster.start()
    try:
        await create_topic(cluster, "kill", partitions=2)
        w = Workload(cluster.sc_addr, "kill", partitions=2, producers=3, consumers=2)
        w.start()
        try:
            await w.wait_acked(200)
            for cycle in range(SC_FAILOVER_CYCLES):
                if cycle % 2 == 0:
                    active = await cluster.wait_active()
                    await cluster.kill_sc_number(active)
                    await cluster.wait_active(timeout=15, other_than=active)
                    await cluster.start_sc_number(active)  # back as a standby
                await kill_leader_cycle(cluster, w, part=cycle % 2, cut_first=cycle % 4 >= 2)
            await wait_full_isr(cluster, w.topic)
            history = await w.stop()
        except BaseException:
            await w.cancel()
            raise
    finally:
        await cluster.stop()
    report = check(history)
    print(report.summary())
    assert report.valid, report.summary()
    assert not w.errors
    assert report.stats["acked"] > 500, report.summary()

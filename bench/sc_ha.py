"""What the control plane on etcd costs and how fast it fails over.

    .venv/bin/python bench/sc_ha.py [--ops 300] [--topics 100] [--runs 3] [--kills 10]

A real three-member etcd cluster (Debian's etcd, on 127.0.0.1, its own WAL fsyncs)
beside the SQLite store of a single SC, in one run:

* store operations per second, sequential, each one durable before the next:
  ``add_topic`` (a topic of one partition, RF 3) and ``update_partition`` (an ISR
  change, as the SC writes when a follower falls behind or catches up). The etcd
  store writes each as one transaction fenced on the election key, as the active
  SC does; the SQLite store is the edge default (WAL, ``synchronous=FULL``).
  Medians of ``--runs``.
* topic creates per second through a running SC (``Admin.create_topic``, RF 1, one
  SPU: the request, the store write, the assignment push, the SPU's answer), SQLite
  SC vs an active SC on etcd with a standby beside it.
* SC failover: two SCs and three SPUs on etcd (lease TTL 2 s); the active SC is
  SIGKILLed; the time until the standby answers as the active SC, and until a
  client given both addresses has created a topic through it. The killed SC is
  started again (as the standby) before the next kill. Medians of ``--kills``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "sc"))

from etcd_harness import EtcdCluster  # noqa: E402 - a real etcd, as the tests start it

from edge.bench import machine  # noqa: E402
from edge.client import Admin  # noqa: E402
from edge.protocol.errors import HeadwaterError  # noqa: E402
from edge.sc.election import Election  # noqa: E402
from edge.sc.etcd_store import EtcdMetadataStore  # noqa: E402
from edge.sc.store import MetadataStore, PartitionRow, TopicRow  # noqa: E402
from edge.testing import HaCluster, LocalCluster  # noqa: E402

TTL_S = 2


def store_ops(store: Any, ops: int, tag: str) -> dict[str, float]:
    """add_topic, then update_partition on those topics, ``ops`` of each."""
    start = time.perf_counter()
    for i in range(ops):
        name = f"{tag}-{i}"
        store.add_topic(TopicRow(name, 1, 3, {}, "ready", 0),
                        [PartitionRow(name, 0, [1, 2, 3], 1, 0, [1, 2, 3])])
    created = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(ops):
        isr = [1, 2] if i % 2 == 0 else [1, 2, 3]
        store.update_partition(PartitionRow(f"{tag}-{i}", 0, [1, 2, 3], 1, 1, isr))
    updated = time.perf_counter() - start
    return {"add_topic": ops / created, "update_partition": ops / updated}


def bench_stores(etcd: EtcdCluster, work: Path, ops: int, runs: int) -> dict[str, dict[str, float]]:
    client = etcd.client()
    election = Election(client, prefix="/bench-stores/sc", candidate={"node": "bench"}, ttl_s=10)
    stop = threading.Event()
    election.campaign(stop)
    keep = threading.Thread(target=_keep_alive, args=(election, stop), daemon=True)
    keep.start()
    results: dict[str, list[dict[str, float]]] = {"sqlite": [], "etcd": []}
    try:
        for run in range(runs):
            sqlite = MetadataStore(work / f"stores-{run}" / "metadata.sqlite")
            try:
                results["sqlite"].append(store_ops(sqlite, ops, f"s{run}"))
            finally:
                sqlite.close()
            on_etcd = EtcdMetadataStore(client, prefix=f"/bench-stores/meta-{run}",
                                        fence=election.fence)
            results["etcd"].append(store_ops(on_etcd, ops, f"e{run}"))
            for backend in ("sqlite", "etcd"):
                r = results[backend][-1]
                print(f"  run {run + 1} {backend:6}: add_topic {r['add_topic']:8,.0f}/s  "
                      f"update_partition {r['update_partition']:8,.0f}/s", flush=True)
    finally:
        stop.set()
        election.resign()
        client.delete_prefix("/bench-stores/")
    return {backend: {op: statistics.median(r[op] for r in rows) for op in rows[0]}
            for backend, rows in results.items()}


def _keep_alive(election: Election, stop: threading.Event) -> None:
    while not stop.wait(2):
        election.keepalive()


async def creates_per_second(cluster: LocalCluster, topics: int, tag: str) -> float:
    async with Admin(cluster.sc_addr) as admin:
        await admin.create_topic(f"{tag}-warm", partitions=1, replication=1)
        start = time.perf_counter()
        for i in range(topics):
            await admin.create_topic(f"{tag}-{i}", partitions=1, replication=1)
        return topics / (time.perf_counter() - start)


async def bench_creates(etcd: EtcdCluster, work: Path, topics: int, runs: int
                        ) -> dict[str, float]:
    rates: dict[str, list[float]] = {"sqlite": [], "etcd": []}
    for run in range(runs):
        for backend in ("sqlite", "etcd"):
            cluster = (LocalCluster(work / f"create-sqlite-{run}", spus=1) if backend == "sqlite"
                       else HaCluster(work / f"create-etcd-{run}", etcd=etcd.endpoints,
                                      prefix=f"/bench-create-{run}", scs=2, spus=1, ttl_s=TTL_S))
            await cluster.start()
            try:
                rate = await creates_per_second(cluster, topics, f"{backend}{run}")
            finally:
                await cluster.stop()
            rates[backend].append(rate)
            print(f"  run {run + 1} {backend:6}: {rate:8,.1f} topic creates/s", flush=True)
    return {backend: statistics.median(values) for backend, values in rates.items()}


async def until_created(sc_addr: str, name: str, timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while True:
            try:
                async with Admin(sc_addr) as admin:
                    await admin.create_topic(name, partitions=1, replication=3)
            except (HeadwaterError, OSError):
                await asyncio.sleep(0.02)
            else:
                return


async def bench_failover(etcd: EtcdCluster, work: Path, kills: int) -> dict[str, list[float]]:
    cluster = HaCluster(work / "failover", etcd=etcd.endpoints, prefix="/bench-failover",
                        scs=2, spus=3, ttl_s=TTL_S)
    await cluster.start()
    active_s: list[float] = []
    write_s: list[float] = []
    try:
        async with Admin(cluster.sc_addr) as admin:
            await admin.create_topic("before", partitions=3, replication=3)
            await admin.wait_ready("before")
        for kill in range(kills):
            first = await cluster.wait_active()
            killed_at = time.monotonic()
            await cluster.kill_sc_number(first)
            await cluster.wait_active(timeout=30, other_than=first)
            active_s.append(time.monotonic() - killed_at)
            await until_created(cluster.sc_addr, f"after-{kill}")
            write_s.append(time.monotonic() - killed_at)
            print(f"  kill {kill + 1}: standby active after {active_s[-1]:.2f} s, "
                  f"first topic created after {write_s[-1]:.2f} s", flush=True)
            await cluster.start_sc_number(first)
            # The restarted SC is a standby with its lease campaign running again.
            await asyncio.sleep(1)
    finally:
        await cluster.stop()
    return {"active": active_s, "write": write_s}


async def main(args: argparse.Namespace) -> None:
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory(prefix="headwater-sc-ha-") as tmp:
        work = Path(tmp)
        etcd = EtcdCluster(work / "etcd")
        etcd.start()
        try:
            print(f"store operations ({args.ops} of each, sequential, {args.runs} runs):")
            stores = bench_stores(etcd, work, args.ops, args.runs)
            print(f"topic creates through the SC ({args.topics} topics, {args.runs} runs):")
            creates = await bench_creates(etcd, work, args.topics, args.runs)
            print(f"SC failover (SIGKILL the active SC, {args.kills} kills, TTL {TTL_S} s):")
            failover = await bench_failover(etcd, work, args.kills)
        finally:
            etcd.close()
    print()
    print(f"{'operation':<24}{'SQLite':>12}{'etcd':>12}{'etcd/SQLite':>14}")
    for op in ("add_topic", "update_partition"):
        s, e = stores["sqlite"][op], stores["etcd"][op]
        print(f"{op + ' /s':<24}{s:>12,.0f}{e:>12,.0f}{e / s:>14.2f}")
    s, e = creates["sqlite"], creates["etcd"]
    print(f"{'topic create (SC) /s':<24}{s:>12,.1f}{e:>12,.1f}{e / s:>14.2f}")
    for label, values in (("standby active", failover["active"]),
                          ("first topic created", failover["write"])):
        print(f"failover, {label}: median {statistics.median(values):.2f} s, "
              f"min {min(values):.2f} s, max {max(values):.2f} s ({len(values)} kills)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", type=int, default=300, help="store writes of each kind per run")
    ap.add_argument("--topics", type=int, default=100, help="topic creates per run")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--kills", type=int, default=10, help="SC failovers measured")
    asyncio.run(main(ap.parse_args()))

"""Replication benchmark: RF=3 acks=all vs RF=1 acks=leader, failover, catch-up.

    .venv/bin/python bench/replication_bench.py [--records 300000] [--runs 3]
                                                [--kills 5] [--pauses 3]
                                                [--backlog-mib 256] [--full]

A real SC and three SPUs (separate processes, group commit) on 127.0.0.1.

* throughput: one producer, 100-byte records, to an RF=1 topic with acks=leader and
  to an RF=3 topic (min ISR 2) with acks=all, alternating, medians of ``--runs``;
* failover: a producer writes one record at a time with acks=all; the leader is
  SIGKILLed; the time from the kill to the first record acknowledged afterwards
  (by the new leader), median of ``--kills``; the killed SPU is restarted and the
  ISR allowed to fill again before the next kill. A killed process's sockets are
  closed by the kernel, so the SC notices at once; a host that vanishes without
  closing them is noticed after the heartbeat timeout (2 s) instead, which
  ``--pauses`` measures by SIGSTOPping the leader (SIGCONT once a write went on);
* catch-up: a follower is stopped, ``--backlog-mib`` of 8 KB records is written
  (1 GiB with ``--full``), the follower started; records/s from the start of its
  process until its log end equals the leader's (start-up included: it fetches
  from its saved assignment before it has registered with the SC).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge import bench
from edge.bench import machine
from edge.client import Acks, Admin, Producer
from edge.net.connection import ClientConnection
from edge.protocol.errors import HeadwaterError
from edge.protocol.messages import ApiKey
from edge.testing import LocalCluster


async def partition(cluster: LocalCluster, topic: str) -> dict[str, Any]:
    async with Admin(cluster.sc_addr) as admin:
        return (await admin.list_partitions(topic))[0]


async def wait_isr(cluster: LocalCluster, topic: str, size: int, timeout: float = 60) -> None:
    async with asyncio.timeout(timeout):
        while len((await partition(cluster, topic))["isr"]) < size:
            await asyncio.sleep(0.1)


async def throughput(cluster: LocalCluster, records: int, runs: int) -> dict[str, float]:
    async with Admin(cluster.sc_addr) as admin:
        await admin.create_topic("rf1", replication=1)
        await admin.create_topic("rf3", replication=3, config={"min_insync_replicas": 2})
        await admin.wait_ready("rf1")
        await admin.wait_ready("rf3")
    await wait_isr(cluster, "rf3", 3)
    rf1, rf3 = [], []
    for run in range(runs):
        a = await bench.produce(cluster.sc_addr, "rf1", records=records)
        b = await bench.produce(cluster.sc_addr, "rf3", records=records, acks=Acks.ALL)
        rf1.append(a.records_per_s)
        rf3.append(b.records_per_s)
        print(f"  run {run + 1}: RF=1 acks=leader {a.records_per_s:,.0f}/s, "
              f"RF=3 acks=all {b.records_per_s:,.0f}/s", file=sys.stderr)
    return {"rf1": statistics.median(rf1), "rf3": statistics.median(rf3)}


async def failover(cluster: LocalCluster, kills: int, sig: int = signal.SIGKILL
                   ) -> list[float]:
    """Seconds from ``sig`` to the leader until the next write is acknowledged.

    SIGKILL: the kernel closes the process's sockets, the SC elects at once.
    SIGSTOP: the leader hangs with its sockets open, as a host that lost power
    would look; the SC waits for the heartbeat timeout (2 s).
    """
    topic = f"fo-{signal.Signals(sig).name.lower()}"
    async with Admin(cluster.sc_addr) as admin:
        await admin.create_topic(topic, replication=3, config={"min_insync_replicas": 2})
        await admin.wait_ready(topic)
    await wait_isr(cluster, topic, 3)
    times = []
    # Default client settings (the goal is stated for them), one record at a time.
    async with Producer(cluster.sc_addr, acks=Acks.ALL, linger_ms=0) as p:
        for k in range(kills):
            await (await p.send(topic, b"warm"))
            leader = (await partition(cluster, topic))["leader"]
            killed_at = time.monotonic()
            cluster.spu_procs[leader].send_signal(sig)
            while True:
                try:
                    await (await p.send(topic, b"after-kill"))
                    break
                except HeadwaterError:
                    continue
            times.append(time.monotonic() - killed_at)
            print(f"  {signal.Signals(sig).name} {k + 1}: SPU {leader}, first ack after "
                  f"{times[-1]:.2f}s", file=sys.stderr)
            if sig == signal.SIGSTOP:
                cluster.spu_procs[leader].send_signal(signal.SIGCONT)
            else:
                await asyncio.to_thread(cluster.spu_procs.pop(leader).wait)
                await cluster.start_spu(leader)
            await wait_isr(cluster, topic, 3)
    return times


async def catch_up(cluster: LocalCluster, backlog_mib: int) -> dict[str, float]:
    async with Admin(cluster.sc_addr) as admin:
        await admin.create_topic("cu", replication=3, config={"segment_bytes": 256 * 2**20})
        await admin.wait_ready("cu")
    await wait_isr(cluster, "cu", 3)
    row = await partition(cluster, "cu")
    follower = next(r for r in row["replicas"] if r != row["leader"])
    await cluster.kill_spu(follower)
    value = os.urandom(8000)
    count = backlog_mib * 2**20 // len(value)
    async with Producer(cluster.sc_addr, batch_bytes=512 * 1024, linger_ms=20) as p:
        for _ in range(count):
            await p.send("cu", value)
    end = count  # the topic holds exactly the backlog
    start = time.monotonic()
    await cluster.start_spu(follower)
    online = time.monotonic()
    async with asyncio.timeout(600):
        # Asked of the follower itself: the SC's view lags by a heartbeat.
        async with ClientConnection(cluster.spu_addr(follower)) as conn:
            while True:
                meta, _ = await conn.request(ApiKey.PARTITION_STATUS)
                leo = next((r["leo"] for r in meta["partitions"] if r["topic"] == "cu"), -1)
                if leo >= end:
                    break
                await asyncio.sleep(0.02)
    done = time.monotonic()
    # From the start of the process: the follower resumes fetching from its saved
    # assignment before it has even registered with the SC.
    secs = done - start
    return {"records": count, "mib": backlog_mib, "seconds": secs,
            "registered_after_s": online - start,
            "records_per_s": count / secs, "mib_per_s": backlog_mib / secs}




async def main(args: argparse.Namespace) -> None:
    print(f"machine: {machine()}; SC, 3 SPUs and this client share it", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="hw-repl-") as d:
        async with LocalCluster(Path(d), spus=3) as cluster:
            tp = await throughput(cluster, args.records, args.runs)
            fo = await failover(cluster, args.kills)
            hang = await failover(cluster, args.pauses, signal.SIGSTOP) if args.pauses else []
            cu = await catch_up(cluster, args.backlog_mib)
    print(f"\nRF=1 acks=leader        {tp['rf1']:>12,.0f} records/s")
    print(f"RF=3 acks=all           {tp['rf3']:>12,.0f} records/s   "
          f"{tp['rf3'] / tp['rf1']:.0%} of RF=1 (goal >= 40 %)")
    print(f"failover, kill -> ack   median {statistics.median(fo):.2f}s  "
          f"(runs {', '.join(f'{t:.2f}' for t in fo)}; goal <= 3 s)")
    if hang:
        print(f"leader hang (SIGSTOP)   median {statistics.median(hang):.2f}s  "
              f"(runs {', '.join(f'{t:.2f}' for t in hang)})")
    print(f"follower catch-up       {cu['records_per_s']:,.0f} records/s = "
          f"{cu['mib_per_s']:.0f} MiB/s ({cu['mib']} MiB backlog of 8 KB records in "
          f"{cu['seconds']:.1f}s from process start; registered after "
          f"{cu['registered_after_s']:.1f}s)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=300_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--pauses", type=int, default=3, help="SIGSTOPped leaders (0: none)")
    ap.add_argument("--backlog-mib", type=int, default=256)
    ap.add_argument("--full", action="store_true", help="a 1 GiB catch-up backlog")
    parsed = ap.parse_args()
    if parsed.full:
        parsed.backlog_mib = 1024
    asyncio.run(main(parsed))

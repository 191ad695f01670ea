"""Single-node benchmark of Headwater, with NATS JetStream measured in the same run.

    .venv/bin/python bench/core_bench.py [--records 1000000] [--runs 3] [--no-nats]

Starts a real SC and SPU (separate processes, group commit) on 127.0.0.1 and
measures, as medians over ``--runs``:

* one producer, 100-byte records, acks=leader: records/s
* one consumer reading that backlog: records/s
* end-to-end latency at 1,000 records/s (send → consumer), p50/p99
* SPU resident memory idle and the peak under the produce load
* restart of an SPU holding a 1 GiB log: SIGKILL, start, time until a fetch answers

and, against ``nats-server -js`` (file storage) with nats-py: publish with acks
and pull-fetch of the same number of 100-byte messages. Prints a table and
writes JSON to ``--json`` if given.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge import bench
from edge.bench import machine
from edge.client import Admin, Producer
from edge.net.connection import ClientConnection
from edge.protocol.messages import ApiKey
from edge.testing import LocalCluster, free_port


class PeakRss:
    """Samples a process's RSS every 20 ms in a thread; keeps the peak."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.02)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def headwater(records: int, runs: int, restart_gib: float) -> dict[str, Any]:
    out: dict[str, list[float]] = {"produce": [], "consume": [], "e2e_p50": [], "e2e_p99": [],
                                   "rss_idle_mb": [], "rss_load_mb": [], "restart_s": []}
    for run in range(runs):
        with tempfile.TemporaryDirectory(prefix="hw-bench-") as d:
            async with LocalCluster(Path(d)) as cluster:
                spu_pid = cluster.spu_procs[1].pid
                topic = f"bench{run}"
                await bench.ensure_topic(cluster.sc_addr, topic)
                await asyncio.sleep(1.0)
                out["rss_idle_mb"].append(psutil.Process(spu_pid).memory_info().rss / 2**20)
                with PeakRss(spu_pid) as peak:
                    p = await bench.produce(cluster.sc_addr, topic, records=records)
                out["rss_load_mb"].append(peak.peak / 2**20)
                out["produce"].append(p.records_per_s)
                c = await bench.consume(cluster.sc_addr, topic, records=records)
                out["consume"].append(c.records_per_s)
                lat_topic = f"latency{run}"
                await bench.ensure_topic(cluster.sc_addr, lat_topic)
                e = await bench.end_to_end(cluster.sc_addr, lat_topic, rate=1000, seconds=10)
                out["e2e_p50"].append(e.p50_ms or 0.0)
                out["e2e_p99"].append(e.p99_ms or 0.0)
                if restart_gib > 0 and run == 0:
                    out["restart_s"].append(await restart_time(cluster, restart_gib))
                print(f"  run {run + 1}: produce {p.records_per_s:,.0f}/s  consume "
                      f"{c.records_per_s:,.0f}/s  e2e p99 {e.p99_ms:.2f} ms", file=sys.stderr)
    return {k: statistics.median(v) for k, v in out.items() if v}


async def restart_time(cluster: LocalCluster, gib: float) -> float:
    """Fill a topic with ``gib`` GiB, SIGKILL the SPU, time start → first fetch answered."""
    async with Admin(cluster.sc_addr) as admin:
        await admin.create_topic("big", config={"segment_bytes": 256 * 2**20,
                                                "retention_ms": None})
        await admin.wait_ready("big")
    value = os.urandom(8000)
    total = int(gib * 2**30 / len(value))
    async with Producer(cluster.sc_addr, batch_bytes=512 * 1024, linger_ms=20) as p:
        for i in range(total):
            await p.send("big", value)
            if i % 20000 == 0:
                print(f"  filling 1 GiB log: {i * len(value) / 2**30:.2f} GiB",
                      file=sys.stderr)
    await cluster.kill_spu()
    start = time.perf_counter()
    await cluster.start_spu()
    async with ClientConnection(cluster.spu_addr()) as conn:
        await conn.request(ApiKey.FETCH, topic="big", partition=0, offset=total - 1)
    return time.perf_counter() - start


async def nats(records: int, runs: int) -> dict[str, Any]:
    import nats as nats_client
    from nats.js.api import AckPolicy, ConsumerConfig, StorageType

    server = shutil.which("nats-server")
    if server is None:
        return {"error": "nats-server not installed (apt-get install nats-server)"}
    pubs, fetches = [], []
    payload = os.urandom(100)
    for run in range(runs):
        with tempfile.TemporaryDirectory(prefix="nats-bench-") as d:
            port = free_port()
            proc = subprocess.Popen([server, "-js", "-a", "127.0.0.1", "-p", str(port),
                                     "-sd", d], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            try:
                nc = None
                for _ in range(100):
                    try:
                        nc = await nats_client.connect(f"nats://127.0.0.1:{port}",
                                                       error_cb=_quiet,
                                                       allow_reconnect=False)
                        break
                    except Exception:
                        await asyncio.sleep(0.05)
                assert nc is not None
                js = nc.jetstream()
                await js.add_stream(name=f"B{run}", subjects=[f"b{run}"],
                                    storage=StorageType.FILE)
                start = time.perf_counter()
                window = 1000
                for i in range(0, records, window):
                    await asyncio.gather(*(js.publish(f"b{run}", payload)
                                           for _ in range(min(window, records - i))))
                pubs.append(records / (time.perf_counter() - start))
                sub = await js.pull_subscribe(f"b{run}", durable="bench",
                                              config=ConsumerConfig(ack_policy=AckPolicy.NONE))
                got = 0
                start = time.perf_counter()
                while got < records:
                    msgs = await sub.fetch(1000, timeout=5)
                    got += len(msgs)
                fetches.append(got / (time.perf_counter() - start))
                await nc.close()
            finally:
                proc.terminate()
                proc.wait()
        print(f"  nats run {run + 1}: publish {pubs[-1]:,.0f}/s  fetch {fetches[-1]:,.0f}/s",
              file=sys.stderr)
    return {"publish": statistics.median(pubs), "fetch": statistics.median(fetches)}


async def _quiet(_exc: Exception) -> None:
    """nats-py prints a traceback per failed connect while the server starts."""




def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--restart-gib", type=float, default=1.0)
    ap.add_argument("--no-nats", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    print(f"machine: {machine()}", file=sys.stderr)
    hw = asyncio.run(headwater(args.records, args.runs, args.restart_gib))
    nt = {} if args.no_nats else asyncio.run(nats(args.records, args.runs))
    rows = [
        ("produce, 1 producer, 100 B, acks=leader (records/s)", hw["produce"],
         nt.get("publish"), ">= 300,000"),
        ("consume backlog, 1 consumer (records/s)", hw["consume"], nt.get("fetch"),
         ">= 1,000,000"),
        ("end-to-end latency p50 at 1,000/s (ms)", hw["e2e_p50"], None, ""),
        ("end-to-end latency p99 at 1,000/s (ms)", hw["e2e_p99"], None, "<= 5"),
        ("SPU RSS idle (MiB)", hw["rss_idle_mb"], None, "<= 40 MB"),
        ("SPU RSS peak under produce load (MiB)", hw["rss_load_mb"], None, "<= 80 MB"),
        (f"restart with {args.restart_gib:g} GiB log until a fetch answers (s)",
         hw.get("restart_s"), None, "<= 1"),
    ]
    print(f"\n{'measure':<52} {'Headwater':>12} {'NATS JS':>10} {'ratio':>7}  target")
    for name, ours, theirs, goal in rows:
        o = "-" if ours is None else (f"{ours:,.0f}" if ours >= 100 else f"{ours:.2f}")
        t = "-" if theirs is None else f"{theirs:,.0f}"
        r = "-" if not theirs or ours is None else f"{ours / theirs:.1f}x"
        print(f"{name:<52} {o:>12} {t:>10} {r:>7}  {goal}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "headwater": hw, "nats": nt,
                                         "records": args.records, "runs": args.runs},
                                        indent=2))


if __name__ == "__main__":
    main()

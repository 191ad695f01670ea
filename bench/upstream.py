"""Upstream benchmark: what the uplink costs the edge and how fast it moves data.

    .venv/bin/python bench/upstream.py [--quick] [--backlog 1GiB] [--limit 8MiB]
                                       [--sites 1000] [--runs 3]
    .venv/bin/python bench/upstream.py --compare-in-flight 1,3 [--backlog 256MiB]

A real cloud (SC + SPU) and a real edge site (SC + SPU) as separate processes on
127.0.0.1, sharing this machine's cores (on a real site they would not).

* ingest: one producer, JSON telemetry (~110 B records), acks=leader, to an edge
  topic without upstream and to one with its uplink running, alternating,
  medians of ``--runs``;
* catch-up: with the cloud stopped, ``--backlog`` of telemetry waits at the edge;
  from the cloud's start until the cloud acknowledged all of it, in MiB/s of
  stored bytes; then again under ``--limit`` (bytes/s on the wire), measured as
  wire bytes per second in the steady part;
* compression: stored bytes / wire bytes of the catch-up;
* latency: 200 records/s produced at the edge, each timed to its arrival at a
  cloud consumer of its home partition (p50, p99);
* edge SPU RSS while the uplink runs;
* a cloud SPU holding ``--sites`` mirrored partitions (one per simulated site,
  each written once through MIRROR_APPEND): its RSS and open files.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge.bench import machine, percentile
from edge.cli.site_cmds import upstream_toml
from edge.client import Acks, Admin, Consumer, Offset, Producer
from edge.config import parse_size
from edge.net.connection import ClientConnection
from edge.protocol import batch as codec
from edge.protocol.messages import ApiKey
from edge.spu.config import SpuConfig
from edge.testing import LocalCluster

MIB = 1024 * 1024
_STAMP = struct.Struct(">q")


def telemetry(i: int, rng: random.Random = random.Random(1)) -> bytes:  # noqa: B008
    """One JSON reading with noisy values (a counter alone would compress far better)."""
    return json.dumps({"device": f"sensor-{rng.randrange(50):03d}", "seq": i,
                       "ts": 1_700_000_000_000 + i * 100 + rng.randrange(100),
                       "temperature_c": round(rng.uniform(15, 30), 2),
                       "humidity_pct": round(rng.uniform(30, 70), 1),
                       "battery_mv": rng.randrange(3300, 4200), "status": "ok"}).encode()


async def topic(edge: LocalCluster, name: str, upstream: bool) -> None:
    async with Admin(edge.sc_addr) as admin:
        await admin.create_topic(name, config={"upstream": upstream})
        await admin.wait_ready(name)


async def produce(sc: str, name: str, count: int, start: int = 0, *,
                  incompressible: bool = False) -> float:
    """Records/s of one producer sending ``count`` telemetry (or random) records."""
    values = [os.urandom(120) if incompressible else telemetry(i)
              for i in range(start, start + min(count, 50_000))]
    t0 = time.perf_counter()
    async with Producer(sc, acks=Acks.LEADER, batch_bytes=256 * 1024, linger_ms=5) as p:
        for i in range(count):
            await p.send(name, values[i % len(values)])
        await p.flush()
    return count / (time.perf_counter() - t0)


async def rows(edge: LocalCluster) -> dict[str, dict[str, Any]]:
    async with Admin(edge.sc_addr) as admin:
        return {r["topic"]: r for r in await admin.upstream_status()}


async def acked(edge: LocalCluster, name: str, records: int, timeout: float) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            row = (await rows(edge)).get(name, {})
            if row.get("cloud_acked") == records:
                return row
            await asyncio.sleep(0.2)


async def ingest(edge: LocalCluster, records: int, runs: int) -> dict[str, float]:
    await topic(edge, "plain", False)
    await topic(edge, "mirrored", True)
    without, with_uplink = [], []
    for run in range(runs):
        without.append(await produce(edge.sc_addr, "plain", records, run * records))
        with_uplink.append(await produce(edge.sc_addr, "mirrored", records, run * records))
    await acked(edge, "mirrored", records * runs, 300)
    return {"without": statistics.median(without), "with": statistics.median(with_uplink)}


async def catch_up(cloud: LocalCluster, edge: LocalCluster, name: str, backlog: int, *,
                   incompressible: bool = False) -> dict[str, float]:
    """The backlog waits at the edge while the cloud is down, then moves.

    ``seconds`` runs from the first byte the cloud acknowledged (the cloud's own
    start-up left out; ``total_s`` includes it) to the last."""
    await cloud.stop()
    await topic(edge, name, True)
    per = 130  # a telemetry record with its framing inside a batch, roughly
    await produce(edge.sc_addr, name, backlog // per, incompressible=incompressible)
    stored = (await rows(edge))[name]["edge_leo"]
    t0 = time.perf_counter()
    await cloud.start()
    samples: list[tuple[float, int, int]] = []
    async with asyncio.timeout(3600):
        while True:
            row = (await rows(edge))[name]
            samples.append((time.perf_counter(), int(row["wire_bytes"]), int(row["raw_bytes"])))
            if row["cloud_acked"] == stored:
                break
            await asyncio.sleep(0.2)
    end = time.perf_counter()
    first = next(t for t, _, raw in samples if raw > 0)
    seconds = max(end - first, 0.2)
    return {"records": stored, "seconds": seconds, "total_s": end - t0,
            "raw": row["raw_bytes"], "wire": row["wire_bytes"],
            "mib_s": row["raw_bytes"] / seconds / MIB,
            "wire_rate": steady_rate([(t, w) for t, w, _ in samples])}


def steady_rate(samples: list[tuple[float, int]]) -> float:
    """Wire bytes/s over the middle of the run (start-up and the tail left out)."""
    moving = [s for s in samples if s[1] > 0]
    if len(moving) < 6:
        return 0.0
    a, b = moving[len(moving) // 5], moving[-2]
    return (b[1] - a[1]) / (b[0] - a[0]) if b[0] > a[0] else 0.0


async def latency(cloud: LocalCluster, edge: LocalCluster, seconds: float, rate: int = 200
                  ) -> tuple[float | None, float | None]:
    await topic(edge, "live", True)
    async with Producer(edge.sc_addr, acks=Acks.LEADER, linger_ms=0) as p:
        await (await p.send("live", _STAMP.pack(time.time_ns())))
    await acked(edge, "live", 1, 60)
    async with Admin(cloud.sc_addr) as admin:
        info = await admin.describe_site("bench")
    home = next(m["cloud_partition"] for m in info["mirrors"] if m["topic"] == "live")
    total = int(rate * seconds)
    out: list[float] = []
    async with Consumer(cloud.sc_addr, "live", partition=home, offset=Offset.end()) as c:

        async def read() -> None:
            async for r in c:
                out.append((time.time_ns() - _STAMP.unpack_from(r.value)[0]) / 1e6)
                if len(out) >= total:
                    return

        reader = asyncio.create_task(read())
        await asyncio.sleep(0.5)
        async with Producer(edge.sc_addr, acks=Acks.LEADER, linger_ms=0) as p:
            t0 = time.perf_counter()
            for i in range(total):
                delay = t0 + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                await p.send("live", _STAMP.pack(time.time_ns()) + telemetry(i))
            await p.flush()
        async with asyncio.timeout(60):
            await reader
    return percentile(out, 0.5), percentile(out, 0.99)


async def many_sites(tmp: Path, sites: int) -> dict[str, float]:
    """A cloud SPU with one mirrored partition per simulated site."""
    async with LocalCluster(tmp / "many") as cloud:
        proc = psutil.Process(cloud.spu_procs[1].pid)
        before = proc.memory_info().rss
        batch = bytearray(codec.encode_batch([[0, None, telemetry(i)] for i in range(50)],
                                             first_timestamp=1_700_000_000_000))
        t0 = time.perf_counter()
        async with Admin(cloud.sc_addr) as admin, ClientConnection(cloud.sc_addr) as sc:
            for i in range(sites):
                if i and i % 100 == 0:
                    print(f"  {i} sites, cloud SPU RSS {proc.memory_info().rss / MIB:.1f} MiB, "
                          f"open files {proc.num_fds()}", flush=True)
                site = f"site-{i:04d}"
                token = str((await admin.register_site(site))["token"])
                meta, _ = await sc.request(ApiKey.MIRROR_RESOLVE, site=site, token=token,
                                           topic="readings", partition=0,
                                           source=f"bench-{i}/readings/1")
                await append_once(meta["leader"], {"topic": "readings",
                                                   "partition": meta["partition"],
                                                   "site": site, "token": token}, batch)
        seconds = time.perf_counter() - t0
        await asyncio.sleep(2)
        busy = proc.num_fds()
        # Idle partitions close their files after one to two idle_close_s rounds.
        print(f"  waiting {2 * SpuConfig.idle_close_s:.0f} s for idle partitions to close "
              "their files", flush=True)
        await asyncio.sleep(2 * SpuConfig.idle_close_s + 2)
        return {"sites": sites, "seconds": seconds, "rss_before": before / MIB,
                "rss": proc.memory_info().rss / MIB, "fds": busy, "fds_idle": proc.num_fds()}


async def append_once(spu: str, owner: dict[str, Any], batch: bytes) -> None:
    error: Exception | None = None
    async with ClientConnection(spu) as conn:
        try:
            async with asyncio.timeout(60):
                while True:  # the assignment reaches the SPU a moment after the resolve
                    try:
                        await conn.request(ApiKey.MIRROR_APPEND, batch, **owner)
                    except Exception as exc:  # retried until the partition is there
                        error = exc
                        await asyncio.sleep(0.05)
                    else:
                        return
        except TimeoutError:
            raise RuntimeError(f"{owner['site']}: no append within 60 s: {error}") from None




async def restart_edge_spu(edge: LocalCluster, upstream: Path) -> None:
    await edge.stop_spu(1)
    edge.extra_spu_args = ["--upstream", str(upstream)]
    await edge.start_spu(1)


async def cloud_and_site(tmp: Path) -> tuple[LocalCluster, str]:
    """A running cloud with the site ``bench`` registered, and the site's [upstream]."""
    cloud = LocalCluster(tmp / "cloud")
    await cloud.start()
    async with Admin(cloud.sc_addr) as admin:
        token = str((await admin.register_site("bench"))["token"])
    return cloud, upstream_toml(cloud.sc_addr, "bench", token) + "probe_interval_s = 0.5\n"


async def compare_in_flight(depths: list[int], backlog: int, runs: int) -> None:
    """Catch-up of the same backlog with each ``max_in_flight``, interleaved
    (A B A B ...) in one run, medians: what pipelining MIRROR_APPEND buys."""
    rates: dict[int, list[float]] = {d: [] for d in depths}
    with tempfile.TemporaryDirectory(prefix="hw-upstream-") as d:
        tmp = Path(d)
        cloud, base = await cloud_and_site(tmp)
        configs = {}
        for depth in depths:
            configs[depth] = tmp / f"in-flight-{depth}.toml"
            configs[depth].write_text(base + f"max_in_flight = {depth}\n")
        edge = LocalCluster(tmp / "edge", extra_spu_args=["--upstream", str(configs[depths[0]])])
        await edge.start()
        try:
            for run in range(runs):
                for depth in depths:
                    await restart_edge_spu(edge, configs[depth])
                    c = await catch_up(cloud, edge, f"backlog-{run}-{depth}", backlog)
                    rates[depth].append(c["mib_s"])
                    print(f"run {run + 1}, max_in_flight {depth}: {c['raw'] / MIB:,.0f} MiB in "
                          f"{c['seconds']:.1f} s, {c['mib_s']:.1f} MiB/s", flush=True)
        finally:
            await edge.stop()
            await cloud.stop()
    base = statistics.median(rates[depths[0]])
    for depth in depths:
        m = statistics.median(rates[depth])
        print(f"max_in_flight {depth}: median {m:.1f} MiB/s "
              f"[{min(rates[depth]):.1f}-{max(rates[depth]):.1f}], x{m / base:.2f}")


async def main(args: argparse.Namespace) -> None:
    print(f"machine: {machine()}")
    if args.compare_in_flight:
        depths = [int(x) for x in args.compare_in_flight.split(",")]
        await compare_in_flight(depths, parse_size(args.backlog), args.runs)
        return
    if args.only_sites:
        with tempfile.TemporaryDirectory(prefix="hw-upstream-") as d:
            await report_sites(Path(d), args.sites)
        return
    backlog = parse_size(args.backlog)
    limit = parse_size(args.limit)
    with tempfile.TemporaryDirectory(prefix="hw-upstream-") as d:
        tmp = Path(d)
        cloud, base = await cloud_and_site(tmp)
        unlimited = tmp / "bench.toml"
        unlimited.write_text(base)
        limited = tmp / "limited.toml"
        limited.write_text(unlimited.read_text() + f"max_bytes_per_s = {limit}\n")
        edge = LocalCluster(tmp / "edge", extra_spu_args=["--upstream", str(unlimited)])
        await edge.start()
        try:
            r = await ingest(edge, args.records, args.runs)
            print(f"ingest: without uplink {r['without']:,.0f} rec/s, with uplink "
                  f"{r['with']:,.0f} rec/s ({r['with'] / r['without']:.0%})")
            rss = psutil.Process(edge.spu_procs[1].pid).memory_info().rss / MIB
            print(f"edge SPU RSS with the uplink: {rss:.1f} MiB")
            c = await catch_up(cloud, edge, "backlog", backlog)
            print(f"catch-up of {c['raw'] / MIB:,.0f} MiB stored ({c['records']:,} records): "
                  f"{c['seconds']:.1f} s, {c['mib_s']:.1f} MiB/s ({c['total_s']:.1f} s with "
                  f"the cloud's start); wire {c['wire'] / MIB:.1f} MiB, compression "
                  f"{c['raw'] / max(c['wire'], 1):.1f}x")
            await restart_edge_spu(edge, limited)
            # Random records: zstd cannot shrink them, so the limit is what binds.
            c = await catch_up(cloud, edge, "limited", min(backlog, limit * 15),
                               incompressible=True)
            print(f"catch-up under a limit of {limit:,} B/s: steady wire rate "
                  f"{c['wire_rate']:,.0f} B/s ({c['wire_rate'] / limit - 1:+.1%}), "
                  f"{c['mib_s']:.1f} MiB/s stored")
            await restart_edge_spu(edge, unlimited)
            p50, p99 = await latency(cloud, edge, args.latency_s)
            print(f"edge -> cloud latency at 200 rec/s: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
            rss = psutil.Process(edge.spu_procs[1].pid).memory_info().rss / MIB
            print(f"edge SPU RSS with the uplink (after catch-up): {rss:.1f} MiB")
        finally:
            await edge.stop()
            await cloud.stop()
        await report_sites(tmp, args.sites)


async def report_sites(tmp: Path, sites: int) -> None:
    m = await many_sites(tmp, sites)
    print(f"cloud SPU with {m['sites']} mirrored partitions (one per site): RSS "
          f"{m['rss']:.1f} MiB (empty: {m['rss_before']:.1f}), open files {m['fds']} "
          f"after the last write, {m['fds_idle']} once idle; set up in {m['seconds']:.0f} s")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a short run (64 MiB, 50 sites)")
    ap.add_argument("--backlog", default="1GiB", help="catch-up backlog (stored bytes)")
    ap.add_argument("--limit", default="8MiB", help="bandwidth limit for the limited catch-up")
    ap.add_argument("--sites", type=int, default=1000)
    ap.add_argument("--only-sites", action="store_true", help="only the many-sites part")
    ap.add_argument("--compare-in-flight", default="",
                    help="only catch-up, once per max_in_flight in this list (e.g. 1,3)")
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--latency-s", type=float, default=20.0)
    ns = ap.parse_args()
    if ns.quick:
        ns.backlog, ns.sites, ns.records, ns.runs, ns.latency_s = "64MiB", 50, 50_000, 1, 5.0
        ns.limit = "2MiB"
    asyncio.run(main(ns))

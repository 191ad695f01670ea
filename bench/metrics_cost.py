"""What Prometheus metrics and access control cost a running SPU: produce
throughput with both off, with metrics on, and with metrics and ACLs on,
interleaved in one run, and the SPU's idle RSS in each case.

    .venv/bin/python bench/metrics_cost.py [--records 300000] [--runs 3]

Each run starts a fresh SC + SPU (separate processes, group commit). With metrics,
a scraper reads ``/metrics`` every second during the run, as Prometheus would.
With ACLs, the SC runs with ``authorization = true`` (a restart of the cluster
made with it off, where the topic, a token and its ACL were created): the
producer logs in with the token, and the SC and SPU check every request against
the rules. One producer, 100-byte records, acks=leader. Medians of ``--runs``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import urllib.request
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge import bench
from edge.bench import machine
from edge.client import Admin
from edge.testing import LocalCluster, free_port

MIB = 1024 * 1024


async def scrape(addr: str, stop: asyncio.Event) -> int:
    count = 0
    while not stop.is_set():
        await asyncio.to_thread(lambda: urllib.request.urlopen(
            f"http://{addr}/metrics", timeout=5).read())
        count += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
    return count


VARIANTS = ("off", "metrics", "metrics+acl")


async def one(tmp: Path, records: int, variant: str) -> tuple[float, float]:
    addr = f"127.0.0.1:{free_port()}"
    settings: dict[str, str | int | float | bool] = (
        {} if variant == "off" else {"metrics_addr": addr})
    token = None
    sc: dict[str, str | int | float | bool] = {}
    if variant == "metrics+acl":
        async with LocalCluster(tmp) as c:
            await bench.ensure_topic(c.sc_addr, "bench")
            async with Admin(c.sc_addr) as admin:
                token = (await admin.create_token("bench")).token
                await admin.add_acl("bench", "produce", "topic:bench")
                # What the harness itself asks (is the SPU online?).
                await admin.add_acl("anonymous", "describe", "cluster")
        sc = {"authorization": True}
    async with LocalCluster(tmp, spu_settings=settings, sc_settings=sc) as c:
        if token is None:
            await bench.ensure_topic(c.sc_addr, "bench")
        else:
            await asyncio.sleep(1)  # the SPU registers and is given the rules
        stop = asyncio.Event()
        scraper = asyncio.create_task(scrape(addr, stop)) if variant != "off" else None
        result = await bench.produce(c.sc_addr, "bench", records=records, token=token)
        await asyncio.sleep(5)  # idle, still scraped
        rss = psutil.Process(c.spu_procs[1].pid).memory_info().rss / MIB
        stop.set()
        if scraper is not None:
            await scraper
    return result.records_per_s, rss


async def main(args: argparse.Namespace) -> None:
    print(f"machine: {machine()}")
    rates: dict[str, list[float]] = {v: [] for v in VARIANTS}
    rss: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="hw-metrics-") as d:
        for run in range(args.runs):
            for variant in VARIANTS:
                rate, mem = await one(Path(d) / f"{run}-{variant}", args.records, variant)
                rates[variant].append(rate)
                rss[variant].append(mem)
                print(f"run {run + 1}, {variant:11}: {rate:,.0f} rec/s, "
                      f"SPU RSS idle {mem:.1f} MiB", flush=True)
    off = statistics.median(rates["off"])
    for variant in VARIANTS:
        rate = statistics.median(rates[variant])
        print(f"{variant:11}  produce {rate:>9,.0f} rec/s ({rate / off - 1:+.1%})  "
              f"SPU RSS idle {statistics.median(rss[variant]):.1f} MiB")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=300_000)
    ap.add_argument("--runs", type=int, default=3)
    asyncio.run(main(ap.parse_args()))

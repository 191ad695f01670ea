"""What Prometheus metrics cost a running SPU: produce throughput with metrics on
and off, interleaved in one run, and the SPU's idle RSS with metrics on while
being scraped.

    .venv/bin/python bench/metrics_cost.py [--records 300000] [--runs 3]

Each run starts a fresh SC + SPU (separate processes, group commit) with or
without ``metrics_addr``; with metrics, a scraper reads ``/metrics`` every second
during the run, as Prometheus would. One producer, 100-byte records,
acks=leader. Medians of ``--runs``.
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


async def one(tmp: Path, records: int, metrics: bool) -> tuple[float, float]:
    addr = f"127.0.0.1:{free_port()}"
    settings: dict[str, str | int | float | bool] = {"metrics_addr": addr} if metrics else {}
    async with LocalCluster(tmp, spu_settings=settings) as c:
        await bench.ensure_topic(c.sc_addr, "bench")
        stop = asyncio.Event()
        scraper = asyncio.create_task(scrape(addr, stop)) if metrics else None
        result = await bench.produce(c.sc_addr, "bench", records=records)
        await asyncio.sleep(5)  # idle, still scraped
        rss = psutil.Process(c.spu_procs[1].pid).memory_info().rss / MIB
        stop.set()
        if scraper is not None:
            await scraper
    return result.records_per_s, rss


async def main(args: argparse.Namespace) -> None:
    print(f"machine: {machine()}")
    rates: dict[bool, list[float]] = {False: [], True: []}
    rss: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory(prefix="hw-metrics-") as d:
        for run in range(args.runs):
            for on in (False, True):
                rate, mem = await one(Path(d) / f"{run}-{on}", args.records, on)
                rates[on].append(rate)
                rss[on].append(mem)
                print(f"run {run + 1}, metrics {'on ' if on else 'off'}: {rate:,.0f} rec/s, "
                      f"SPU RSS idle {mem:.1f} MiB", flush=True)
    off, on = statistics.median(rates[False]), statistics.median(rates[True])
    print(f"produce: metrics off {off:,.0f} rec/s, on {on:,.0f} rec/s ({on / off - 1:+.1%})")
    print(f"SPU RSS idle: off {statistics.median(rss[False]):.1f} MiB, "
          f"on {statistics.median(rss[True]):.1f} MiB")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=300_000)
    ap.add_argument("--runs", type=int, default=3)
    asyncio.run(main(ap.parse_args()))

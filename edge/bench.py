"""Benchmarks against a running cluster (``headwater bench``, ``bench/``).

Throughput is measured over the whole run; latency per record from ``send`` to
acknowledgement (produce) or from ``send`` to delivery (end to end). Results are
medians and percentiles of what one client process achieved.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import operator
import os
import struct
import sys
import time
from collections.abc import Callable
from typing import NamedTuple

from edge.client import Acks, Admin, Consumer, Offset, Producer
from edge.protocol.errors import TopicExists

_STAMP = struct.Struct(">q")
_VALUE = operator.attrgetter("value")
Progress = Callable[[int], None]


class BenchResult(NamedTuple):
    records: int
    seconds: float
    records_per_s: float
    mb_per_s: float
    p50_ms: float | None
    p99_ms: float | None


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def ensure_topic(sc: str, topic: str, partitions: int = 1) -> None:
    async with Admin(sc) as admin:
        with contextlib.suppress(TopicExists):
            await admin.create_topic(topic, partitions=partitions)
        await admin.wait_ready(topic)


async def produce(sc: str, topic: str, *, records: int, size: int = 100,
                  acks: Acks = Acks.LEADER, batch_bytes: int = 64 * 1024,
                  linger_ms: float = 5.0, progress: Progress | None = None,
                  token: str | None = None) -> BenchResult:
    """Send ``records`` records of ``size`` random bytes as fast as one producer can."""
    payload = os.urandom(size)
    latencies: list[float] = []
    sample_every = max(records // 2000, 1)
    async with Producer(sc, acks=acks, batch_bytes=batch_bytes, linger_ms=linger_ms,
                        token=token) as p:
        start = time.perf_counter()
        for i in range(records):
            fut = await p.send(topic, payload)
            if i % sample_every == 0:
                fut.add_done_callback(functools.partial(_elapsed, latencies,
                                                        time.perf_counter()))
            if progress is not None and i % 10_000 == 0:
                progress(10_000 if i else 0)
        await p.flush()
        seconds = time.perf_counter() - start
    return _result(records, size, seconds, latencies)


async def consume(sc: str, topic: str, *, records: int,
                  progress: Progress | None = None) -> BenchResult:
    """Read ``records`` records from the beginning of partition 0 (a backlog)."""
    count = 0
    nbytes = 0
    start = time.perf_counter()
    async with Consumer(sc, topic, partition=0, offset=Offset.beginning()) as c:
        async for chunk in c.batches():
            # Touch every record (its value's length) without a Python-level loop:
            # the benchmark's own tally should not be what it measures.
            nbytes += sum(map(len, map(_VALUE, chunk.records)))
            count += len(chunk.records)
            if progress is not None:
                progress(len(chunk.records))
            if count >= records:
                break
    seconds = time.perf_counter() - start
    return BenchResult(count, seconds, count / seconds, nbytes / seconds / 1e6, None, None)


async def end_to_end(sc: str, topic: str, *, rate: int = 1000, seconds: float = 10.0,
                     size: int = 100) -> BenchResult:
    """Produce at ``rate`` records/s with no linger; time each record to its consumer."""
    latencies: list[float] = []
    total = int(rate * seconds)
    async with Consumer(sc, topic, partition=0, offset=Offset.end()) as c:

        async def read() -> None:
            async for r in c:
                latencies.append((time.time_ns() - _STAMP.unpack_from(r.value)[0]) / 1e6)
                if len(latencies) >= total:
                    return

        reader = asyncio.create_task(read())
        pad = b"x" * max(size - _STAMP.size, 0)
        async with Producer(sc, linger_ms=0) as p:
            start = time.perf_counter()
            for i in range(total):
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                await p.send(topic, _STAMP.pack(time.time_ns()) + pad)
            await p.flush()
            elapsed = time.perf_counter() - start
        async with asyncio.timeout(30):
            await reader
    return BenchResult(total, elapsed, total / elapsed, total * size / elapsed / 1e6,
                       percentile(latencies, 0.5), percentile(latencies, 0.99))


def _elapsed(out: list[float], sent: float, _fut: object) -> None:
    out.append(time.perf_counter() - sent)


def _result(records: int, size: int, seconds: float, latencies: list[float]) -> BenchResult:
    return BenchResult(records, seconds, records / seconds, records * size / seconds / 1e6,
                       _ms(percentile(latencies, 0.5)), _ms(percentile(latencies, 0.99)))


def _ms(value: float | None) -> float | None:
    return None if value is None else value * 1000


def machine() -> str:
    """One line naming the machine, for benchmark reports: cores, CPU, memory, Python."""
    import psutil

    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (f"{os.cpu_count()} cores ({cpu}), {psutil.virtual_memory().total / 2**30:.0f} GiB, "
            f"Python {sys.version.split()[0]}")

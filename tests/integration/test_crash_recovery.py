"""SIGKILL the SPU again and again while producing; nothing acknowledged is lost.

A manifest records every acknowledged record with its offset. After each
restart (and at the end) the log is read back and checked against it: no
acknowledged record lost, none duplicated, no offset that ever held one record
holding another, and the producer's order kept.
"""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

from edge.client import Admin, Consumer, Offset, Producer
from edge.protocol.errors import HeadwaterError
from edge.testing import LocalCluster

CYCLES = int(os.environ.get("HEADWATER_CRASH_CYCLES", "30"))


async def read_log(cluster: LocalCluster, topic: str) -> list[tuple[int, bytes]]:
    async with Consumer(cluster.sc_addr, topic, offset=Offset.beginning()) as c:
        return [(r.offset, r.value) for r in await c.fetch_until_end()]


def check(log: list[tuple[int, bytes]], acked: dict[bytes, int],
          seen: dict[int, bytes]) -> None:
    offsets = [o for o, _ in log]
    assert offsets == list(range(len(log))), "offsets must be dense and ordered"
    values = [v for _, v in log]
    assert len(set(values)) == len(values), "a record was written twice"
    numbers = [int(v) for v in values]
    assert numbers == sorted(numbers), "producer order not kept"
    at = dict(log)
    for value, offset in acked.items():
        assert at.get(offset) == value, f"acknowledged {value!r} at {offset} lost"
    for offset, value in seen.items():
        assert at.get(offset) == value, f"offset {offset} changed from {value!r}"
    seen.update(log)


async def test_sigkill_during_acked_produce_loses_nothing(tmp_path: Path) -> None:
    rng = random.Random(7)
    async with LocalCluster(tmp_path / "c") as cluster:
        async with Admin(cluster.sc_addr) as admin:
            await admin.create_topic("crash", config={"segment_bytes": 256 * 1024})
            await admin.wait_ready("crash")
        acked: dict[bytes, int] = {}
        seen: dict[int, bytes] = {}
        stop = asyncio.Event()

        async def produce() -> None:
            async with Producer(cluster.sc_addr, linger_ms=1, batch_bytes=4096,
                                delivery_timeout_s=60, request_timeout_s=5) as p:
                i = 0
                while not stop.is_set():
                    value = b"%09d" % i
                    fut = await p.send("crash", value)
                    fut.add_done_callback(
                        lambda f, v=value, fut=fut: None if f.exception() else
                        asyncio.ensure_future(_note(fut, v)))
                    i += 1
                    if i % 200 == 0:
                        await asyncio.sleep(0.002)
                await p.flush()

        async def _note(fut: object, value: bytes) -> None:
            meta = await fut  # type: ignore[misc]
            acked[value] = meta.offset

        producer = asyncio.create_task(produce())
        for cycle in range(CYCLES):
            await asyncio.sleep(rng.uniform(0.1, 0.4))
            await cluster.kill_spu()
            await asyncio.sleep(rng.uniform(0.0, 0.2))
            await cluster.start_spu()
            if cycle % 5 == 4:
                for _ in range(3):
                    try:
                        # Only what was acknowledged before the read began must be in it.
                        before = dict(acked)
                        check(await read_log(cluster, "crash"), before, seen)
                        break
                    except HeadwaterError:
                        await asyncio.sleep(0.2)
        stop.set()
        await asyncio.wait_for(producer, 120)
        await asyncio.sleep(0.1)
        final = await read_log(cluster, "crash")
        check(final, acked, seen)
        assert len(acked) > CYCLES * 100, f"only {len(acked)} records acknowledged"
        assert len(final) == len(acked)

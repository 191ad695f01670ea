"""acks=all while both followers of a min-ISR-2 partition are paused: every future
either succeeds or fails as DeliveryUnknown, never definitely for a stored record."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from faults import create_topic, rows, wait_full_isr

from edge.client import Acks, Consumer, Offset, Producer
from edge.protocol.errors import DeliveryUnknown
from edge.testing import LocalCluster


async def test_paused_followers_leave_no_false_failures(tmp_path: Path) -> None:
    async with LocalCluster(tmp_path / "c", spus=3) as cluster:
        await create_topic(cluster, "win")
        await wait_full_isr(cluster, "win")
        row = (await rows(cluster, "win"))[0]
        followers = [int(s) for s in row["replicas"] if int(s) != int(row["leader"])]
        futs = []
        async with Producer(cluster.sc_addr, acks=Acks.ALL, linger_ms=1,
                            delivery_timeout_s=20) as p:
            for i in range(200):
                if i == 40:
                    for s in followers:
                        cluster.signal_spu(s, signal.SIGSTOP)
                if i == 40 + 6000 // 5 // 10:
                    await asyncio.sleep(5)
                    for s in followers:
                        cluster.signal_spu(s, signal.SIGCONT)
                futs.append((b"%d" % i, await p.send("win", b"%d" % i)))
                await asyncio.sleep(0.005)
            results = await asyncio.gather(*(f for _, f in futs), return_exceptions=True)
        definite = {v for (v, _), r in zip(futs, results, strict=True)
                    if isinstance(r, BaseException) and not isinstance(r, DeliveryUnknown)}
        async with Consumer(cluster.sc_addr, "win", offset=Offset.beginning(),
                            stop_at_end=True) as c:
            stored = {r.value async for r in c}
        assert not definite & stored

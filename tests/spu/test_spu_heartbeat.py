"""The SPU's heartbeat cadence against an SC that answers slowly.

The SC declares an SPU offline after ``heartbeat_timeout_s`` (2 s) without a
heartbeat. An SC busy electing for hundreds of partitions answers late; if the
SPU waited ``heartbeat_interval_s`` after each answer, every slow answer would
stretch the period towards that timeout, and the demotions it causes make the SC
slower still. The link is driven here with a connection whose answers take a set
time (the SC side of the exchange is what is replaced; the loop is the SPU's own).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from types import SimpleNamespace
from typing import Any

from edge.spu.sc_link import ScLink


class SlowSc:
    """Answers every HEARTBEAT after ``delay_s``; records when each was sent."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.sent: list[float] = []
        self.in_flight = 0
        self.most_in_flight = 0

    async def request(self, api: Any, blob: bytes = b"", **fields: Any
                      ) -> tuple[dict[str, Any], bytes]:
        self.sent.append(asyncio.get_running_loop().time())
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay_s)
        finally:
            self.in_flight -= 1
        return {"version": 0}, b""


def link(interval_s: float) -> ScLink:
    spu = object.__new__(ScLink)
    spu.cfg = SimpleNamespace(id=1, heartbeat_interval_s=interval_s)  # type: ignore[assignment]
    spu.guard = SimpleNamespace(token=time.monotonic,  # type: ignore[assignment]
                                confirmed=lambda sent_at: None)
    spu.replicas = SimpleNamespace(partitions={}, version=0)  # type: ignore[assignment]
    spu._health = dict  # type: ignore[method-assign]
    spu._stats = dict  # type: ignore[method-assign]
    return spu


async def beats(interval_s: float, delay_s: float, run_s: float) -> SlowSc:
    sc = SlowSc(delay_s)
    task = asyncio.create_task(link(interval_s)._heartbeats(sc))  # type: ignore[arg-type]
    await asyncio.sleep(run_s)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return sc


async def test_a_slow_answer_does_not_stretch_the_period() -> None:
    # Answers take 80 % of the interval: waiting after each answer would make the
    # period 0.9 s; it stays 0.5 s.
    sc = await beats(interval_s=0.5, delay_s=0.4, run_s=2.7)
    gaps = [b - a for a, b in zip(sc.sent, sc.sent[1:], strict=False)]
    assert len(sc.sent) >= 5, sc.sent
    assert statistics.median(gaps) < 0.65, gaps
    assert min(gaps) >= 0.49, gaps  # never more often than the interval


async def test_an_answer_slower_than_the_interval_is_awaited_not_overtaken() -> None:
    # One heartbeat at a time: the next goes out as soon as the late answer is in.
    sc = await beats(interval_s=0.2, delay_s=0.5, run_s=1.8)
    gaps = [b - a for a, b in zip(sc.sent, sc.sent[1:], strict=False)]
    assert sc.most_in_flight == 1
    assert len(sc.sent) >= 3, sc.sent
    assert all(0.49 <= g < 0.7 for g in gaps), gaps

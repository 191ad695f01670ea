"""The uplinks' shared link: the rate holds, priorities go first, the floor moves the low one."""

from __future__ import annotations

import asyncio
import time

import pytest

from edge.net.bandwidth import FLOOR_SHARE, SharedLink


async def sender(link: SharedLink, priority: int, size: int, until: float,
                 log: list[tuple[float, int]]) -> None:
    while time.monotonic() < until:
        await link.acquire(size, priority)
        log.append((time.monotonic(), priority))


async def test_the_rate_holds_within_5_percent() -> None:
    rate = 2_000_000
    link = SharedLink(rate)
    log: list[tuple[float, int]] = []
    start = time.monotonic()
    await asyncio.gather(*(sender(link, p, 20_000, start + 3.0, log) for p in (0, 0, 5)))
    # What was granted after the first burst, over the time it took.
    sent = sum(link.granted.values()) - link.burst
    assert abs(sent / (log[-1][0] - start) - rate) / rate < 0.05


async def test_high_priority_first_and_the_floor_moves_the_low_one() -> None:
    link = SharedLink(1_000_000)
    log: list[tuple[float, int]] = []
    until = time.monotonic() + 2.0
    await asyncio.gather(sender(link, 0, 10_000, until, log),
                         sender(link, 9, 10_000, until, log))
    # Once the first burst is gone (the low one asked first and had the link to
    # itself), the low one gets its floor: about 1/11 with two busy priorities.
    steady = [p for t, p in log if t > log[0][0] + 0.5]
    share = steady.count(0) / len(steady)
    assert FLOOR_SHARE / (1 + FLOOR_SHARE) * 0.8 < share < 0.12
    # and it moves all along, not only at the end.
    lows = [t for t, p in log if p == 0]
    assert lows[0] - log[0][0] < 0.5
    assert until - lows[-1] < 0.5


async def test_an_idle_priority_banks_nothing() -> None:
    link = SharedLink(1_000_000)
    log: list[tuple[float, int]] = []
    until = time.monotonic() + 1.0
    await sender(link, 9, 10_000, until, log)
    # A low priority arriving now is owed nothing for the second it was idle.
    low_log: list[tuple[float, int]] = []
    until = time.monotonic() + 0.5
    await asyncio.gather(sender(link, 9, 10_000, until, low_log),
                         sender(link, 0, 10_000, until, low_log))
    assert [p for _, p in low_log[:5]].count(0) <= 1


async def test_unlimited_never_waits_and_bad_priority_is_refused() -> None:
    link = SharedLink(None)
    start = time.monotonic()
    for _ in range(1000):
        await link.acquire(1 << 20, 3)
    assert time.monotonic() - start < 0.5
    assert link.granted == {3: 1000 << 20}
    with pytest.raises(ValueError, match="priority"):
        await link.acquire(1, 10)
    with pytest.raises(ValueError, match="rate"):
        SharedLink(0)


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    link = SharedLink(10_000)
    await link.acquire(10_000, 0)  # the bucket is in debt for about a second
    waiter = asyncio.create_task(link.acquire(100, 0))
    await asyncio.sleep(0.05)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert not link._waiting


async def test_a_new_rate_applies_at_once_and_unlimited_releases_the_waiting() -> None:
    link = SharedLink(100_000)
    await link.acquire(int(link.burst), 0)  # the bucket is empty now
    await link.acquire(50_000, 0)  # granted on credit: the bucket owes half a second
    waiting = asyncio.create_task(link.acquire(1000, 0))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    link.set_rate(1_000_000)  # ten times the rate: the debt is paid in 0.05 s, not 0.5 s
    await asyncio.wait_for(waiting, 0.3)
    await link.acquire(10_000_000, 0)  # on credit again: ten seconds at this rate
    blocked = asyncio.create_task(link.acquire(1000, 0))
    await asyncio.sleep(0.05)
    assert not blocked.done()
    link.set_rate(None)
    await asyncio.wait_for(blocked, 0.1)
    with pytest.raises(ValueError, match="rate"):
        link.set_rate(0)

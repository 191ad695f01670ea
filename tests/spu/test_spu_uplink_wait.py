"""An uplink backing off long reconnects at once when the link returns (real sockets)."""

from __future__ import annotations

import asyncio
import time

from edge.spu.upstream import LinkWatch, Woke, wait_for_link
from edge.testing import free_port


async def test_the_wait_ends_when_the_failed_address_answers_again() -> None:
    port = free_port()
    start = time.monotonic()
    waiting = asyncio.create_task(wait_for_link(60.0, asyncio.Event(), f"127.0.0.1:{port}",
                                                0.2))
    await asyncio.sleep(1.0)  # a few probes fail: the link is down
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", port)
    try:
        assert await asyncio.wait_for(waiting, 5) == Woke.PROBE
    finally:
        server.close()
    assert time.monotonic() - start < 2.0


async def test_an_address_that_always_answers_does_not_cut_the_wait() -> None:
    # The failure was not the network (a refusal, a TLS mismatch): keep backing off.
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        start = time.monotonic()
        woke = await wait_for_link(1.0, asyncio.Event(), f"127.0.0.1:{port}", 0.1)
        assert woke == Woke.TIMER
        assert time.monotonic() - start >= 0.95
    finally:
        server.close()


async def test_another_uplink_getting_through_wakes_the_waiting_ones() -> None:
    watch = LinkWatch()
    waiters = [asyncio.create_task(wait_for_link(60.0, watch.waiter(), None, 0.5))
               for _ in range(3)]
    await asyncio.sleep(0.2)
    watch.up()
    assert await asyncio.wait_for(asyncio.gather(*waiters), 2) == [Woke.WATCH] * 3
    # The next waiters wait for the next connect, not the one that is past.
    assert await wait_for_link(0.3, watch.waiter(), None, 0.1) == Woke.TIMER


async def test_a_peer_back_before_the_first_interval_still_ends_the_wait() -> None:
    # The cloud SPU started a moment after the SC sent us to it: the first probe,
    # right away, sees it down, the next one up.
    port = free_port()
    start = time.monotonic()
    waiting = asyncio.create_task(wait_for_link(20.0, asyncio.Event(), f"127.0.0.1:{port}",
                                                1.0))
    await asyncio.sleep(0.3)
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", port)
    try:
        assert await asyncio.wait_for(waiting, 5) == Woke.PROBE
    finally:
        server.close()
    assert time.monotonic() - start < 2.0

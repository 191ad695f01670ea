"""Announcing and finding with the real zeroconf stack, on loopback only.

UDP 5353 is fixed by the protocol (python-zeroconf has no other port), so these
tests cannot use a private port: each uses a site name of its own, bound to the
loopback interface, and ignores every other announcement it may hear. The
multi-host behaviour (real multicast between hosts, address changes) is tested
across network namespaces in tests/integration/test_discovery_lan.py.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from edge.discovery.announcer import Announcer
from edge.discovery.directory import Directory, sc_entries
from edge.discovery.finder import DiscoveryError, ScFinder, find_sc
from edge.discovery.mdns import Mdns
from edge.discovery.spec import MdnsSpec
from edge.discovery.txt import Announcement, Role

LO = ["lo"]


@pytest.fixture
def site() -> str:
    return f"t{secrets.token_hex(6)}"


@pytest.fixture
async def directory() -> AsyncIterator[Directory]:
    d = Directory(Mdns(interfaces=LO))
    await d.start()
    yield d
    await d.stop()


def _sc(site: str, cluster: str = "c1", port: int = 19003) -> Announcement:
    return Announcement(role=Role.SC, site=site, cluster=cluster, public_port=port,
                        private_port=port + 1)


async def _announce(ann: Announcement) -> Announcer:
    a = Announcer(Mdns(interfaces=LO), ann, bind_host="0.0.0.0")
    a.start()
    await asyncio.wait_for(a.registered.wait(), 10)
    return a


async def _until(predicate: object, directory: Directory, timeout: float = 5.0) -> float:
    start = time.monotonic()
    while not predicate():  # type: ignore[operator]
        if time.monotonic() - start > timeout:
            raise AssertionError("not seen in time")
        await directory.wait_changed(0.1)
    return time.monotonic() - start


async def test_an_announced_sc_is_found_with_its_hints(site: str, directory: Directory) -> None:
    a = await _announce(_sc(site))
    try:
        assert await find_sc(MdnsSpec(site), interfaces=LO) == "127.0.0.1:19003"
        assert await find_sc(MdnsSpec(site), private=True, interfaces=LO) == "127.0.0.1:19004"
        await _until(lambda: sc_entries(directory, site), directory)
        (entry,) = sc_entries(directory, site)
        assert entry.announcement == replace(_sc(site), addresses=("127.0.0.1",))
        assert entry.addresses == ("127.0.0.1",)
        assert entry.name == f"{site}-sc-c1._headwater._tcp.local."
    finally:
        await a.stop()


async def test_a_clean_stop_is_seen_at_once(site: str, directory: Directory) -> None:
    a = await _announce(_sc(site))
    await _until(lambda: sc_entries(directory, site), directory)
    await a.stop()
    gone_after = await _until(lambda: not sc_entries(directory, site), directory, 2.0)
    assert gone_after < 1.0


async def test_updates_reach_browsers(site: str, directory: Directory) -> None:
    a = await _announce(_sc(site))
    try:
        await _until(lambda: sc_entries(directory, site), directory)
        await a.update(replace(a.announcement, public_port=19103))
        await _until(lambda: sc_entries(directory, site)[0].announcement.public_port == 19103,
                     directory)
    finally:
        await a.stop()


async def test_another_cluster_is_ignored_and_logged_once(
        site: str, directory: Directory, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="edge.discovery")
    forged = await _announce(_sc(site, cluster="forged", port=19203))
    try:
        finder = ScFinder(directory, MdnsSpec(site), private=True, joined=lambda: "c1")
        await _until(lambda: sc_entries(directory, site), directory)
        for _ in range(20):
            assert finder.candidates() == []
        with pytest.raises(DiscoveryError):
            await finder.wait(0.5)
        real = await _announce(_sc(site, cluster="c1"))
        try:
            assert await finder.wait(5.0) == ["127.0.0.1:19004"]
        finally:
            await real.stop()
    finally:
        await forged.stop()
    lines = [r for r in caplog.records if "forged" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "is not the cluster c1" in lines[0].getMessage()


async def test_two_clusters_for_one_site_are_not_guessed_between(site: str) -> None:
    a = await _announce(_sc(site, cluster="one"))
    b = await _announce(_sc(site, cluster="two", port=19303))
    try:
        with pytest.raises(DiscoveryError, match="2 SCs of different clusters"):
            await find_sc(MdnsSpec(site), interfaces=LO)
    finally:
        await a.stop()
        await b.stop()


async def test_no_sc_is_a_clear_retriable_error(site: str) -> None:
    with pytest.raises(DiscoveryError, match=f"no SC announced for mdns:{site}") as err:
        await find_sc(MdnsSpec(site), interfaces=LO, timeout=0.5)
    assert err.value.retriable


async def test_unusable_interfaces_leave_the_node_running(
        site: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="edge.discovery")
    a = Announcer(Mdns(interfaces=["nosuch0"]), _sc(site), bind_host="0.0.0.0")
    a.start()
    await asyncio.sleep(0.2)
    await a.stop()
    (line,) = [r.getMessage() for r in caplog.records]
    assert "nosuch0" in line
    assert "serving on static configuration" in line


async def test_nothing_blocks_the_event_loop(site: str, caplog: pytest.LogCaptureFixture
                                             ) -> None:
    """Announce, browse, resolve and withdraw with the loop's slow-callback detector on.

    The cyclic garbage collector is held off meanwhile: late in a long test run a
    full collection of the test process takes 100 ms on its own, whichever
    callback it happens to interrupt. A step reported slow once may also have been
    preempted by another process on a busy machine, so it counts only when the
    same step is slow again on a second round: blocking code is slow every time.
    """
    first = await _slow_steps(site, caplog)
    if first:
        again = await _slow_steps(f"{site}b", caplog)
        assert first & again == set()


async def _slow_steps(site: str, caplog: pytest.LogCaptureFixture) -> set[str]:
    """The coroutine steps that held the loop for more than 50 ms."""
    loop = asyncio.get_running_loop()
    caplog.clear()
    gc.collect()
    gc.disable()
    loop.set_debug(True)
    loop.slow_callback_duration = 0.05
    caplog.set_level(logging.WARNING, logger="asyncio")
    try:
        a = await _announce(_sc(site))
        assert await find_sc(MdnsSpec(site), interfaces=LO) == "127.0.0.1:19003"
        await a.stop()
    finally:
        loop.set_debug(False)
        gc.enable()
    steps = (re.search(r"coro=<(\S+) running at (\S+?)>", r.getMessage())
             for r in caplog.records if "Executing" in r.getMessage())
    return {m.group(1) + "@" + m.group(2) if m else "?" for m in steps}

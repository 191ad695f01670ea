"""Resource limits of the SC and SPU ports, against real processes: the connection
cap refuses clearly and recovers, idle and half-sent connections are cut, pipelined
long polls and partial frames cannot grow the SPU, and its tasks are gone when the
connection closes."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from edge.client import Admin, Producer
from edge.net.connection import ClientConnection, split_addr
from edge.protocol.errors import InsufficientResources
from edge.protocol.framing import FrameDecoder
from edge.protocol.messages import ApiKey, check_response
from edge.testing import LocalCluster

CAP = 6


@pytest.fixture
async def limited(tmp_path: Path) -> Any:
    async with LocalCluster(tmp_path / "cluster", log_level="info", limits={
            "max_connections": CAP, "max_peer_connections": CAP, "idle_timeout_s": 1.5,
            "frame_timeout_s": 1.5, "max_long_polls": 4}) as c:
        async with Admin(c.sc_addr) as admin:
            await admin.create_topic("t", partitions=1)
            await admin.wait_ready("t")
        yield c


def _ports(c: LocalCluster) -> dict[str, str]:
    private = c.spu_ports[1][1]
    return {"SPU 1 public": c.spu_addr(), "SPU 1 private": f"127.0.0.1:{private}",
            "SC public": c.sc_addr, "SC private": c.sc_private_addr}


def _log(c: LocalCluster, name: str) -> str:
    return (c.data_dir / name).read_text(errors="replace")


async def _spu_status(c: LocalCluster) -> dict[str, Any]:
    async with ClientConnection(c.spu_addr()) as conn:
        meta, _ = await conn.request(ApiKey.PARTITION_STATUS)
    return dict(meta["servers"])


async def _fill(addr: str) -> list[ClientConnection]:
    """Connections to ``addr`` until one is refused (the cap counts others' too)."""
    held: list[ClientConnection] = []
    refused: list[str] = []
    for _ in range(CAP + 1):
        try:
            held.append(await ClientConnection(addr).connect())
        except InsufficientResources as exc:
            refused.append(str(exc))
            break
    assert refused, f"{addr} accepted {CAP + 1} connections"
    assert "refuses the connection" in refused[0]
    return held


async def test_every_port_refuses_connections_over_its_cap_and_accepts_again(
        limited: LocalCluster) -> None:
    for name, addr in _ports(limited).items():
        held = await _fill(addr)
        assert len(held) <= CAP, name
        for _ in range(20):  # a refused client that insists is counted, not logged again
            with pytest.raises(InsufficientResources):
                await ClientConnection(addr).connect()
        for conn in held:
            await conn.close()
        await asyncio.sleep(0.2)
        async with ClientConnection(addr) as conn:
            await conn.request(ApiKey.API_VERSIONS)
    spu_log, sc_log = _log(limited, "spu-1.log"), _log(limited, "sc.log")
    for text, listener in ((spu_log, "SPU 1 public"), (spu_log, "SPU 1 private"),
                           (sc_log, "SC public"), (sc_log, "SC private")):
        assert text.count(f"{listener}: {CAP} connections open, the limit") <= 1, listener
        assert text.count(f"{listener}: accepting connections again") <= 1, listener
    # The SPU's own link to the SC kept its place on the SC private port.
    status = await _spu_status(limited)
    assert status["public"]["refused"] >= 21
    assert status["private"]["refused"] >= 21


async def test_an_idle_connection_is_closed_but_an_open_stream_is_not(
        limited: LocalCluster) -> None:
    idle = await ClientConnection(limited.spu_addr()).connect()
    streaming = await ClientConnection(limited.spu_addr()).connect()
    stream = streaming.open_stream(ApiKey.STREAM_FETCH, topic="t", partition=0, offset=0)
    await asyncio.sleep(3.0)
    assert idle.closed
    assert not streaming.closed
    async with Producer(limited.sc_addr) as p:
        await (await p.send("t", b"still there"))
    meta, blob = await asyncio.wait_for(stream.next(), 5) or ({}, b"")
    assert meta["next"] == 1
    assert blob
    await streaming.close()
    assert (await _spu_status(limited))["public"]["idle_closed"] >= 1


async def _raw(addr: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(*split_addr(addr))


def _greetings_only(data: bytes) -> bool:
    """Nothing but a private port's hello (sent on connect) came before the close."""
    decoder = FrameDecoder()
    decoder.feed(data)
    frames = []
    while (frame := decoder.next_frame()) is not None:
        frames.append(frame)
    return decoder.buffered == 0 and all(f.meta.get("hello") == 1 for f in frames)


async def test_a_frame_that_stalls_halfway_is_cut_on_every_port(limited: LocalCluster) -> None:
    for name, addr in _ports(limited).items():
        stalled, trickle = await _raw(addr), await _raw(addr)
        stalled[1].write(struct.pack(">II", 1 << 20, 16) + b"x" * 1000)
        trickle[1].write(struct.pack(">II", 1 << 20, 16))
        start = time.monotonic()
        for _ in range(12):  # a byte every 0.25 s is progress, but not a frame in time
            try:
                trickle[1].write(b"y")
                await trickle[1].drain()
            except ConnectionError:
                break  # a private port may refuse an unauthenticated frame at once
            await asyncio.sleep(0.25)
            if trickle[0].at_eof():
                break
        for reader, _ in (stalled, trickle):
            try:
                data = await asyncio.wait_for(reader.read(), 5)
            except ConnectionError:
                data = b""  # cut while our bytes were still arriving: a reset, not a close
            assert _greetings_only(data), name
        elapsed = time.monotonic() - start
        assert elapsed < 4.5, name
        if "public" in name:
            assert elapsed > 1.0, name  # progress kept it open for a while
        for _, writer in (stalled, trickle):
            writer.close()
    assert (await _spu_status(limited))["public"]["frame_timeouts"] == 2


def _tasks_and_rss(c: LocalCluster, status: dict[str, Any]) -> tuple[int, float]:
    rss = psutil.Process(c.spu_procs[1].pid).memory_info().rss / 2**20
    return int(status["tasks"]), rss


async def test_30k_pipelined_long_polls_park_a_few_tasks_that_go_with_the_connection(
        limited: LocalCluster) -> None:
    tasks_before, rss_before = _tasks_and_rss(limited, await _spu_status(limited))
    conn = await ClientConnection(limited.spu_addr()).connect()
    futures = [conn.send_request(ApiKey.FETCH, topic="t", partition=0, offset=0,
                                 max_wait_ms=60_000) for _ in range(30_000)]
    await conn.drain()
    refused = 0
    for fut in futures[4:]:
        meta, _ = await asyncio.wait_for(fut, 30)
        with pytest.raises(InsufficientResources, match="long polls"):
            check_response(meta)
        refused += 1
    assert not any(f.done() for f in futures[:4])  # parked: the partition is empty
    tasks_during, rss_during = _tasks_and_rss(limited, await _spu_status(limited))
    assert tasks_during <= tasks_before + 4 + 2, (tasks_before, tasks_during)
    assert rss_during < rss_before + 25, (rss_before, rss_during)
    await conn.close()
    await asyncio.sleep(0.5)
    status = await _spu_status(limited)
    tasks_after, _ = _tasks_and_rss(limited, status)
    assert tasks_after <= tasks_before, (tasks_before, tasks_after)
    assert status["public"]["long_polls_refused"] == refused == 30_000 - 4
    assert status["public"]["in_flight"] <= 1  # this status request


async def test_partial_frames_of_many_connections_share_one_bounded_pool(
        tmp_path: Path) -> None:
    async with LocalCluster(tmp_path / "c", limits={"max_buffered_bytes": 16 << 20,
                                                    "frame_timeout_s": 6}) as c:
        async with Admin(c.sc_addr) as admin:
            await admin.create_topic("t", partitions=1)
            await admin.wait_ready("t")
        rss_before = psutil.Process(c.spu_procs[1].pid).memory_info().rss / 2**20
        hogs = [await _raw(c.spu_addr()) for _ in range(40)]
        for _, writer in hogs:  # 40 frames of 8 MiB, each 7 MiB sent: 280 MiB offered
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 16)
            writer.write(struct.pack(">II", 8 << 20, 16) + b"z" * (7 << 20))
        await asyncio.sleep(3.0)
        async with Producer(c.sc_addr) as p:  # small frames still flow
            await asyncio.wait_for(await p.send("t", b"through"), 5)
        status = await _spu_status(c)
        rss = psutil.Process(c.spu_procs[1].pid).memory_info().rss / 2**20
        assert status["buffered"] <= 16 << 20
        assert rss < rss_before + 16 + 40 * 0.75 + 10, (rss_before, rss)
        for _, writer in hogs:
            writer.transport.abort()
        # A connection that waits for the pool is not read, so its end is seen at
        # its frame timeout at the latest.
        await asyncio.sleep(4.0)
        status = await _spu_status(c)
        assert status["buffered"] == 0
        assert status["public"]["open"] == 1  # this status request

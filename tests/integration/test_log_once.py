"""No server path logs per request: 500 bad requests leave a bounded log, and an
exception no handler expected is logged with its traceback once per kind."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from edge.client import Admin
from edge.net.auth import dialer
from edge.net.connection import ClientConnection
from edge.net.server import Connection, FrameServer
from edge.protocol.errors import HeadwaterError, UnknownError
from edge.protocol.messages import ApiKey, check_response
from edge.secret import ClusterSecret, PrivateAuth
from edge.testing import LocalCluster

HUGE = 10**5000  # str() of it raises ValueError: it reached deep code once

# (port, api, fields) of requests that are each wrong in their own way.
BAD: list[tuple[str, ApiKey, dict[str, Any]]] = [
    ("spu", ApiKey.FETCH, {"topic": "t", "partition": HUGE, "offset": 0}),
    ("spu", ApiKey.FETCH, {"topic": "t", "partition": 0, "offset": HUGE}),
    ("spu", ApiKey.PRODUCE, {"topic": "t", "partition": 0}),
    ("spu", ApiKey.LIST_OFFSETS, {"topic": 7, "partition": 0}),
    ("spu-private", ApiKey.REPLICA_FETCH, {"topic": "t", "partition": 0, "epoch": HUGE,
                                           "replica": 1, "offset": 0}),
    ("sc", ApiKey.CREATE_TOPIC, {"name": "x", "partitions": HUGE}),
    ("sc", ApiKey.DESCRIBE_TOPIC, {"name": HUGE}),
    ("sc-private", ApiKey.UPDATE_ISR, {"spu": 1, "topic": "t", "partition": HUGE,
                                       "epoch": 0, "isr": [1]}),
]


def _lines(c: LocalCluster) -> int:
    return sum(len((c.data_dir / f).read_text(errors="replace").splitlines())
               for f in ("sc.log", "spu-1.log"))


async def test_500_bad_requests_leave_a_bounded_log_and_healthy_servers(
        tmp_path: Path) -> None:
    async with LocalCluster(tmp_path / "c", log_level="info") as c:
        async with Admin(c.sc_addr) as admin:
            await admin.create_topic("t", partitions=1)
            await admin.wait_ready("t")
        addrs = {"spu": c.spu_addr(), "spu-private": f"127.0.0.1:{c.spu_ports[1][1]}",
                 "sc": c.sc_addr, "sc-private": c.sc_private_addr}
        before = _lines(c)
        # Private ports serve only proven callers: these speak as SPU 1, with the secret.
        proven = dialer(PrivateAuth(secret=ClusterSecret.load(c.secret_path)), 1)
        conns = {port: await ClientConnection(
            addr, authenticate=proven if port.endswith("private") else None).connect()
            for port, addr in addrs.items()}
        try:
            for i in range(500):
                port, api, fields = BAD[i % len(BAD)]
                meta, _ = await conns[port].send_request(api, **fields)
                with pytest.raises(HeadwaterError):
                    check_response(meta)
        finally:
            for conn in conns.values():
                await conn.close()
        grown = _lines(c) - before
        text = "".join((c.data_dir / f).read_text(errors="replace") for f in ("sc.log",
                                                                               "spu-1.log"))
        assert text.count("Traceback") <= len(BAD)
        assert grown < 20 * len(BAD), grown  # a traceback is ~20 lines, once per kind
        assert c.spu_procs[1].poll() is None
        assert c.sc_proc is not None
        assert c.sc_proc.poll() is None
        async with ClientConnection(c.spu_addr()) as conn:
            await conn.request(ApiKey.LIST_OFFSETS, topic="t", partition=0)


async def test_an_unexpected_exception_is_logged_with_its_traceback_once_per_kind(
        caplog: pytest.LogCaptureFixture) -> None:
    # A real listener and socket; the failing dispatch stands in for a bug in a
    # handler, which no valid build ships on purpose.
    def dispatch(conn: Connection, meta: dict[Any, Any], blob: bytes) -> None:
        if meta.get("api") == ApiKey.FETCH:
            raise KeyError("a bug")
        raise ZeroDivisionError("another bug")

    server = FrameServer("test", dispatch)
    host, port = await server.start("127.0.0.1", 0)
    try:
        with caplog.at_level(logging.WARNING, logger="edge.net.server"):
            conn = await ClientConnection(f"{host}:{port}").connect(handshake=False)
            try:
                for i in range(500):
                    api = ApiKey.FETCH if i % 2 else ApiKey.LIST_OFFSETS
                    with pytest.raises(UnknownError):
                        await conn.request(api)
            finally:
                await conn.close()
    finally:
        await server.close()
    records = [r for r in caplog.records if r.name == "edge.net.server"]
    assert server.stats.unexpected_errors == 500
    assert len(records) == 2, [r.getMessage() for r in records]
    assert all(r.exc_info is not None for r in records)
    assert {r.exc_info[0] for r in records if r.exc_info} == {KeyError, ZeroDivisionError}

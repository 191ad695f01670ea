"""Private ports know who is calling: without the cluster secret nobody registers,
heartbeats or fetches, a proof is good for one connection only, the proven SPU id
is the only one a connection may speak for, and an SPU never follows an SC that
cannot prove the secret back. Real SC and SPU processes throughout."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import pytest

from edge.client import Admin, Producer
from edge.net.auth import PrivateAuth, dialer
from edge.net.connection import ClientConnection, split_addr
from edge.protocol import handshake
from edge.protocol.errors import AuthenticationFailed, ErrorCode
from edge.protocol.framing import FrameDecoder, encode_frame
from edge.protocol.handshake import Claim
from edge.protocol.messages import ApiKey, request
from edge.sc.config import ScConfig
from edge.sc.service import Sc
from edge.secret import ClusterSecret
from edge.spu.config import SpuConfig
from edge.spu.service import Spu
from edge.testing import LocalCluster

AUTH_FAILED = int(ErrorCode.AUTHENTICATION_FAILED)


class RawPeer:
    """A hand-driven connection: frames in, frames out, nothing done for us."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = FrameDecoder()

    @classmethod
    async def open(cls, addr: str) -> RawPeer:
        return cls(*await asyncio.open_connection(*split_addr(addr)))

    def send(self, api: ApiKey, cid: int, **fields: Any) -> None:
        self.writer.write(encode_frame(request(api, cid, **fields)))

    async def next(self, timeout: float = 5.0) -> dict[Any, Any] | None:
        """The next frame, or None once the server closed the connection."""
        async with asyncio.timeout(timeout):
            while (frame := self.decoder.next_frame()) is None:
                try:
                    data = await self.reader.read(65536)
                except ConnectionResetError:
                    # Closed while our last frame was unread: the kernel answers it with RST.
                    return None
                if not data:
                    return None
                self.decoder.feed(data)
        return frame.meta

    def close(self) -> None:
        self.writer.transport.abort()


async def refused(addr: str, api: ApiKey, **fields: Any) -> None:
    """``api`` as the first request after the hello: AUTHENTICATION_FAILED, then closed."""
    peer = await RawPeer.open(addr)
    try:
        hello = await peer.next()
        assert hello is not None
        assert hello["hello"] == 1
        assert hello["secret"] is True
        peer.send(api, 1, **fields)
        answer = await peer.next()
        assert answer is not None
        assert (answer["id"], answer["err"]) == (1, AUTH_FAILED), answer
        assert await peer.next() is None
    finally:
        peer.close()


async def authenticated(addr: str, secret: bytes, spu_id: int) -> tuple[RawPeer, dict[Any, Any]]:
    """A raw connection that passed the handshake as ``spu_id``; also the answer it sent."""
    peer = await RawPeer.open(addr)
    hello = handshake.parse_hello(await peer.next() or {})
    claim = Claim(spu_id, "spu", handshake.new_nonce(), None)
    claim = claim._replace(mac=handshake.client_mac(secret, hello, claim))
    fields = handshake.claim_fields(claim)
    peer.send(ApiKey.AUTHENTICATE, 1, **fields)
    answer = await peer.next()
    assert answer is not None
    assert answer["err"] == 0
    assert answer["mac"] == handshake.server_mac(secret, hello, claim)
    return peer, fields


async def sc_status(cluster: LocalCluster) -> dict[Any, Any]:
    async with ClientConnection(cluster.sc_addr) as conn:
        meta, _ = await conn.request(ApiKey.CLUSTER_STATUS)
        spus, _ = await conn.request(ApiKey.LIST_SPUS)
    return {**meta, "spus": spus["spus"]}


async def leader_row(cluster: LocalCluster) -> dict[Any, Any]:
    async with Admin(cluster.sc_addr) as admin:
        return (await admin.list_partitions("t"))[0]


async def test_unauthenticated_callers_cannot_register_heartbeat_or_fetch(
        cluster: LocalCluster) -> None:
    async with Admin(cluster.sc_addr) as admin:
        await admin.create_topic("t", partitions=1)
        await admin.wait_ready("t")
    before = await leader_row(cluster)
    sc, spu = cluster.sc_private_addr, f"{cluster.host}:{cluster.spu_ports[1][1]}"
    await refused(sc, ApiKey.REGISTER_SPU, spu=7, public="127.0.0.1:1", private="127.0.0.1:2")
    await refused(sc, ApiKey.HEARTBEAT, spu=1)
    await refused(sc, ApiKey.UPDATE_ISR, spu=1, topic="t", partition=0, epoch=0, isr=[1])
    # The forged fetch of the issue: it used to depose the leader for 20-40 s.
    await refused(spu, ApiKey.REPLICA_FETCH, topic="t", partition=0, epoch=2**62,
                  replica=4242, offset=0)
    await refused(spu, ApiKey.OFFSET_FOR_EPOCH, topic="t", partition=0, leader_epoch=2**62,
                  epoch=0)
    # A pipelined burst is one refusal: counted once, the rest dropped unread.
    burst = await RawPeer.open(spu)
    burst.writer.write(b"".join(
        encode_frame(request(ApiKey.REPLICA_FETCH, i, topic="t", partition=0, epoch=2**62,
                             replica=4242, offset=0)) for i in range(1, 101)))
    frames = []
    while (frame := await burst.next()) is not None:
        frames.append(frame)
    burst.close()
    assert [(f["id"], f["err"]) for f in frames] == [(0, 0), (1, AUTH_FAILED)]
    async with Producer(cluster.sc_addr) as p:
        start = time.monotonic()
        await asyncio.wait_for(await p.send("t", b"still served"), 5)
        assert time.monotonic() - start < 2
    after = await leader_row(cluster)
    assert (after["leader"], after["epoch"]) == (before["leader"], before["epoch"])
    status = await sc_status(cluster)
    assert [s["id"] for s in status["spus"]] == [1]
    assert status["auth_failures"] == 3
    secret = ClusterSecret.load(cluster.secret_path)
    assert (await private_stats(cluster, secret))["auth_failures"] == 3
    # An unauthenticated caller still learns what the port is (headwater ping).
    peer = await RawPeer.open(sc)
    await peer.next()
    peer.send(ApiKey.API_VERSIONS, 5)
    versions = await peer.next()
    assert versions is not None
    assert versions["err"] == 0
    assert str(int(ApiKey.AUTHENTICATE)) in {str(k) for k in versions["versions"]}
    peer.close()
    sc_log = (cluster.data_dir / "sc.log").read_text()
    spu_log = (cluster.data_dir / "spu-1.log").read_text()
    assert sc_log.count("authentication failure from") == 1, sc_log
    assert spu_log.count("authentication failure from") == 1, spu_log
    assert "Traceback" not in sc_log + spu_log


async def private_stats(cluster: LocalCluster, secret: ClusterSecret) -> dict[Any, Any]:
    spu_private = f"{cluster.host}:{cluster.spu_ports[1][1]}"
    auth = PrivateAuth(secret=secret)
    async with ClientConnection(spu_private, authenticate=dialer(auth, 1)) as conn:
        status, _ = await conn.request(ApiKey.PARTITION_STATUS)
    return dict(status["stats"])


async def test_a_wrong_secret_or_a_replayed_answer_is_refused(
        cluster: LocalCluster, tmp_path: Path) -> None:
    secret = ClusterSecret.load(cluster.secret_path)
    wrong = ClusterSecret.ensure(tmp_path / "other.secret")
    for addr in (cluster.sc_private_addr, f"{cluster.host}:{cluster.spu_ports[1][1]}"):
        conn = ClientConnection(addr, authenticate=dialer(PrivateAuth(secret=wrong), 1))
        with pytest.raises(AuthenticationFailed, match="wrong proof of the cluster secret"):
            await conn.connect()
        peer, answer = await authenticated(addr, secret.value, 5)
        peer.close()
        # The same answer on a new connection meets a new nonce.
        replay = await RawPeer.open(addr)
        try:
            assert await replay.next() is not None
            replay.send(ApiKey.AUTHENTICATE, 1, **answer)
            refusal = await replay.next()
            assert refusal is not None
            assert refusal["err"] == AUTH_FAILED
            replay.send(ApiKey.HEARTBEAT, 2, spu=5)
            assert await replay.next() is None
        finally:
            replay.close()
    # Proven as SPU 5, a connection speaks for SPU 5 only.
    first, _ = await authenticated(cluster.sc_private_addr, secret.value, 5)
    try:
        first.send(ApiKey.HEARTBEAT, 2, spu=1)
        refusal = await first.next()
        assert refusal is not None
        assert (refusal["err"], refusal["data"]["field"]) == (AUTH_FAILED, "spu")
        assert await first.next() is None
    finally:
        first.close()
    status = await sc_status(cluster)
    assert [s["id"] for s in status["spus"] if s["online"]] == [1]
    assert status["auth_failures"] == 3
    assert (await private_stats(cluster, secret))["auth_failures"] == 2


async def test_a_fetch_for_another_replica_is_refused(cluster: LocalCluster) -> None:
    spu_private = f"{cluster.host}:{cluster.spu_ports[1][1]}"
    secret = ClusterSecret.load(cluster.secret_path)
    async with ClientConnection(spu_private,
                                authenticate=dialer(PrivateAuth(secret=secret), 2)) as conn:
        with pytest.raises(AuthenticationFailed, match="replica: this connection "
                           "authenticated as SPU 2, not 3"):
            await conn.request(ApiKey.REPLICA_FETCH, topic="t", partition=0, epoch=0,
                               replica=3, offset=0)
        await asyncio.sleep(0.2)
        assert conn.closed
    assert (await private_stats(cluster, secret))["auth_failures"] == 1


async def test_insecure_private_binds_ids_and_warns_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sc = Sc(ScConfig(data_dir=tmp_path / "sc", public_addr="127.0.0.1:0",
                     private_addr="127.0.0.1:0", insecure_private=True))
    await sc.start()
    spu = Spu(SpuConfig(id=1, data_dir=tmp_path / "spu", public_addr="127.0.0.1:0",
                        private_addr="127.0.0.1:0", sc=sc.private_addr, insecure_private=True))
    await spu.start()
    try:
        assert spu.link is not None
        await asyncio.wait_for(spu.link.registered_once.wait(), 10)
        # Nothing proves the claim, but the claim still binds the connection.
        insecure = dialer(PrivateAuth(insecure=True), 4)
        async with ClientConnection(sc.private_addr, authenticate=insecure) as conn:
            with pytest.raises(AuthenticationFailed):
                await conn.request(ApiKey.HEARTBEAT, spu=1)
        # A node with a secret does not join an insecure one.
        strict = dialer(PrivateAuth(secret=ClusterSecret.ensure(tmp_path / "s")), 4)
        with pytest.raises(AuthenticationFailed, match="does not ask for the cluster secret"):
            await ClientConnection(spu.private_addr, authenticate=strict).connect()
    finally:
        await spu.stop()
        await sc.stop()
    warnings = [r.getMessage() for r in caplog.records if "insecure_private" in r.getMessage()]
    assert len(warnings) == 2, warnings
    assert sc.gate.failures == 1


class FakeSc:
    """A listener that asks for the secret but cannot prove it (or does not ask)."""

    def __init__(self, *, asks_secret: bool) -> None:
        self.asks_secret = asks_secret
        self.apis: list[int] = []
        self.addr = ""
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.addr = f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                     ) -> None:
        peer = RawPeer(reader, writer)
        hello = handshake.Hello("sc", handshake.new_nonce(), self.asks_secret, False)
        writer.write(encode_frame(handshake.hello_meta(hello)))
        with contextlib.suppress(OSError, TimeoutError):
            while (meta := await peer.next(timeout=30)) is not None:
                self.apis.append(meta["api"])
                writer.write(encode_frame({"id": meta["id"], "err": 0, "mac": bytes(32)}))
        writer.transport.abort()


@pytest.mark.parametrize("asks_secret", [True, False])
async def test_an_spu_does_not_follow_an_sc_that_cannot_prove_the_secret(
        tmp_path: Path, asks_secret: bool) -> None:
    fake = FakeSc(asks_secret=asks_secret)
    await fake.start()
    cluster = LocalCluster(tmp_path / "c")
    ClusterSecret.ensure(cluster.secret_path)
    cluster.sc_private_addr = fake.addr
    try:
        await cluster.start_spu(1)
        await asyncio.sleep(2.0)
        log = (cluster.data_dir / "spu-1.log").read_text()
    finally:
        await cluster.stop()
        await fake.close()
    # It answered the hello (or hung up on it) and never registered nor heartbeated.
    assert set(fake.apis) <= {int(ApiKey.AUTHENTICATE)}
    assert bool(fake.apis) is asks_secret
    reason = "failed to prove the cluster secret" if asks_secret else "does not ask for"
    assert f"SC {fake.addr} refused ({fake.addr} {reason}" in log, log
    assert log.count(reason) == 1, log

"""Every listener and client can run TLS, with client certificates required; on the
private ports the certificate names the SPU, and a certificate for another SPU is
refused."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
from support import make_pki

from edge.client import Acks, Admin, Consumer, Offset, Producer
from edge.net.auth import PrivateAuth, dialer
from edge.net.connection import ClientConnection
from edge.protocol.errors import AuthenticationFailed, ConnectionLost
from edge.sc.config import ScConfig
from edge.sc.service import Sc
from edge.spu.config import SpuConfig
from edge.spu.service import Spu
from edge.tls import TlsConfig, client_context

NAMES = ("server", "client", "intruder", "spu-1", "spu-2")


def node_tls(pki: dict[str, tuple[str, str]], name: str) -> TlsConfig:
    return TlsConfig(cert=Path(pki[name][0]), key=Path(pki[name][1]), ca=Path(pki["ca"][0]),
                     verify_client=True)


def spu_config(tmp_path: Path, spu_id: int, sc: Sc, tls: TlsConfig) -> SpuConfig:
    return SpuConfig(id=spu_id, data_dir=tmp_path / f"spu-{spu_id}", public_addr="127.0.0.1:0",
                     private_addr="127.0.0.1:0", sc=sc.private_addr, tls=tls)


async def test_mutual_tls_end_to_end(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki", names=NAMES)
    ca = Path(pki["ca"][0])
    server_tls = node_tls(pki, "server")
    # Mutual TLS alone authenticates the private ports: no cluster secret here.
    sc = Sc(ScConfig(data_dir=tmp_path / "sc", public_addr="127.0.0.1:0",
                     private_addr="127.0.0.1:0", tls=server_tls))
    await sc.start()
    # The SPU's certificate (named spu-1) is its client identity towards the SC too.
    spu = Spu(spu_config(tmp_path, 1, sc, node_tls(pki, "spu-1")))
    await spu.start()
    try:
        assert spu.link is not None
        await asyncio.wait_for(spu.link.registered_once.wait(), 10)
        client = client_context(TlsConfig(ca=ca, cert=Path(pki["client"][0]),
                                          key=Path(pki["client"][1])))
        async with Admin(sc.public_addr, ssl=client) as admin:
            await admin.create_topic("secure")
            await admin.wait_ready("secure")
        async with Producer(sc.public_addr, ssl=client) as p:
            for i in range(500):
                await p.send("secure", b"%d" % i)
        async with Consumer(sc.public_addr, "secure", offset=Offset.beginning(),
                            ssl=client) as c:
            # Over TLS the SPU copies from the file instead of sendfile.
            assert [int(r.value) for r in await c.fetch_until_end()] == list(range(500))

        no_cert = client_context(TlsConfig(ca=ca))
        intruder = client_context(TlsConfig(ca=ca, cert=Path(pki["intruder"][0]),
                                            key=Path(pki["intruder"][1])))
        for ctx in (no_cert, intruder):
            with pytest.raises(ConnectionLost):
                async with ClientConnection(spu.public_addr, ssl_context=ctx):
                    pass
        # A client that does not trust the cluster's CA refuses to talk to it.
        stranger = ssl.create_default_context()
        with pytest.raises(ConnectionLost):
            async with ClientConnection(sc.public_addr, ssl_context=stranger):
                pass
        plain = ClientConnection(sc.public_addr)
        with pytest.raises(ConnectionLost):
            await plain.connect()
        assert sc.public.stats.connections >= 3
    finally:
        await spu.stop()
        await sc.stop()


async def test_a_certificate_for_another_spu_is_refused(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki", names=NAMES)
    sc = Sc(ScConfig(data_dir=tmp_path / "sc", public_addr="127.0.0.1:0",
                     private_addr="127.0.0.1:0", tls=node_tls(pki, "server")))
    await sc.start()
    impostor = Spu(spu_config(tmp_path, 1, sc, node_tls(pki, "spu-2")))
    await impostor.start()
    try:
        assert impostor.link is not None
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(impostor.link.registered_once.wait(), 3)
        assert 1 not in sc.controller.spus
        assert sc.gate.failures >= 1
    finally:
        await impostor.stop()
    spu = Spu(spu_config(tmp_path, 1, sc, node_tls(pki, "spu-1")))
    await spu.start()
    try:
        # SPU 1's private port checks its callers' certificates the same way.
        wrong = client_context(node_tls(pki, "spu-2"))
        conn = ClientConnection(spu.private_addr, ssl_context=wrong,
                                authenticate=dialer(PrivateAuth(certificates=True), 1))
        with pytest.raises(AuthenticationFailed, match="certificate names spu-2"):
            await conn.connect()
        assert spu.gate.failures == 1
        assert spu.link is not None
        await asyncio.wait_for(spu.link.registered_once.wait(), 10)
        assert sc.controller.spus[1].online
    finally:
        await spu.stop()
        await sc.stop()


async def test_replication_between_spus_over_mutual_tls(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki", names=NAMES)
    sc = Sc(ScConfig(data_dir=tmp_path / "sc", public_addr="127.0.0.1:0",
                     private_addr="127.0.0.1:0", tls=node_tls(pki, "server")))
    await sc.start()
    spus = [Spu(spu_config(tmp_path, i, sc, node_tls(pki, f"spu-{i}"))) for i in (1, 2)]
    for spu in spus:
        await spu.start()
    client = client_context(TlsConfig(ca=Path(pki["ca"][0]), cert=Path(pki["client"][0]),
                                      key=Path(pki["client"][1])))
    try:
        for spu in spus:
            assert spu.link is not None
            await asyncio.wait_for(spu.link.registered_once.wait(), 10)
        async with Admin(sc.public_addr, ssl=client) as admin:
            await admin.create_topic("r2", replication=2,
                                     config={"min_insync_replicas": 2})
            await admin.wait_ready("r2")
        async with Producer(sc.public_addr, ssl=client, acks=Acks.ALL) as p:
            for i in range(200):
                await p.send("r2", b"%d" % i)
            await p.flush()
        async with Admin(sc.public_addr, ssl=client) as admin:
            row = (await admin.list_partitions("r2"))[0]
        assert sorted(row["isr"]) == [1, 2]
        # acks=all: every record is on the follower, fetched over the checked link.
        ends = [spu.replicas.partitions[("r2", 0)].log.log_end_offset for spu in spus]
        assert ends == [200, 200]
        assert sum(spu.gate.failures for spu in spus) == sc.gate.failures == 0
    finally:
        for spu in spus:
            await spu.stop()
        await sc.stop()

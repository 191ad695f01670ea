"""The uplink over the cloud's public TLS, with real certificates: the site token
never travels in clear, and an uplink that does not trust the cloud delivers nothing."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from support import make_pki

from edge.client import Acks, Admin, Producer
from edge.sc.config import ScConfig
from edge.sc.service import Sc
from edge.spu.config import SpuConfig, UpstreamConfig
from edge.spu.service import Spu
from edge.testing import TcpProxy, free_port
from edge.tls import TlsConfig, client_context

TOPIC = "readings"


# In-process nodes whose private ports are not what these tests are about:
# insecure_private (test_peer_auth.py covers the private-port handshake).


async def start_cloud(tmp_path: Path, tls: TlsConfig) -> tuple[Sc, Spu, TcpProxy, TcpProxy]:
    """Cloud SC and SPU with TLS; the edge reaches both through capturing proxies."""
    sc = Sc(ScConfig(data_dir=tmp_path / "cloud-sc", public_addr="127.0.0.1:0",
                     private_addr="127.0.0.1:0", tls=tls, insecure_private=True))
    await sc.start()
    spu_public = f"127.0.0.1:{free_port()}"
    spu_proxy, sc_proxy = TcpProxy(spu_public), TcpProxy(sc.public_addr)
    for proxy in (spu_proxy, sc_proxy):
        await proxy.start()
        proxy.capture = bytearray()
    spu = Spu(SpuConfig(id=1, data_dir=tmp_path / "cloud-spu", public_addr=spu_public,
                        private_addr="127.0.0.1:0", sc=sc.private_addr, tls=tls,
                        advertise_public=spu_proxy.addr, insecure_private=True))
    await spu.start()
    assert spu.link is not None
    await asyncio.wait_for(spu.link.registered_once.wait(), 10)
    return sc, spu, sc_proxy, spu_proxy


async def start_edge(tmp_path: Path, name: str, upstream: UpstreamConfig) -> tuple[Sc, Spu]:
    sc = Sc(ScConfig(data_dir=tmp_path / f"{name}-sc", public_addr="127.0.0.1:0",
                     private_addr="127.0.0.1:0", insecure_private=True))
    await sc.start()
    spu = Spu(SpuConfig(id=1, data_dir=tmp_path / f"{name}-spu", public_addr="127.0.0.1:0",
                        private_addr="127.0.0.1:0", sc=sc.private_addr, upstream=upstream,
                        insecure_private=True))
    await spu.start()
    assert spu.link is not None
    await asyncio.wait_for(spu.link.registered_once.wait(), 10)
    async with Admin(sc.public_addr) as admin:
        await admin.create_topic(TOPIC, config={"upstream": True})
        await admin.wait_ready(TOPIC)
    async with Producer(sc.public_addr, acks=Acks.ALL) as p:
        for i in range(300):
            await p.send(TOPIC, b'{"reading": %d}' % i)
        await p.flush()
    return sc, spu


async def rows(edge_sc: Sc) -> list[dict]:
    async with Admin(edge_sc.public_addr) as admin:
        return await admin.upstream_status()


async def test_uplink_over_tls_keeps_the_token_off_the_wire(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    ca = Path(pki["ca"][0])
    tls = TlsConfig(cert=Path(pki["server"][0]), key=Path(pki["server"][1]), ca=ca)
    sc, spu, sc_proxy, spu_proxy = await start_cloud(tmp_path, tls)
    edges: list[tuple[Sc, Spu]] = []
    try:
        async with Admin(sc.public_addr, ssl=client_context(TlsConfig(ca=ca))) as admin:
            token = str((await admin.register_site("kitchen"))["token"])
        secure = UpstreamConfig(sc=sc_proxy.addr, site="kitchen", token=token,
                                tls=TlsConfig(ca=ca))
        edges.append(await start_edge(tmp_path, "edge", secure))
        async with asyncio.timeout(40):
            while [(r["state"], r["cloud_acked"]) for r in await rows(edges[0][0])] != [
                    ("connected", 300)]:
                await asyncio.sleep(0.1)
        assert spu_proxy.capture is not None
        assert sc_proxy.capture is not None
        assert len(spu_proxy.capture) > 1000  # the records went through the proxy ...
        for seen in (sc_proxy.capture, spu_proxy.capture):
            assert token.encode() not in seen  # ... and the token never in clear
            assert b"kitchen" not in seen
            assert seen[:1] == b"\x16"  # a TLS handshake record opens every connection

        # An uplink without the cloud's CA, or plain TCP, delivers nothing.
        rogue = Path(pki["rogue-ca"][0])
        for name, cfg in (("untrusting", UpstreamConfig(sc=sc_proxy.addr, site="kitchen",
                                                        token=token, tls=TlsConfig(ca=rogue))),
                          ("plain", UpstreamConfig(sc=sc_proxy.addr, site="kitchen",
                                                   token=token))):
            edges.append(await start_edge(tmp_path, name, cfg))
            await asyncio.sleep(2.0)
            [row] = await rows(edges[-1][0])
            assert (row["state"], row["cloud_acked"]) == ("offline", None), name
    finally:
        for edge_sc, edge_spu in edges:
            await edge_spu.stop()
            await edge_sc.stop()
        await spu.stop()
        await sc.stop()
        for proxy in (sc_proxy, spu_proxy):
            await proxy.close()


async def test_the_exported_file_carries_the_clouds_ca_and_the_uplink_uses_it(
        tmp_path: Path) -> None:
    """`site register --export` through TLS writes tls_ca (the --tls-ca it used, or
    --edge-tls-ca): the file alone makes the uplink trust the cloud."""
    pki = make_pki(tmp_path / "pki")
    ca = Path(pki["ca"][0])
    tls = TlsConfig(cert=Path(pki["server"][0]), key=Path(pki["server"][1]), ca=ca)
    sc, spu, sc_proxy, spu_proxy = await start_cloud(tmp_path, tls)
    edge: tuple[Sc, Spu] | None = None
    try:
        exported = tmp_path / "kitchen.toml"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edge.cli.main", "--sc", sc_proxy.addr, "--tls-ca", str(ca),
            "--tls-server-name", "localhost", "site", "register", "kitchen",
            "--export", str(exported), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        assert proc.returncode == 0, out.decode()
        cfg = UpstreamConfig.from_toml(exported)
        assert cfg.tls is not None
        assert cfg.tls.ca == ca
        edge = await start_edge(tmp_path, "edge", cfg)
        async with asyncio.timeout(40):
            while [(r["state"], r["cloud_acked"]) for r in await rows(edge[0])] != [
                    ("connected", 300)]:
                await asyncio.sleep(0.1)

        other = tmp_path / "barn.toml"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edge.cli.main", "--sc", sc_proxy.addr, "--tls-ca", str(ca),
            "--tls-server-name", "localhost", "site", "register", "barn", "--export",
            str(other), "--edge-tls-ca", "/etc/headwater/cloud-ca.crt",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        assert proc.returncode == 0, out.decode()
        assert 'tls_ca = "/etc/headwater/cloud-ca.crt"' in other.read_text()
    finally:
        if edge is not None:
            await edge[1].stop()
            await edge[0].stop()
        await spu.stop()
        await sc.stop()
        for proxy in (sc_proxy, spu_proxy):
            await proxy.close()

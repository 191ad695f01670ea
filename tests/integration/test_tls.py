"""Every listener and client can run TLS, with client certificates required."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
from support import make_pki

from edge.client import Admin, Consumer, Offset, Producer
from edge.net.connection import ClientConnection
from edge.protocol.errors import ConnectionLost
from edge.sc.config import ScConfig
from edge.sc.service import Sc
from edge.spu.config import SpuConfig
from edge.spu.service import Spu
from edge.tls import TlsConfig, client_context


async def test_mutual_tls_end_to_end(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    ca = Path(pki["ca"][0])
    server_tls = TlsConfig(cert=Path(pki["server"][0]), key=Path(pki["server"][1]), ca=ca,
                           verify_client=True)
    sc = Sc(ScConfig(data_dir=tmp_path / "sc", public_addr="127.0.0.1:0",
                     private_addr="127.0.0.1:0", tls=server_tls))
    await sc.start()
    # The SPU presents the server certificate to the SC as its client identity too.
    spu = Spu(SpuConfig(id=1, data_dir=tmp_path / "spu", public_addr="127.0.0.1:0",
                        private_addr="127.0.0.1:0", sc=sc.private_addr, tls=server_tls))
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

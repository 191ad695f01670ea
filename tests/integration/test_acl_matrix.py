"""Who may do what, against a real SC and SPU with mutual TLS and authorization on.

Certificates come from ``headwater tls``; ACLs are added and removed with the
``headwater acl`` commands' client. Each principal is tried at each operation:
allowed where a rule says so, AUTHORIZATION_FAILED everywhere else; no
certificate, another CA's certificate and an expired one do not get past TLS.
"""

from __future__ import annotations

import asyncio
import datetime
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from support import require

from edge.client import Acks, Admin, Consumer, Offset, Producer
from edge.protocol.errors import (
    AuthorizationFailed,
    ConnectionLost,
    HeadwaterError,
)
from edge.sc.config import ScConfig
from edge.sc.service import Sc
from edge.spu.config import SpuConfig
from edge.spu.service import Spu
from edge.tls import TlsConfig, client_context

HW = [sys.executable, "-m", "edge.cli.main"]
USERS = ("admin", "alice", "bob", "carol")


def tls(*args: str) -> None:
    out = subprocess.run([*HW, "tls", *args], capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def expired_cert(pki: Path) -> tuple[Path, Path]:
    """A user certificate of the right CA whose life ended yesterday."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ca_cert = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alice")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=30))
            .not_valid_after(now - datetime.timedelta(days=1))
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    crt, pem = pki / "expired.crt", pki / "expired.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    return crt, pem


class Cluster:
    def __init__(self, tmp: Path) -> None:
        try:
            import cryptography  # noqa: F401
        except ImportError:
            require(False, "the cryptography package (pip install 'headwater[tls]')")
        self.tmp = tmp
        self.pki = tmp / "pki"
        tls("init", "--dir", str(self.pki))
        tls("init", "--dir", str(tmp / "other"))  # another deployment's CA
        tls("issue", "--dir", str(tmp / "other"), "--kind", "user", "alice")
        tls("issue", "--dir", str(self.pki), "--kind", "sc", "--host", "127.0.0.1")
        tls("issue", "--dir", str(self.pki), "--kind", "spu", "--id", "1", "--host",
            "127.0.0.1")
        for user in USERS:
            tls("issue", "--dir", str(self.pki), "--kind", "user", user)
        self.ca = self.pki / "ca.crt"
        self.sc: Sc | None = None
        self.spu: Spu | None = None

    def server_tls(self, name: str) -> TlsConfig:
        return TlsConfig(cert=self.pki / f"{name}.crt", key=self.pki / f"{name}.key",
                         ca=self.ca, verify_client=True)

    async def start_sc(self) -> Sc:
        self.sc = Sc(ScConfig(data_dir=self.tmp / "sc", public_addr="127.0.0.1:0",
                              private_addr="127.0.0.1:0", insecure_private=True,
                              tls=self.server_tls("sc"), authorization=True,
                              superusers=("admin",)))
        await self.sc.start()
        return self.sc

    async def start_spu(self) -> Spu:
        assert self.sc is not None
        self.spu = Spu(SpuConfig(id=1, data_dir=self.tmp / "spu", public_addr="127.0.0.1:0",
                                 private_addr="127.0.0.1:0", sc=self.sc.private_addr,
                                 insecure_private=True, tls=self.server_tls("spu-1")))
        await self.spu.start()
        return self.spu

    def ssl_for(self, user: str | None, *, pki: Path | None = None,
                files: tuple[Path, Path] | None = None) -> ssl.SSLContext:
        if files is not None:
            return client_context(TlsConfig(ca=self.ca, cert=files[0], key=files[1]))
        if user is None:
            return client_context(TlsConfig(ca=self.ca))
        where = pki or self.pki
        return client_context(TlsConfig(ca=self.ca, cert=where / f"{user}.crt",
                                        key=where / f"{user}.key"))

    @property
    def addr(self) -> str:
        assert self.sc is not None
        return self.sc.public_addr


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path)
    await c.start_sc()
    spu = await c.start_spu()
    assert spu.link is not None
    await asyncio.wait_for(spu.link.registered_once.wait(), 10)
    try:
        yield c
    finally:
        if c.spu is not None:
            await c.spu.stop()
        if c.sc is not None:
            await c.sc.stop()


async def produce(c: Cluster, user: str, topic: str, value: bytes) -> Any:
    async with Producer(c.addr, acks=Acks.ALL, ssl=c.ssl_for(user), delivery_timeout_s=5
                        ) as p:
        return await (await p.send(topic, value))


async def consume(c: Cluster, user: str, topic: str) -> list[bytes]:
    async with Consumer(c.addr, topic, offset=Offset.beginning(), stop_at_end=True,
                        ssl=c.ssl_for(user)) as cons:
        return [r.value async for r in cons]


async def until_denied(call: Any, timeout: float = 10.0) -> None:
    """The rules reach the SPU with the next assignment push: within moments."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                await call()
            except AuthorizationFailed:
                return
            await asyncio.sleep(0.2)


async def test_each_principal_may_do_what_a_rule_allows_and_nothing_else(
        cluster: Cluster) -> None:
    c = cluster
    async with Admin(c.addr, ssl=c.ssl_for("admin")) as admin:
        for topic in ("t", "sensors.a", "other"):
            await admin.create_topic(topic)
            await admin.wait_ready(topic)
        await admin.add_acl("alice", "produce", "topic:t")
        await admin.add_acl("alice", "produce", "topic:sensors.*")
        await admin.add_acl("bob", "consume", "topic:t")
        enabled, rules = await admin.list_acls()
    assert enabled
    assert len(rules) == 3

    # alice: produce where allowed (exact and prefix), nothing else.
    await asyncio.sleep(0.5)  # the push to the SPU
    assert (await produce(c, "alice", "t", b"from alice")).offset == 0
    assert (await produce(c, "alice", "sensors.a", b"prefix")).offset == 0
    with pytest.raises(AuthorizationFailed, match="alice may not produce topic:other"):
        await produce(c, "alice", "other", b"x")
    with pytest.raises(AuthorizationFailed, match="consume topic:t"):
        await consume(c, "alice", "t")
    async with Admin(c.addr, ssl=c.ssl_for("alice")) as admin:
        with pytest.raises(AuthorizationFailed, match="create topic:mine"):
            await admin.create_topic("mine")
        with pytest.raises(AuthorizationFailed, match="admin cluster"):
            await admin.add_acl("alice", "admin", "cluster")
        with pytest.raises(AuthorizationFailed, match="delete topic:t"):
            await admin.delete_topic("t")

    # bob: reads t, may not write it.
    assert await consume(c, "bob", "t") == [b"from alice"]
    with pytest.raises(AuthorizationFailed, match="bob may not produce topic:t"):
        await produce(c, "bob", "t", b"x")

    # carol: a good certificate and no rule: nothing at all.
    with pytest.raises(AuthorizationFailed):
        await produce(c, "carol", "t", b"x")
    with pytest.raises(AuthorizationFailed):
        await consume(c, "carol", "t")
    async with Admin(c.addr, ssl=c.ssl_for("carol")) as admin:
        with pytest.raises(AuthorizationFailed, match="describe cluster"):
            await admin.list_topics()

    # A rule taken back stops working on the SPU too.
    async with Admin(c.addr, ssl=c.ssl_for("admin")) as admin:
        await admin.remove_acl("alice", "produce", "topic:t")
    await until_denied(lambda: produce(c, "alice", "t", b"again"))

    # The SC and SPU counted the denials; what was allowed is all that is stored.
    assert c.sc is not None
    assert c.spu is not None
    assert c.sc.authorizer.denied >= 4
    assert c.spu.replicas.authorizer.denied >= 4
    assert await consume(c, "admin", "t") == [b"from alice"]


@pytest.mark.parametrize("who", ["no certificate", "another CA", "expired"])
async def test_a_connection_without_a_valid_certificate_gets_nowhere(
        cluster: Cluster, who: str) -> None:
    c = cluster
    ctx = {"no certificate": lambda: c.ssl_for(None),
           "another CA": lambda: c.ssl_for("alice", pki=c.tmp / "other"),
           "expired": lambda: c.ssl_for(None, files=expired_cert(c.pki))}[who]()
    with pytest.raises((ConnectionLost, HeadwaterError, ssl.SSLError, OSError)) as err:
        async with Admin(c.addr, ssl=ctx) as admin:
            await admin.list_topics()
    assert not isinstance(err.value, AuthorizationFailed)  # refused before any request


async def test_an_spu_restarted_while_the_sc_is_away_keeps_the_rules(
        cluster: Cluster) -> None:
    c = cluster
    async with Admin(c.addr, ssl=c.ssl_for("admin")) as admin:
        await admin.create_topic("t")
        await admin.wait_ready("t")
        await admin.add_acl("alice", "produce", "topic:t")
    await asyncio.sleep(0.5)
    assert c.spu is not None
    spu_addr = c.spu.public_addr
    assert c.sc is not None
    await c.sc.stop()
    c.sc = None
    await c.spu.stop()
    spu = Spu(SpuConfig(id=1, data_dir=c.tmp / "spu", public_addr=spu_addr,
                        private_addr="127.0.0.1:0", sc="127.0.0.1:9", insecure_private=True,
                        tls=c.server_tls("spu-1")))
    await spu.start()
    c.spu = spu
    try:
        assert spu.replicas.authorizer.enabled
        assert len(spu.replicas.authorizer.rules) == 1
        assert not spu.replicas.authorizer.allows("carol", *_produce_t())
        assert spu.replicas.authorizer.allows("alice", *_produce_t())
    finally:
        pass


def _produce_t() -> tuple[Any, str]:
    from edge.acl import Operation

    return Operation.PRODUCE, "topic:t"


@pytest.mark.parametrize("superusers", [["x" * 201], [""], ["a"] * 257, "admin", [3]])
def test_superusers_beyond_what_an_spu_takes_are_refused_at_the_config(
        tmp_path: Path, superusers: object) -> None:
    """The push carrying them to the SPUs has these bounds; a config past them would
    leave every SPU refusing its assignment."""
    from edge.config import ConfigError

    with pytest.raises(ConfigError, match="superusers"):
        ScConfig.from_dict({"data_dir": str(tmp_path), "insecure_private": True,
                            "superusers": superusers})

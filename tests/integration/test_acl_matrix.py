"""Who may do what, against a real SC and SPU with mutual TLS and authorization on.

Certificates come from ``headwater tls``; ACLs are added and removed with the
``headwater acl`` commands' client. Each principal is tried at each operation:
allowed where a rule says so, AUTHORIZATION_FAILED everywhere else; no
certificate, another CA's certificate and an expired one do not get past TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from support import require

from edge.client import Acks, Admin, Consumer, Offset, Producer
from edge.protocol.errors import (
    AuthenticationFailed,
    AuthorizationFailed,
    ConnectionLost,
    HeadwaterError,
    InvalidRequest,
)
from edge.sc.config import ScConfig
from edge.sc.service import Sc
from edge.spu.config import SpuConfig
from edge.spu.service import Spu
from edge.storage.mirror import token_digest
from edge.tls import TlsConfig, client_context

HW = [sys.executable, "-m", "edge.cli.main"]
USERS = ("admin", "alice", "bob", "carol")


def tls(*args: str) -> None:
    out = subprocess.run([*HW, "tls", *args], capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def expired_cert(pki: Path) -> tuple[Path, Path]:
    """A user certificate of the right CA whose life ended yesterday."""
    return signed_cert(pki, "alice", "expired", days=(-30, -1))


def signed_cert(pki: Path, common_name: str, file_name: str, *,
                days: tuple[int, int] = (-1, 30)) -> tuple[Path, Path]:
    """A certificate of the deployment's CA for ``common_name``, valid between the
    two day offsets from now, made without the checks of ``headwater tls issue``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ca_cert = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now + datetime.timedelta(days=days[0]))
            .not_valid_after(now + datetime.timedelta(days=days[1]))
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    crt, pem = pki / f"{file_name}.crt", pki / f"{file_name}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    return crt, pem


class Cluster:
    def __init__(self, tmp: Path, *, optional_client: bool = False) -> None:
        self.optional_client = optional_client
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
                         ca=self.ca, verify_client=True,
                         optional_client=self.optional_client)

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
    async with running(Cluster(tmp_path)) as c:
        yield c


@pytest.fixture
async def token_cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    """Client certificates verified when given (verify_client = "optional"): token
    callers connect with none."""
    async with running(Cluster(tmp_path, optional_client=True)) as c:
        yield c


@contextlib.asynccontextmanager
async def running(c: Cluster) -> AsyncIterator[Cluster]:
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


async def test_a_role_gives_its_members_its_rules_and_nobody_else(cluster: Cluster) -> None:
    c = cluster
    async with Admin(c.addr, ssl=c.ssl_for("admin")) as admin:
        for topic in ("readings", "other"):
            await admin.create_topic(topic)
            await admin.wait_ready(topic)
        await admin.add_acl("role:writers", "produce", "topic:readings")
        await admin.add_acl("role:readers", "consume", "topic:*")
        await admin.add_acl("alice", "member", "role:writers")
        await admin.add_acl("bob", "member", "role:readers")
        await admin.add_acl("bob", "member", "role:writers")
        with pytest.raises(InvalidRequest, match="roles do not nest"):
            await admin.add_acl("role:readers", "member", "role:writers")
        with pytest.raises(InvalidRequest, match="role:NAME"):
            await admin.add_acl("alice", "member", "topic:readings")
    await asyncio.sleep(0.5)  # the push to the SPU

    # alice: what role:writers may (checked by the SPU), nothing of role:readers.
    assert (await produce(c, "alice", "readings", b"a")).offset == 0
    with pytest.raises(AuthorizationFailed, match="alice may not produce topic:other"):
        await produce(c, "alice", "other", b"x")
    with pytest.raises(AuthorizationFailed, match="alice may not consume topic:readings"):
        await consume(c, "alice", "readings")
    # bob, in both roles: both roles' rules.
    assert (await produce(c, "bob", "readings", b"b")).offset == 1
    assert await consume(c, "bob", "readings") == [b"a", b"b"]
    # carol, in no role: nothing.
    with pytest.raises(AuthorizationFailed):
        await produce(c, "carol", "readings", b"x")
    # A certificate of the right CA that calls itself the role is not its member.
    crt, key = signed_cert(c.pki, "role:writers", "role-writers")
    with pytest.raises(AuthorizationFailed, match="role:writers may not produce"):
        async with Producer(c.addr, acks=Acks.ALL, ssl=c.ssl_for(None, files=(crt, key)),
                            delivery_timeout_s=5) as p:
            await (await p.send("readings", b"impostor"))

    # Leaving the role takes its rights away, on the SPU too.
    async with Admin(c.addr, ssl=c.ssl_for("admin")) as admin:
        await admin.remove_acl("alice", "member", "role:writers")
    await until_denied(lambda: produce(c, "alice", "readings", b"again"))
    assert (await produce(c, "bob", "readings", b"still")).offset == 2


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


# --- tokens: principals without a client certificate ------------------------------


async def produce_as(c: Cluster, token: str | None, topic: str, value: bytes,
                     user: str | None = None) -> Any:
    async with Producer(c.addr, acks=Acks.ALL, ssl=c.ssl_for(user), token=token,
                        delivery_timeout_s=5) as p:
        return await (await p.send(topic, value))


async def consume_as(c: Cluster, token: str | None, topic: str) -> list[bytes]:
    async with Consumer(c.addr, topic, offset=Offset.beginning(), stop_at_end=True,
                        ssl=c.ssl_for(None), token=token) as cons:
        return [r.value async for r in cons]


async def revoked_while_connected(c: Cluster, made: Any) -> None:
    """Produce with ``made``'s token, revoke it, and keep sending until refused."""
    async with Producer(c.addr, acks=Acks.ALL, ssl=c.ssl_for(None), token=made.token,
                        delivery_timeout_s=5) as p:
        assert (await (await p.send("t", b"before"))).offset == 1
        async with Admin(c.addr, ssl=c.ssl_for("admin")) as admin:
            await admin.revoke_token(made.name)
            assert [t.revoked_ms is not None for t in await admin.list_tokens()] == [
                True, False]
        async with asyncio.timeout(10):
            while True:
                await (await p.send("t", b"after"))
                await asyncio.sleep(0.2)


async def test_a_token_is_its_principal_until_it_is_revoked(token_cluster: Cluster) -> None:
    c = token_cluster
    async with Admin(c.addr, ssl=c.ssl_for("admin")) as admin:
        await admin.create_topic("t")
        await admin.wait_ready("t")
        dave = await admin.create_token("dave")
        gw = await admin.create_token("kitchen", "gateway")
        await admin.add_acl("dave", "produce", "topic:t")
        await admin.add_acl("gateway-kitchen", "consume", "topic:t")
        listed = await admin.list_tokens()
    assert (dave.principal, gw.principal) == ("dave", "gateway-kitchen")
    assert dave.token.startswith("hwt_")
    assert dave.token != gw.token
    assert [(t.name, t.principal, t.token_id, t.revoked_ms) for t in listed] == [
        ("dave", "dave", dave.token_id, None), ("kitchen", "gateway-kitchen", gw.token_id, None)]
    # Hashed at rest: the SC's database holds no token.
    db = b"".join(p.read_bytes() for p in (c.tmp / "sc").glob("metadata.sqlite*"))
    assert dave.token.encode() not in db
    assert gw.token.encode() not in db

    await asyncio.sleep(0.5)  # the tokens reach the SPU with the next push
    assert (await produce_as(c, dave.token, "t", b"from dave")).offset == 0
    assert await consume_as(c, gw.token, "t") == [b"from dave"]
    with pytest.raises(AuthorizationFailed, match="dave may not consume topic:t"):
        await consume_as(c, dave.token, "t")
    with pytest.raises(AuthorizationFailed, match="anonymous may not produce"):
        await produce_as(c, None, "t", b"x")
    with pytest.raises(AuthenticationFailed, match="unknown or revoked token"):
        await produce_as(c, "hwt_" + "x" * 43, "t", b"x")
    # A certificate and another principal's token: one connection, one principal.
    with pytest.raises(AuthenticationFailed, match="one principal"):
        await produce_as(c, dave.token, "t", b"x", user="alice")

    # Revoked: a producer already connected is refused at its next request, on the
    # SC at once and on the SPU once the push arrives; new connections get nowhere.
    with pytest.raises(AuthenticationFailed, match="revoked"):
        await revoked_while_connected(c, dave)
    with pytest.raises(AuthenticationFailed):
        async with Admin(c.addr, ssl=c.ssl_for(None), token=dave.token) as admin:
            await admin.list_topics()
    assert c.spu is not None
    assert c.spu.replicas.tokens.failures >= 1
    assert await consume_as(c, gw.token, "t") == [b"from dave", b"before"]


async def test_tokens_rotate_without_a_gap(token_cluster: Cluster) -> None:
    """Two live tokens for one principal: deploy the new one, then revoke the old by id."""
    c = token_cluster
    async with Admin(c.addr, ssl=c.ssl_for("admin")) as admin:
        await admin.create_topic("t")
        await admin.wait_ready("t")
        await admin.add_acl("dave", "produce", "topic:t")
        old = await admin.create_token("dave")
        new = await admin.create_token("dave")
        await admin.revoke_token("dave", old.token_id)
        with pytest.raises(InvalidRequest, match="no live token with id"):
            await admin.revoke_token("dave", old.token_id)
    await asyncio.sleep(0.5)
    assert (await produce_as(c, new.token, "t", b"new")).offset == 0
    with pytest.raises(AuthenticationFailed):
        await produce_as(c, old.token, "t", b"old")


async def test_an_spu_restarted_while_the_sc_is_away_keeps_the_tokens(
        token_cluster: Cluster) -> None:
    c = token_cluster
    async with Admin(c.addr, ssl=c.ssl_for("admin")) as admin:
        made = await admin.create_token("dave")
    await asyncio.sleep(0.5)
    assert c.sc is not None
    assert c.spu is not None
    await c.sc.stop()
    c.sc = None
    await c.spu.stop()
    c.spu = Spu(SpuConfig(id=1, data_dir=c.tmp / "spu", public_addr="127.0.0.1:0",
                          private_addr="127.0.0.1:0", sc="127.0.0.1:9", insecure_private=True,
                          tls=c.server_tls("spu-1")))
    await c.spu.start()
    assert c.spu.replicas.tokens.grants() == [(token_digest(made.token), "dave")]


@pytest.mark.parametrize(("kind", "name"), [("user", "spu-3"), ("user", "site-north"),
                                            ("user", "gateway-x"), ("user", "sc"),
                                            ("user", "anonymous"), ("user", "../x")])
async def test_no_token_passes_for_another_kind_of_principal(
        token_cluster: Cluster, kind: str, name: str) -> None:
    async with Admin(token_cluster.addr, ssl=token_cluster.ssl_for("admin")) as admin:
        with pytest.raises(InvalidRequest):
            await admin.create_token(name, kind)


def test_no_user_certificate_passes_for_an_spu(tmp_path: Path) -> None:
    out = subprocess.run([*HW, "tls", "init", "--dir", str(tmp_path)], capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    out = subprocess.run([*HW, "tls", "issue", "--dir", str(tmp_path), "--kind", "user",
                          "spu-1"], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2
    assert "begin with spu-" in out.stderr
    assert not (tmp_path / "spu-1.crt").exists()


# --- certificate expiry in cluster status and metrics ------------------------------


async def test_cluster_status_names_certificates_near_their_end(tmp_path: Path) -> None:
    c = Cluster(tmp_path)
    tls("issue", "--dir", str(c.pki), "--kind", "sc", "--host", "127.0.0.1", "--days", "5",
        "--force")
    async with running(c):
        assert c.spu is not None
        assert c.spu.link is not None
        await asyncio.sleep(1.5)  # a heartbeat carries the SPU's certificate expiry
        async with Admin(c.addr, ssl=c.ssl_for("admin")) as admin:
            status = await admin.cluster_status()
            spus = await admin.list_spus()
        sc_left = (status["tls_not_after"] - time.time()) / 86400
        assert 4 < sc_left <= 5
        spu_left = (spus[0]["health"]["tls_not_after"] - time.time()) / 86400
        assert spu_left > 800  # the default node lifetime

        from edge.metrics import Metrics

        scrape = Metrics("sc", "test").render().decode()
        assert 'headwater_tls_certificate_expiry_timestamp_seconds{cert="' in scrape

        def cli() -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*HW, "--sc", c.addr, "--tls-ca", str(c.ca), "--tls-cert",
                 str(c.pki / "admin.crt"), "--tls-key", str(c.pki / "admin.key"),
                 "cluster", "status"], capture_output=True, text=True, timeout=60,
                check=False)

        out = await asyncio.to_thread(cli)
    assert out.returncode == 0, out.stderr
    assert "SC certificate expires" in out.stdout
    assert "CERT" in out.stdout
    warnings = [line for line in out.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, out.stderr
    assert "the SC's certificate expires" in warnings[0]

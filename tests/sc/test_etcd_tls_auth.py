"""The SC's etcd metadata store over TLS and with etcd authentication, on real
three-member etcd clusters: one with mutual TLS (``--client-cert-auth``), one with
a server certificate and users (``auth enable``). The stores are opened from an
``sc.toml`` ``[etcd]`` table as ``headwater run sc`` opens them (edge/sc/config.py,
edge/sc/ha.py), and one SC runs as a process on each cluster. A wrong CA, a missing
client certificate and a wrong password are one-line errors, at once."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from etcd_harness import EtcdCluster, EtcdTls
from support import make_pki

from edge.client import Admin
from edge.config import ConfigError
from edge.protocol.errors import HeadwaterError
from edge.sc.config import ScConfig
from edge.sc.etcd import EtcdClient, EtcdError, MetadataUnavailable, prefix_end
from edge.sc.etcd_store import EtcdMetadataStore
from edge.sc.ha import etcd_client
from edge.sc.store import TopicRow
from edge.secret import ClusterSecret
from edge.testing import free_port

ROOT_PASSWORD = "root-secret"
SC_USER, SC_PASSWORD = "headwater", "sc-secret"
# Every key the SC user may read and write is under this prefix (its role's grant).
SC_ROOT = "/hw"
# etcd forgets an auth token unused this long (simple tokens; 300 s by default).
TOKEN_TTL_S = 1
START_TIMEOUT_S = 30.0
# A refusal comes this soon, well within the client's timeout_s of TIMEOUT_S.
QUICK_S, TIMEOUT_S = 3.0, 8.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """A CA with a server (IP 127.0.0.1) and a client certificate, and ``intruder``
    signed by ``rogue-ca``, a CA nobody trusts."""
    made = make_pki(tmp_path_factory.mktemp("pki"))
    return {name: (Path(cert), Path(key)) for name, (cert, key) in made.items()}


@pytest.fixture(scope="module")
def mtls_etcd(tmp_path_factory: pytest.TempPathFactory,
              pki: dict[str, tuple[Path, Path]]) -> Iterator[EtcdCluster]:
    """Members that demand a client certificate chaining to the CA."""
    tls = EtcdTls(ca=pki["ca"][0], cert=pki["server"][0], key=pki["server"][1],
                  client_cert_auth=True, client_cert=pki["client"][0],
                  client_key=pki["client"][1])
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd-mtls"), tls=tls)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def auth_etcd(tmp_path_factory: pytest.TempPathFactory,
              pki: dict[str, tuple[Path, Path]]) -> Iterator[EtcdCluster]:
    """Members with a server certificate and auth enabled: ``root``, and the SC's
    user with read and write on ``SC_ROOT/`` only."""
    tls = EtcdTls(ca=pki["ca"][0], cert=pki["server"][0], key=pki["server"][1])
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd-auth"), tls=tls,
                          extra_args=("--auth-token-ttl", str(TOKEN_TTL_S)))
    try:
        cluster.start()
        enable_auth(cluster.client())
        cluster.credentials = ("root", ROOT_PASSWORD)
        yield cluster
    finally:
        cluster.close()


def enable_auth(client: EtcdClient) -> None:
    """What ``etcdctl user add``, ``role add``, ``role grant-permission --prefix``,
    ``user grant-role`` and ``auth enable`` send, through the JSON gateway."""
    root = f"{SC_ROOT}/".encode()
    grant = {"permType": "READWRITE", "key": base64.b64encode(root).decode(),
             "range_end": base64.b64encode(prefix_end(root)).decode()}
    for path, body in [
            ("/v3/auth/user/add", {"name": "root", "password": ROOT_PASSWORD}),
            ("/v3/auth/role/add", {"name": "root"}),
            ("/v3/auth/user/grant", {"user": "root", "role": "root"}),
            ("/v3/auth/user/add", {"name": SC_USER, "password": SC_PASSWORD}),
            ("/v3/auth/role/add", {"name": "sc"}),
            ("/v3/auth/role/grant", {"name": "sc", "perm": grant}),
            ("/v3/auth/user/grant", {"user": SC_USER, "role": "sc"}),
            ("/v3/auth/enable", {})]:
        client._call(path, body)


def sc_toml(directory: Path, cluster: EtcdCluster, **etcd: str | float) -> Path:
    """An ``sc.toml`` whose ``[etcd]`` table has these keys."""
    directory.mkdir(parents=True, exist_ok=True)
    secret = directory / "cluster.secret"
    ClusterSecret.ensure(secret)
    path = directory / "sc.toml"
    path.write_text(f'data_dir = {json.dumps(str(directory / "sc"))}\n'
                    f'cluster_secret_file = {json.dumps(str(secret))}\n'
                    f'metadata = "etcd://{",".join(cluster.endpoints)}"\n[etcd]\n'
                    + "".join(f"{k} = {json.dumps(v)}\n" for k, v in etcd.items()))
    return path


def client_from(path: Path) -> EtcdClient:
    """The etcd client ``headwater run sc --config PATH`` makes."""
    settings = ScConfig.from_toml(path).etcd
    assert settings is not None
    return etcd_client(settings)


def password_file(directory: Path, password: str) -> str:
    path = directory / "etcd-password"
    path.write_text(password + "\n")
    path.chmod(0o600)
    return str(path)


def topic(name: str) -> TopicRow:
    return TopicRow(name, 1, 1, {}, "waiting", 1000)


def refused(call: Any, error: type[Exception]) -> tuple[str, float]:
    """The message of the error ``call()`` raises, and how long it took."""
    started = time.monotonic()
    with pytest.raises(error) as caught:
        call()
    return str(caught.value), time.monotonic() - started


# --- mutual TLS ----------------------------------------------------------------------


def test_an_sc_store_over_mutual_tls_writes_and_reads_back(
        mtls_etcd: EtcdCluster, pki: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    prefix = f"{SC_ROOT}/mtls-store"
    config = sc_toml(tmp_path, mtls_etcd, prefix=prefix, ca=str(pki["ca"][0]),
                     cert=str(pki["client"][0]), key=str(pki["client"][1]))
    store = EtcdMetadataStore(client_from(config), prefix=f"{prefix}/meta", fence=None)
    store.add_topic(topic("t"), [])
    again = EtcdMetadataStore(client_from(config), prefix=f"{prefix}/meta", fence=None)
    assert again.topic("t") == topic("t")
    assert again.get_meta("cluster_id") == store.get_meta("cluster_id")
    # Really in etcd, as another client sees it.
    assert mtls_etcd.client().range(f"{prefix}/meta/", prefix=True)


@pytest.mark.parametrize("certificate", [None, "intruder"])
def test_a_client_without_a_trusted_certificate_is_refused_at_once(
        mtls_etcd: EtcdCluster, pki: dict[str, tuple[Path, Path]], tmp_path: Path,
        certificate: str | None) -> None:
    keys: dict[str, str | float] = {"ca": str(pki["ca"][0]), "timeout_s": TIMEOUT_S}
    if certificate is not None:  # one from a CA the members do not trust
        keys.update(cert=str(pki[certificate][0]), key=str(pki[certificate][1]))
    client = client_from(sc_toml(tmp_path, mtls_etcd, prefix=f"{SC_ROOT}/no-cert", **keys))
    message, took = refused(lambda: EtcdMetadataStore(client, prefix=f"{SC_ROOT}/no-cert/meta",
                                                      fence=None), MetadataUnavailable)
    assert "bad certificate" in message
    assert "\n" not in message
    assert took < QUICK_S  # the handshake fails; no waiting out timeout_s


def test_a_wrong_ca_is_refused_at_once_naming_certificate_verification(
        mtls_etcd: EtcdCluster, pki: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    config = sc_toml(tmp_path, mtls_etcd, prefix=f"{SC_ROOT}/wrong-ca", timeout_s=TIMEOUT_S,
                     ca=str(pki["rogue-ca"][0]), cert=str(pki["client"][0]),
                     key=str(pki["client"][1]))
    client = client_from(config)
    message, took = refused(lambda: client.put(f"{SC_ROOT}/wrong-ca/x", "1"),
                            MetadataUnavailable)
    assert "certificate verify failed" in message
    assert all(endpoint in message for endpoint in mtls_etcd.endpoints)
    assert "\n" not in message
    assert took < QUICK_S


def test_a_plain_http_client_gets_nowhere_on_tls_members(
        mtls_etcd: EtcdCluster, tmp_path: Path) -> None:
    client = client_from(sc_toml(tmp_path, mtls_etcd, prefix=f"{SC_ROOT}/plain",
                                 timeout_s=TIMEOUT_S))
    message, took = refused(lambda: client.get(f"{SC_ROOT}/plain/x"), MetadataUnavailable)
    assert "\n" not in message
    assert took < QUICK_S


# --- authentication ----------------------------------------------------------------


def test_the_sc_store_logs_in_with_username_and_password_file(
        auth_etcd: EtcdCluster, pki: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    prefix = f"{SC_ROOT}/auth-store"
    config = sc_toml(tmp_path, auth_etcd, prefix=prefix, ca=str(pki["ca"][0]),
                     username=SC_USER, password_file=password_file(tmp_path, SC_PASSWORD))
    store = EtcdMetadataStore(client_from(config), prefix=f"{prefix}/meta", fence=None)
    store.add_topic(topic("t"), [])
    again = EtcdMetadataStore(client_from(config), prefix=f"{prefix}/meta", fence=None)
    assert again.topic("t") == topic("t")
    # Auth is really on: without a user etcd answers nothing.
    anonymous = client_from(sc_toml(tmp_path / "anonymous", auth_etcd, prefix=prefix,
                                    ca=str(pki["ca"][0])))
    message, _ = refused(lambda: anonymous.range(f"{prefix}/", prefix=True), EtcdError)
    assert "user name is empty" in message


def test_a_wrong_password_is_a_clear_error(
        auth_etcd: EtcdCluster, pki: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    config = sc_toml(tmp_path, auth_etcd, prefix=f"{SC_ROOT}/wrong-password",
                     timeout_s=TIMEOUT_S, ca=str(pki["ca"][0]), username=SC_USER,
                     password_file=password_file(tmp_path, "not-the-password"))
    client = client_from(config)
    message, took = refused(lambda: EtcdMetadataStore(
        client, prefix=f"{SC_ROOT}/wrong-password/meta", fence=None), EtcdError)
    assert "authentication failed, invalid user ID or password" in message
    assert "/v3/auth/authenticate" in message
    assert "\n" not in message
    assert took < QUICK_S


def test_keys_outside_the_users_grant_are_denied(
        auth_etcd: EtcdCluster, pki: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    config = sc_toml(tmp_path, auth_etcd, prefix="/elsewhere", ca=str(pki["ca"][0]),
                     username=SC_USER, password_file=password_file(tmp_path, SC_PASSWORD))
    message, _ = refused(lambda: EtcdMetadataStore(client_from(config),
                                                   prefix="/elsewhere/meta", fence=None),
                         EtcdError)
    assert "permission denied" in message


def test_an_expired_token_is_replaced_for_reads_writes_and_watches(
        auth_etcd: EtcdCluster, pki: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    prefix = f"{SC_ROOT}/token"
    config = sc_toml(tmp_path, auth_etcd, prefix=prefix, ca=str(pki["ca"][0]),
                     username=SC_USER, password_file=password_file(tmp_path, SC_PASSWORD))
    client = client_from(config)
    revision = client.put(f"{prefix}/a", "1")
    time.sleep(TOKEN_TTL_S + 2)  # etcd checks token expiry once a second
    watch = client.watch(f"{prefix}/", prefix=True, start_revision=revision)
    try:
        events = next(watch.events())
    finally:
        watch.close()
    assert [(e.key, e.value) for e in events] == [(f"{prefix}/a".encode(), b"1")]
    time.sleep(TOKEN_TTL_S + 2)
    assert client.put(f"{prefix}/b", "2") > revision
    time.sleep(TOKEN_TTL_S + 2)
    assert client.get(f"{prefix}/b") is not None


def test_a_password_file_that_cannot_be_read_is_a_config_error(
        auth_etcd: EtcdCluster, tmp_path: Path) -> None:
    config = sc_toml(tmp_path, auth_etcd, username=SC_USER,
                     password_file=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match=r"etcd\.password_file"):
        client_from(config)
    with pytest.raises(ConfigError, match="username and password_file go together"):
        client_from(sc_toml(tmp_path, auth_etcd, username=SC_USER))


# --- `headwater run sc` ----------------------------------------------------------------


async def create_topic_when_active(addr: str, proc: subprocess.Popen[bytes], log: Path,
                                   name: str) -> str:
    """Create the topic as soon as the SC is active (a standby refuses it)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"SC exited with {proc.returncode}:\n"
                                 + log.read_text(errors="replace")[-3000:])
        try:
            async with Admin(addr) as admin:
                return await admin.create_topic(name, partitions=1, replication=1)
        except (HeadwaterError, OSError) as exc:
            last = exc
        await asyncio.sleep(0.1)
    raise AssertionError(f"SC not active within {START_TIMEOUT_S}s ({last}):\n"
                         + log.read_text(errors="replace")[-3000:])


@contextlib.contextmanager
def running_sc(config: Path, log: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``headwater run sc --config CONFIG``: its public address and process; it must
    stop cleanly on SIGTERM."""
    public = f"127.0.0.1:{free_port()}"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edge.cli.main", "run", "sc", "--config", str(config),
             "--public-addr", public, "--private-addr", f"127.0.0.1:{free_port()}",
             "--log-level", "info"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield public, proc
    finally:
        proc.terminate()
        try:
            code = proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait(15)
    assert code == 0, log.read_text(errors="replace")[-3000:]


@pytest.mark.parametrize("security", ["mutual-tls", "password"])
async def test_headwater_run_sc_keeps_its_topics_in_secured_etcd(
        mtls_etcd: EtcdCluster, auth_etcd: EtcdCluster, pki: dict[str, tuple[Path, Path]],
        tmp_path: Path, security: str) -> None:
    prefix = f"{SC_ROOT}/run-sc-{security}"
    if security == "mutual-tls":
        cluster = mtls_etcd
        keys: dict[str, str | float] = {"cert": str(pki["client"][0]),
                                        "key": str(pki["client"][1])}
    else:
        cluster = auth_etcd
        keys = {"username": SC_USER, "password_file": password_file(tmp_path, SC_PASSWORD)}
    config = sc_toml(tmp_path, cluster, prefix=prefix, ttl_s=2, ca=str(pki["ca"][0]), **keys)
    log = tmp_path / "sc.log"
    with running_sc(config, log) as (public, proc):
        await create_topic_when_active(public, proc, log, "secured")
        async with Admin(public) as admin:
            assert "secured" in [t["name"] for t in await admin.list_topics()]
    # In etcd, under the prefix of the config, as the next active SC reads it.
    stored = EtcdMetadataStore(cluster.client(), prefix=f"{prefix}/meta", fence=None)
    found = stored.topic("secured")
    assert found is not None
    assert found.partitions == 1


async def test_headwater_run_sc_with_a_wrong_ca_says_so_and_stays_standby(
        mtls_etcd: EtcdCluster, pki: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    config = sc_toml(tmp_path, mtls_etcd, prefix=f"{SC_ROOT}/run-sc-wrong-ca", ttl_s=2,
                     ca=str(pki["rogue-ca"][0]), cert=str(pki["client"][0]),
                     key=str(pki["client"][1]))
    log = tmp_path / "sc.log"
    with running_sc(config, log) as (_, proc):
        deadline = time.monotonic() + START_TIMEOUT_S
        while "etcd unavailable" not in log.read_text(errors="replace"):
            assert proc.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            await asyncio.sleep(0.1)
        await asyncio.sleep(1)  # a few more election rounds
    text = log.read_text(errors="replace")
    election = [line for line in text.splitlines() if "edge.sc.election" in line]
    assert len(election) == 1  # said once, not once a round
    assert "certificate verify failed" in election[0]
    assert "Traceback" not in text
    assert "SC active" not in text

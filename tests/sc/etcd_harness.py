"""A real etcd cluster of three members on 127.0.0.1 for the tests (free ports,
data in a temporary directory), whose members can be stopped, killed, paused
(SIGSTOP) and started again. With ``tls`` the client URLs are https (optionally
demanding client certificates); with ``credentials`` set (after auth is enabled)
the harness's own clients log in."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from support import require_binary

from edge.sc.etcd import EtcdClient, MetadataUnavailable
from edge.testing import free_port
from edge.tls import TlsConfig, client_context

START_TIMEOUT_S = 30.0


@dataclass(frozen=True, kw_only=True)
class EtcdTls:
    """Every member's server certificate (valid for IP 127.0.0.1) and the CA it
    chains to; with ``client_cert_auth`` members demand client certificates chaining
    to ``ca``, and the harness presents ``client_cert``."""

    ca: Path
    cert: Path
    key: Path
    client_cert_auth: bool = False
    client_cert: Path | None = None
    client_key: Path | None = None

    def client_config(self) -> TlsConfig:
        return TlsConfig(ca=self.ca, cert=self.client_cert, key=self.client_key)

    def member_args(self) -> list[str]:
        args = ["--cert-file", str(self.cert), "--key-file", str(self.key)]
        # A trusted CA alone makes etcd demand client certificates too.
        return ([*args, "--trusted-ca-file", str(self.ca), "--client-cert-auth"]
                if self.client_cert_auth else args)


class Member:
    def __init__(self, name: str, directory: Path) -> None:
        self.name = name
        self.directory = directory
        self.client_port = free_port()
        self.peer_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"


class EtcdCluster:
    """``size`` members bootstrapped statically (``--initial-cluster``)."""

    def __init__(self, directory: Path, *, size: int = 3, tls: EtcdTls | None = None,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.binary = require_binary("etcd")
        self.directory = directory
        self.members = [Member(f"m{i}", directory / f"m{i}") for i in range(size)]
        self.token = f"headwater-test-{os.getpid()}-{time.monotonic_ns()}"
        self.tls = tls
        self.extra_args = extra_args  # more etcd flags for every member
        # (user, password) the harness logs in with once auth is enabled (root).
        self.credentials: tuple[str, str] | None = None

    @property
    def scheme(self) -> str:
        return "http" if self.tls is None else "https"

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def client(self, *, timeout_s: float = 2.0, endpoints: list[str] | None = None
               ) -> EtcdClient:
        user, password = self.credentials or (None, None)
        return EtcdClient(endpoints or self.endpoints, timeout_s=timeout_s,
                          ssl_context=None if self.tls is None
                          else client_context(self.tls.client_config()),
                          username=user, password=password)

    def start(self) -> None:
        for i in range(len(self.members)):
            self.start_member(i, wait=False)
        self.wait_healthy()

    def start_member(self, index: int, *, wait: bool = True) -> None:
        m = self.members[index]
        assert m.process is None or m.process.poll() is not None, f"{m.name} runs"
        m.directory.mkdir(parents=True, exist_ok=True)
        state = "existing" if (m.directory / "data" / "member").exists() else "new"
        initial = ",".join(f"{o.name}={o.peer_url}" for o in self.members)
        log = (m.directory / "etcd.log").open("ab")
        m.process = subprocess.Popen(
            [self.binary, "--name", m.name, "--data-dir", str(m.directory / "data"),
             "--listen-client-urls", f"{self.scheme}://{m.endpoint}",
             "--advertise-client-urls", f"{self.scheme}://{m.endpoint}",
             *(self.tls.member_args() if self.tls is not None else []),
             "--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url,
             "--initial-cluster", initial, "--initial-cluster-state", state,
             "--initial-cluster-token", self.token,
             "--heartbeat-interval", "50", "--election-timeout", "500",
             "--log-level", "warn", "--logger", "zap", *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        if wait:
            self.wait_healthy()

    def stop_member(self, index: int) -> None:
        """SIGTERM, as systemd stops it."""
        self._end(index, signal.SIGTERM)

    def kill_member(self, index: int) -> None:
        self._end(index, signal.SIGKILL)

    def pause_member(self, index: int) -> None:
        p = self.members[index].process
        assert p is not None
        p.send_signal(signal.SIGSTOP)

    def resume_member(self, index: int) -> None:
        p = self.members[index].process
        assert p is not None
        p.send_signal(signal.SIGCONT)

    def _end(self, index: int, sig: signal.Signals) -> None:
        p = self.members[index].process
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGCONT)
        p.send_signal(sig)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)

    def running(self) -> list[int]:
        return [i for i, m in enumerate(self.members)
                if m.process is not None and m.process.poll() is None]

    def leader_index(self) -> int:
        """The member that is raft leader now."""
        client = self.client(timeout_s=1.0)
        for i in self.running():
            if client.status(self.members[i].endpoint)["leader"]:
                return i
        raise AssertionError("no etcd leader")

    def wait_healthy(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Until every running member answers and a write through each commits."""
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                for i in self.running():
                    only = self.client(timeout_s=1.0, endpoints=[self.members[i].endpoint])
                    only.put("/health-check", self.members[i].name)
                return
            except MetadataUnavailable as exc:
                last = exc
                time.sleep(0.1)
        self.dump_logs()
        raise AssertionError(f"etcd not healthy within {timeout_s}s: {last}")

    def dump_logs(self) -> None:
        for m in self.members:
            path = m.directory / "etcd.log"
            if path.exists():
                print(f"--- {m.name} ---\n{path.read_text(errors='replace')[-4000:]}")

    def close(self) -> None:
        for i in range(len(self.members)):
            self.kill_member(i)

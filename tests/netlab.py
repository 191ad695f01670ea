"""A LAN of network namespaces for multi-host tests (importable as ``netlab``).

Each host is a network namespace with one veth interface ``eth0`` plugged into a
bridge that lives in a namespace of its own (the "switch"), so nothing touches
the machine's own interfaces. Hosts get addresses in 198.18.0.0/15 (the range
reserved for network benchmarks) and no default route: nothing can leave the
lab. Multicast snooping is off on the bridge, as on a plain home switch, so mDNS
reaches every host. Needs root and iproute2; ``require`` makes a missing
privilege a failure in CI.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from support import require, require_root


def _ip(*args: str) -> str:
    out = subprocess.run(["ip", *args], check=True, capture_output=True, text=True)
    return out.stdout


class Host:
    """One namespace on the LAN."""

    def __init__(self, lab: Lab, name: str, ns: str) -> None:
        self.lab = lab
        self.name = name
        self.ns = ns
        self.addresses: list[str] = []

    def ip(self, *args: str) -> str:
        return _ip("-n", self.ns, *args)

    def set_address(self, address: str, *, prefix: int = 24) -> None:
        """Replace the host's address (a new DHCP lease)."""
        for old in self.addresses:
            self.ip("addr", "del", f"{old}/{prefix}", "dev", "eth0")
        self.ip("addr", "add", f"{address}/{prefix}", "dev", "eth0")
        self.addresses = [address]

    def argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *argv]

    def start(self, argv: Sequence[str], *, log: Path, env: dict[str, str] | None = None
              ) -> subprocess.Popen[bytes]:
        """A process inside the namespace, its output appended to ``log``."""
        handle: IO[Any] = log.open("ab")
        proc = subprocess.Popen(self.argv(argv), stdout=handle, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})}, start_new_session=True)
        handle.close()
        self.lab.processes.append(proc)
        return proc

    def run(self, argv: Sequence[str], *, timeout: float = 60, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(argv), capture_output=True, text=True,
                              timeout=timeout, check=check)


class Lab:
    """Bridges and hosts, torn down with every process started in them."""

    def __init__(self) -> None:
        require_root()
        require(shutil.which("ip") is not None, "iproute2 (ip) is not installed")
        self.prefix = f"hw{secrets.token_hex(3)}"
        self.namespaces: list[str] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        self.hosts: dict[str, Host] = {}
        self._ports = 0

    def _netns(self, name: str) -> str:
        ns = f"{self.prefix}-{name}"
        _ip("netns", "add", ns)
        self.namespaces.append(ns)
        _ip("-n", ns, "link", "set", "lo", "up")
        return ns

    def bridge(self, name: str) -> str:
        """A switch: a namespace holding bridge ``br0``."""
        ns = self._netns(name)
        _ip("-n", ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", ns, "link", "set", "br0", "type", "bridge", "mcast_snooping", "0")
        _ip("-n", ns, "link", "set", "br0", "up")
        return ns

    def host(self, name: str, switch: str, address: str) -> Host:
        ns = self._netns(name)
        self._ports += 1
        port = f"p{self._ports}"
        _ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", port,
            "netns", switch)
        _ip("-n", switch, "link", "set", port, "master", "br0", "up")
        h = Host(self, name, ns)
        h.set_address(address)
        h.ip("link", "set", "eth0", "up")
        self.hosts[name] = h
        return h

    def close(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)

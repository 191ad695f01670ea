"""A LAN of network namespaces for multi-host tests (importable as ``netlab``).

Each host is a network namespace with one veth interface ``eth0`` plugged into a
bridge that lives in a namespace of its own (the "switch"), so nothing touches
the machine's own interfaces. Hosts get addresses in 198.18.0.0/15 (the range
reserved for network benchmarks) and no default route: nothing can leave the
lab. Multicast snooping is off on the bridge, as on a plain home switch, so mDNS
reaches every host. Needs root and iproute2; ``require`` makes a missing
privilege a failure in CI.

Several LANs are joined by a router (``Lab.router``): a namespace with a leg on
each bridge and IP forwarding on; hosts reach another LAN only through a route
added with ``Host.route``, still never a default route. Each leg is a veth pair
whose ends (``Router.legs``) can be slowed down one direction each
(``Lab.limit_rate``: ``tc tbf``, a qdisc every kernel has, and ``tc netem`` delay
under it where the kernel has netem) or
unplugged (``Lab.set_link``); ``Router.blackhole`` cuts the router off without
a sound (packets vanish, nothing answers).
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
from typing import IO, Any, NamedTuple

from support import require, require_root


def _ip(*args: str) -> str:
    out = subprocess.run(["ip", *args], check=True, capture_output=True, text=True)
    return out.stdout


def tc(end: End, *args: str, check: bool = True) -> None:
    subprocess.run(["ip", "netns", "exec", end.ns, "tc", *args], check=check,
                   capture_output=True)


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

    def route(self, subnet: str, via: str) -> None:
        """Reach another LAN of the lab (``198.18.2.0/24``) through a router."""
        self.ip("route", "replace", subnet, "via", via)

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


# Ahead of the main routing table (32766).
BLACKHOLE_PRIORITY = 100


class End(NamedTuple):
    """One end of a veth pair: the namespace and the device. Traffic shaped at an
    end is what leaves through it."""

    ns: str
    dev: str


class Router(Host):
    """A host with a leg on several bridges that forwards between them."""

    def __init__(self, lab: Lab, name: str, ns: str) -> None:
        super().__init__(lab, name, ns)
        # switch -> (the router's end, the switch's end) of the leg's veth pair
        self.legs: dict[str, tuple[End, End]] = {}

    def blackhole(self, *, on: bool = True) -> None:
        """Silently drop every packet that arrives on any leg (a cut where nothing
        answers, not even with ICMP: connections hang until their own timeouts),
        or forward again with ``on=False``."""
        rules = self.ip("rule", "show", "priority", str(BLACKHOLE_PRIORITY))
        for end, _ in self.legs.values():
            present = f"iif {end.dev} blackhole" in rules
            if on != present:
                self.ip("rule", "add" if on else "del", "iif", end.dev, "priority",
                        str(BLACKHOLE_PRIORITY), "blackhole")


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
        port = self._port()
        _ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", port,
            "netns", switch)
        _ip("-n", switch, "link", "set", port, "master", "br0", "up")
        h = Host(self, name, ns)
        h.set_address(address)
        h.ip("link", "set", "eth0", "up")
        self.hosts[name] = h
        return h

    def _port(self) -> str:
        self._ports += 1
        return f"p{self._ports}"

    def router(self, name: str, legs: dict[str, str], *, prefix: int = 24) -> Router:
        """A namespace with one leg (``eth0``, ``eth1``, ...) on each switch of
        ``legs`` (switch -> the router's address there), forwarding between them."""
        require(shutil.which("tc") is not None, "iproute2 (tc) is not installed")
        ns = self._netns(name)
        r = Router(self, name, ns)
        for i, (switch, address) in enumerate(legs.items()):
            dev, port = f"eth{i}", self._port()
            _ip("-n", ns, "link", "add", dev, "type", "veth", "peer", "name", port,
                "netns", switch)
            _ip("-n", switch, "link", "set", port, "master", "br0", "up")
            r.ip("addr", "add", f"{address}/{prefix}", "dev", dev)
            r.ip("link", "set", dev, "up")
            r.addresses.append(address)
            r.legs[switch] = (End(ns, dev), End(switch, port))
        # /proc/sys/net belongs to the namespace of whoever opens it.
        r.run(["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"])
        self.hosts[name] = r
        return r

    def limit_rate(self, end: End, rate: str, *, burst: str = "16kb",
                   latency: str = "400ms", delay: str | None = None) -> bool:
        """A slow link: what leaves through ``end`` goes at most at ``rate`` (``tc tbf``;
        ``"1mbit"``), queued up to ``latency``, dropped beyond it; with ``delay``
        (``"20ms"``) also that much later, by ``tc netem`` under the tbf. Returns
        whether the delay is on: kernels built without netem have only the rate."""
        tc(end, "qdisc", "replace", "dev", end.dev, "root", "handle", "1:", "tbf", "rate",
           rate, "burst", burst, "latency", latency)
        if delay is None:
            return False
        done = subprocess.run(["ip", "netns", "exec", end.ns, "tc", "qdisc", "add", "dev",
                               end.dev, "parent", "1:1", "handle", "10:", "netem", "delay",
                               delay], check=False, capture_output=True)
        return done.returncode == 0

    def clear(self, end: End) -> None:
        """Remove the shaping of ``end`` (nothing to remove is fine)."""
        tc(end, "qdisc", "del", "dev", end.dev, "root", check=False)

    def set_link(self, end: End, *, up: bool) -> None:
        """Unplug (or plug back) one end of a veth pair: the other loses its carrier."""
        _ip("-n", end.ns, "link", "set", end.dev, "up" if up else "down")

    def close(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)

"""One ``AsyncZeroconf`` per process, inside the daemon's event loop.

The SC, SPUs and gateway of one process (``headwater local``) share it: one
socket set on UDP 5353, one cache. If the port cannot be used (another mDNS
stack bound it exclusively, no multicast route), discovery is off with one
clear log line and the node keeps serving on its static configuration.
"""

from __future__ import annotations

import asyncio
import importlib
import ipaddress
import logging
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import psutil

if TYPE_CHECKING:
    from zeroconf.asyncio import AsyncZeroconf

log = logging.getLogger(__name__)


class MdnsUnavailableError(OSError):
    """UDP 5353 or multicast membership could not be set up."""


def interface_addresses(names: Sequence[str], *, ipv6: bool = False) -> list[str]:
    """The addresses of the named interfaces (all interfaces when ``names`` is empty).

    Loopback counts only when asked for by name or when nothing else exists, so a
    Pi announces the addresses its LAN can reach.
    """
    wanted = set(names)
    families = {socket.AF_INET} | ({socket.AF_INET6} if ipv6 else set())
    found: list[str] = []
    loopback: list[str] = []
    for name, addrs in psutil.net_if_addrs().items():
        if wanted and name not in wanted:
            continue
        for a in addrs:
            if a.family not in families:
                continue
            ip = ipaddress.ip_address(a.address.split("%")[0])
            if ip.is_link_local and ip.version == 4:
                continue
            (loopback if ip.is_loopback and not wanted else found).append(str(ip))
    return sorted(set(found)) or sorted(set(loopback))


def _choice(names: Sequence[str], bound: Sequence[str], ipv6: bool) -> Any:
    """What zeroconf binds: every interface, or the IPv4 addresses of the named ones
    (and their indexes for IPv6, which zeroconf takes by interface index)."""
    from zeroconf import InterfaceChoice

    if not names:
        return InterfaceChoice.All
    v4: list[str | int] = [a for a in bound if ipaddress.ip_address(a).version == 4]
    if ipv6:
        v4 += [socket.if_nametoindex(n) for n in names]
    return v4


class Mdns:
    """The process's zeroconf instance: started on first use, closed with its last user."""

    def __init__(self, *, interfaces: Sequence[str] = (), ipv6: bool = False) -> None:
        self.interfaces = tuple(interfaces)
        self.ipv6 = ipv6
        self.zc: AsyncZeroconf | None = None
        self.bound: list[str] = []
        self._users = 0

    async def acquire(self) -> AsyncZeroconf:
        """The running instance; MdnsUnavailableError (one line) if 5353 cannot be used."""
        if self.zc is None:
            # Imported lazily (3.4 MiB a node without discovery does not carry), and
            # off the loop: a first import stalls it for 60 ms and more.
            await asyncio.to_thread(importlib.import_module, "zeroconf.asyncio")
        self._users += 1
        if self.zc is None:  # checked again: another user may have opened it meanwhile
            try:
                self.zc = self._open()
            except Exception:
                self._users -= 1
                raise
        return self.zc

    def _open(self) -> AsyncZeroconf:
        from zeroconf import IPVersion
        from zeroconf.asyncio import AsyncZeroconf

        self.bound = interface_addresses(self.interfaces, ipv6=self.ipv6)
        if self.interfaces and not self.bound:
            raise MdnsUnavailableError(f"none of the interfaces {', '.join(self.interfaces)} "
                                  "has an address")
        version = IPVersion.All if self.ipv6 else IPVersion.V4Only
        choice = _choice(self.interfaces, self.bound, self.ipv6)
        try:
            return AsyncZeroconf(interfaces=choice, ip_version=version)
        except OSError as exc:
            raise MdnsUnavailableError(
                f"cannot use UDP port 5353 for mDNS ({exc.strerror or exc}); another mDNS "
                "stack may hold it exclusively, or multicast is not routed") from None

    async def refresh(self) -> bool:
        """Follow address changes of the chosen interfaces; True if they changed."""
        now = interface_addresses(self.interfaces, ipv6=self.ipv6)
        if now == self.bound or self.zc is None:
            return False
        log.info("interface addresses changed: %s -> %s", ",".join(self.bound) or "-",
                 ",".join(now) or "-")
        self.bound = now
        try:
            await self.zc.zeroconf.async_update_interfaces(
                _choice(self.interfaces, now, self.ipv6) if self.interfaces else None)
        except (OSError, RuntimeError) as exc:
            log.warning("mDNS could not follow the new addresses: %s", exc)
        return True

    async def release(self) -> None:
        self._users = max(0, self._users - 1)
        if self._users == 0 and self.zc is not None:
            zc, self.zc = self.zc, None
            await zc.async_close()


_SHARED: dict[tuple[tuple[str, ...], bool], Mdns] = {}


def shared(interfaces: Sequence[str] = (), *, ipv6: bool = False) -> Mdns:
    """The process's ``Mdns`` for these settings (the SC and SPUs of one
    ``headwater local`` share one socket set and one cache)."""
    key = (tuple(interfaces), ipv6)
    if key not in _SHARED:
        _SHARED[key] = Mdns(interfaces=interfaces, ipv6=ipv6)
    return _SHARED[key]


def software_version() -> str:
    from edge import __version__

    return __version__.replace("+", ".")[:32]

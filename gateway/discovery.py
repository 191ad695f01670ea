"""The gateway on the LAN: announced with its site, and finding the SPU on its own host."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING

import psutil

from gateway.config import GatewayConfig

if TYPE_CHECKING:
    from edge.discovery.announcer import Announcer
    from edge.discovery.directory import Directory

log = logging.getLogger(__name__)

# How long topic creation waits to hear the SPUs of its site before placing the
# topic without a preference.
LOCAL_SPU_WAIT_S = 5.0


def local_addresses() -> set[str]:
    """Every address of this host, loopback included."""
    return {a.address.split("%")[0] for addrs in psutil.net_if_addrs().values()
            for a in addrs if a.family in (socket.AF_INET, socket.AF_INET6)}


class GatewayDiscovery:
    """Announces the gateway and watches its site's SPUs (only with ``site`` set)."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.announcer: Announcer | None = None
        self.directory: Directory | None = None

    async def start(self) -> None:
        site = self.config.site
        if site is None:
            return
        from edge.discovery.announcer import Announcer
        from edge.discovery.directory import Directory
        from edge.discovery.mdns import shared, software_version
        from edge.discovery.txt import Announcement, Role

        mdns = shared(self.config.interfaces, ipv6=self.config.ipv6)
        label = "".join(c if c.isalnum() else "-" for c in socket.gethostname().split(".")[0])
        self.announcer = Announcer(mdns, Announcement(
            role=Role.GATEWAY, site=site, public_port=0, label=label[:40].strip("-") or None,
            version=software_version()), bind_host="0.0.0.0")  # noqa: S104 (all interfaces)
        self.announcer.start()
        self.directory = Directory(mdns)
        try:
            await self.directory.start()
        except OSError as exc:
            self.directory = None
            log.warning("mDNS browsing off (%s): topics are placed without preferring this "
                        "host's SPU", exc)

    async def local_spu(self, timeout: float = LOCAL_SPU_WAIT_S) -> int | None:
        """The id of an SPU of this site announced on this host, if one is heard in time."""
        directory = self.directory
        if directory is None:
            return None
        from edge.discovery.txt import Role

        mine = local_addresses()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            found = directory.find(lambda e: e.announcement.role is Role.SPU
                                   and e.announcement.site == self.config.site
                                   and bool(mine.intersection(e.addresses)))
            if found:
                return found[0].announcement.node_id
            left = deadline - loop.time()
            if left <= 0:
                return None
            await directory.wait_changed(left)

    async def stop(self) -> None:
        if self.announcer is not None:
            await self.announcer.stop()
        if self.directory is not None:
            await self.directory.stop()

"""An SPU on the LAN: announce itself when it has a site, find its SC with ``mdns``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from edge.discovery.spec import parse_sc
from edge.spu.config import SpuConfig

if TYPE_CHECKING:
    from edge.discovery.announcer import Announcer
    from edge.discovery.directory import Directory
    from edge.discovery.finder import ScFinder
    from edge.discovery.txt import Announcement
    from edge.spu.replicas import ReplicaSet

log = logging.getLogger(__name__)


class SpuDiscovery:
    """The SPU's announcer and SC finder; nothing of zeroconf is loaded unless used."""

    def __init__(self, cfg: SpuConfig, replicas: ReplicaSet) -> None:
        self.cfg = cfg
        self.replicas = replicas
        self.announcer: Announcer | None = None
        self.directory: Directory | None = None
        self.finder: ScFinder | None = None
        self._retry: asyncio.Task[None] | None = None
        self._spec = parse_sc(cfg.sc)
        if self._spec is not None and self._spec.site is None and cfg.discovery.site:
            self._spec = type(self._spec)(cfg.discovery.site)

    @property
    def used(self) -> bool:
        return self._spec is not None or self.cfg.discovery.site is not None

    async def start_finding(self) -> ScFinder | None:
        """The finder for ``sc = "mdns..."`` (None for a static address)."""
        if self._spec is None:
            return None
        from edge.discovery.directory import Directory
        from edge.discovery.finder import ScFinder
        from edge.discovery.mdns import shared

        d = self.cfg.discovery
        self.directory = Directory(shared(d.interfaces, ipv6=d.ipv6))
        try:
            await self.directory.start()
        except OSError as exc:
            self._off(exc)
            self._retry = asyncio.create_task(self._browse_later(self.directory),
                                              name="mdns-browse-retry")
        self.finder = ScFinder(self.directory, self._spec, private=True,
                               joined=lambda: self.replicas.cluster_id)
        return self.finder

    async def _browse_later(self, directory: Directory) -> None:
        from edge.discovery.constants import ADDRESS_POLL_S

        while True:
            await asyncio.sleep(ADDRESS_POLL_S)
            try:
                await directory.start()
            except OSError:
                continue
            log.info("mDNS browsing on: looking for %s", self.cfg.sc)
            return

    def _off(self, exc: OSError) -> None:
        log.error("mDNS discovery off: %s; the SC address %s cannot be found until it is "
                  "fixed (retrying; or set sc = HOST:PORT)", exc, self.cfg.sc)

    def start_announcing(self, public: tuple[str, int], private: tuple[str, int]) -> None:
        site = self.cfg.discovery.site
        if site is None:
            return
        from edge.discovery.announcer import Announcer
        from edge.discovery.mdns import shared

        d = self.cfg.discovery
        self.announcer = Announcer(shared(d.interfaces, ipv6=d.ipv6),
                                   self._announcement(site, public[1], private[1]),
                                   bind_host=public[0])
        self.announcer.start()

    def _announcement(self, site: str, public_port: int, private_port: int) -> Announcement:
        from edge.discovery.mdns import software_version
        from edge.discovery.txt import Announcement, Role

        return Announcement(role=Role.SPU, site=site,
                            cluster=self.replicas.cluster_id, node_id=self.cfg.id,
                            public_port=public_port, private_port=private_port,
                            tls=self.cfg.tls is not None, version=software_version())

    async def assignment_applied(self) -> None:
        """Announce the cluster id once the SPU has joined one."""
        if self.announcer is None:
            return
        current = self.announcer.announcement
        if current.cluster != self.replicas.cluster_id:
            from dataclasses import replace

            await self.announcer.update(replace(current, cluster=self.replicas.cluster_id))

    async def stop(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retry
        if self.announcer is not None:
            await self.announcer.stop()
        if self.directory is not None:
            await self.directory.stop()

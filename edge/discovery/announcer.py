"""Announcing one node: register, follow address changes, say goodbye on stop."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
import socket
from dataclasses import replace
from typing import TYPE_CHECKING

from edge.discovery import constants
from edge.discovery.mdns import Mdns, MdnsUnavailableError
from edge.discovery.txt import MAX_ADDRESSES, SERVICE_TYPE, Announcement
from edge.tasks import cancel

if TYPE_CHECKING:
    from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

log = logging.getLogger(__name__)

WILDCARDS = ("", "0.0.0.0", "::")  # noqa: S104 (compared with, never bound)


class Announcer:
    """Publishes ``announcement`` for as long as the node runs.

    Registration (about a second of probing for name conflicts) runs in the
    background so that it never delays the node's own start-up.
    """

    def __init__(self, mdns: Mdns, announcement: Announcement, *, bind_host: str) -> None:
        self.mdns = mdns
        self.announcement = announcement
        self.bind_host = bind_host
        self.registered = asyncio.Event()
        self.name: str | None = None
        self._info: AsyncServiceInfo | None = None
        self._task: asyncio.Task[None] | None = None
        self._acquired = False
        # The host name of the A records: unique per process, so that two nodes
        # claiming one instance name (two SCs for one site) cannot merge.
        self._server = (f"{announcement.instance.replace('_', '-')}-{_host_label()}-"
                        f"{secrets.token_hex(3)}.local.")

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"mdns-{self.announcement.instance}")

    async def update(self, announcement: Announcement) -> None:
        """Announce new hints (a cluster id learned, a port changed)."""
        if announcement == self.announcement:
            return
        self.announcement = replace(announcement, gen=self.announcement.gen).bumped()
        await self._reannounce()

    async def _run(self) -> None:
        zc = await self._acquire()
        self._acquired = True
        registered = self.announcement
        info = self._build()
        try:
            await (await zc.async_register_service(info, allow_name_change=True))
        except Exception as exc:  # a clash it cannot resolve, a socket error: stay static
            _static(f"mDNS: cannot announce {info.name}: {exc}")
            return
        self._info = info
        self.name = info.name
        self.registered.set()
        log.info("announcing %s on %s", info.name, ",".join(self._addresses()) or "-")
        if self.announcement != registered:
            await self._reannounce()  # updated while the name was being probed
        while True:
            await asyncio.sleep(constants.ADDRESS_POLL_S)
            if await self.mdns.refresh():
                self.announcement = self.announcement.bumped()
                await self._reannounce()

    async def _acquire(self) -> AsyncZeroconf:
        """zeroconf, retried every poll interval: an interface may get its address
        late, another mDNS stack may let go of UDP 5353. Said once, not per retry."""
        said = False
        while True:
            try:
                return await self.mdns.acquire()
            except MdnsUnavailableError as exc:
                if not said:
                    _static(f"mDNS discovery off: {exc}")
                    said = True
            await asyncio.sleep(constants.ADDRESS_POLL_S)

    def _addresses(self) -> list[str]:
        if self.bind_host not in WILDCARDS:
            return [self.bind_host]
        return list(self.mdns.bound)

    def _build(self) -> AsyncServiceInfo:
        from zeroconf.asyncio import AsyncServiceInfo

        addresses = self._addresses()[:MAX_ADDRESSES]
        a = replace(self.announcement, addresses=tuple(addresses))
        name = self.name or f"{a.instance}.{SERVICE_TYPE}"
        return AsyncServiceInfo(
            SERVICE_TYPE, name, port=a.public_port, properties=dict(a.to_txt()),
            server=self._server,
            addresses=[ipaddress.ip_address(x).packed for x in addresses])

    async def _reannounce(self) -> None:
        if self.mdns.zc is None or self._info is None:
            return
        info = self._build()
        try:
            await (await self.mdns.zc.async_update_service(info))
        except Exception as exc:
            log.warning("mDNS: cannot update %s: %s", info.name, exc)
            return
        self._info = info
        log.info("announcing %s on %s (updated)", info.name, ",".join(self._addresses()) or "-")

    async def stop(self) -> None:
        """Withdraw the announcement (goodbye packets, awaited) and release zeroconf."""
        await cancel(self._task)
        zc = self.mdns.zc
        if zc is not None and self._info is not None:
            with contextlib.suppress(Exception):
                await (await zc.async_unregister_service(self._info))
        self._info = None
        if self._acquired:
            self._acquired = False
            await self.mdns.release()


def _static(reason: str) -> None:
    log.error("%s; serving on static configuration (retrying every %.0f s)", reason,
              constants.ADDRESS_POLL_S)


def _host_label() -> str:
    label = socket.gethostname().split(".")[0]
    return "".join(c if c.isalnum() else "-" for c in label)[:20].strip("-") or "node"

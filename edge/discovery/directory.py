"""What the LAN announces: a live view of every Headwater node seen on mDNS."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edge.discovery import constants
from edge.discovery.mdns import Mdns
from edge.discovery.txt import SERVICE_TYPE, Announcement, InvalidAnnouncementError, Role
from edge.logstate import LogOnce
from edge.tasks import cancel

if TYPE_CHECKING:
    from zeroconf import ServiceStateChange, Zeroconf
    from zeroconf.asyncio import AsyncServiceBrowser

log = logging.getLogger(__name__)

# A LAN of a few dozen Pis announces a few hundred instances at most; a flood of
# forged names must not grow a browser without bound.
MAX_ENTRIES = 1024


@dataclass(frozen=True)
class Entry:
    """One announced instance, as last resolved."""

    name: str
    announcement: Announcement
    addresses: tuple[str, ...]
    last_seen: float

    def endpoints(self, *, private: bool) -> list[str]:
        port = self.announcement.private_port if private else self.announcement.public_port
        if port is None:
            return []
        return [f"[{a}]:{port}" if ":" in a else f"{a}:{port}" for a in self.addresses]


class Directory:
    """Browses ``SERVICE_TYPE`` and keeps the decoded announcements.

    Every addition, update or removal wakes all ``wait_changed`` callers, so a
    node can react to an SC that moved as soon as it is announced.
    """

    def __init__(self, mdns: Mdns) -> None:
        self.mdns = mdns
        self.entries: dict[str, Entry] = {}
        self._changed: asyncio.Future[None] | None = None
        self.invalid = 0
        self._browser: AsyncServiceBrowser | None = None
        self._pending: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._once = LogOnce(log, max_keys=MAX_ENTRIES)

    async def start(self) -> None:
        """Start browsing; MdnsUnavailableError if UDP 5353 cannot be used."""
        from zeroconf.asyncio import AsyncServiceBrowser

        zc = await self.mdns.acquire()
        self._browser = AsyncServiceBrowser(zc.zeroconf, SERVICE_TYPE,
                                            handlers=[self._on_change])

    async def stop(self) -> None:
        await cancel(*self._pending.values())
        if self._browser is not None:
            browser, self._browser = self._browser, None
            with contextlib.suppress(Exception):
                await browser.async_cancel()
            await self.mdns.release()

    def log_once(self, key: str, kind: str, message: str, *args: Any) -> None:
        """Log ``message`` once per (``key``, ``kind``); a forged name repeats forever."""
        self._once.warning((key, kind), message, *args)

    def find(self, predicate: Callable[[Entry], bool]) -> list[Entry]:
        """Matching entries, most recently seen first."""
        return sorted((e for e in self.entries.values() if predicate(e)),
                      key=lambda e: -e.last_seen)

    async def wait_changed(self, timeout: float | None = None) -> None:
        """Return after the next change, or after ``timeout`` seconds."""
        if self._changed is None or self._changed.done():
            self._changed = asyncio.get_running_loop().create_future()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._changed)

    async def settled(self) -> None:
        """Wait for the instances seen so far to be resolved (or to time out)."""
        while self._pending:
            await asyncio.wait(list(self._pending.values()))

    def _notify(self) -> None:
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)

    # zeroconf callbacks run in the event loop; resolution runs in tasks ------

    def _on_change(self, zeroconf: Zeroconf, service_type: str, name: str,
                   state_change: ServiceStateChange) -> None:
        from zeroconf import ServiceStateChange

        if state_change is ServiceStateChange.Removed:
            self._forget(name)
            return
        if name in self._pending:
            self._again.add(name)
            return
        if len(self.entries) >= MAX_ENTRIES and name not in self.entries:
            self.log_once("*", "full", "mDNS: more than %d announcements; ignoring new ones",
                          MAX_ENTRIES)
            return
        self._pending[name] = asyncio.get_running_loop().create_task(
            self._resolve(name), name=f"mdns-resolve-{name[:40]}")

    def _forget(self, name: str) -> None:
        if self.entries.pop(name, None) is not None:
            log.info("mDNS: %s left", name)
            self._notify()

    async def _resolve(self, name: str) -> None:
        from zeroconf.asyncio import AsyncServiceInfo

        try:
            while True:
                self._again.discard(name)
                info = AsyncServiceInfo(SERVICE_TYPE, name)
                zc = self.mdns.zc
                if zc is None or not await info.async_request(
                        zc.zeroconf, constants.RESOLVE_TIMEOUT_MS):
                    return
                self._store(name, info)
                if name not in self._again:
                    return
        finally:
            self._pending.pop(name, None)

    def _store(self, name: str, info: Any) -> None:
        try:
            ann = Announcement.from_txt(info.properties)
        except InvalidAnnouncementError as exc:
            self.invalid += 1
            self.log_once(name, "invalid", "mDNS: ignoring %s: %s", name, exc)
            return
        # The announced list is current; A records of a former address linger in caches.
        addresses = ann.addresses or tuple(info.parsed_scoped_addresses())
        entry = Entry(name, ann, addresses, time.time())
        old = self.entries.get(name)
        self.entries[name] = entry
        if old is None or (old.announcement, old.addresses) != (ann, addresses):
            log.debug("mDNS: %s is %s %s at %s", name, ann.role, ann.site, ",".join(addresses))
            self._notify()


def sc_entries(directory: Directory, site: str | None) -> list[Entry]:
    """The SC announcements of ``site`` (of every site when None)."""
    return directory.find(lambda e: e.announcement.role is Role.SC
                          and (site is None or e.announcement.site == site))

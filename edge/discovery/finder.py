"""Finding a site's SC from its announcements, for SPUs, gateways and clients."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from edge.discovery import constants
from edge.discovery.directory import Directory, Entry, sc_entries
from edge.discovery.mdns import Mdns
from edge.discovery.spec import MdnsSpec
from edge.protocol.errors import HeadwaterError

log = logging.getLogger(__name__)


class DiscoveryError(HeadwaterError):
    """No SC, or no single SC, answers the ``mdns`` address (yet)."""

    retriable = True


class ScFinder:
    """The endpoints of the SC an ``mdns`` spec names, as far as they can be trusted.

    ``joined`` returns the cluster id this node already belongs to (None before it
    joined one): announcements of another cluster are ignored and logged once.
    Without a joined cluster, SCs of two different clusters for the same spec are
    ambiguous and neither is chosen.
    """

    def __init__(self, directory: Directory, spec: MdnsSpec, *, private: bool,
                 joined: Callable[[], str | None] = lambda: None) -> None:
        self.directory = directory
        self.spec = spec
        self.private = private
        self.joined = joined
        self.problem = f"no SC announced for {spec} yet"

    def candidates(self) -> list[str]:
        entries = self._trusted(sc_entries(self.directory, self.spec.site))
        return [addr for e in entries for addr in e.endpoints(private=self.private)]

    def _trusted(self, entries: list[Entry]) -> list[Entry]:
        joined = self.joined()
        if joined is not None:
            for e in entries:
                if e.announcement.cluster != joined:
                    self.directory.log_once(
                        e.name, f"cluster {e.announcement.cluster}",
                        "ignoring SC announcement %s: its cluster %s is not the cluster %s "
                        "this node joined", e.name, e.announcement.cluster, joined)
            return [e for e in entries if e.announcement.cluster == joined]
        sites = sorted({e.announcement.site for e in entries})
        clusters = sorted({e.announcement.cluster or "?" for e in entries})
        if len(sites) > 1:
            self.problem = (f"several sites announce an SC ({', '.join(sites)}); "
                            "name one with mdns:SITE")
            return []
        if len(clusters) > 1:
            self.problem = (f"{len(clusters)} SCs of different clusters announce site "
                            f"{sites[0]} ({', '.join(_describe(e) for e in entries)}); "
                            "give the address with HOST:PORT")
            return []
        return entries

    def announced(self, addr: str) -> bool:
        """Whether ``addr`` is still among the trusted SC's endpoints."""
        return addr in self.candidates()

    async def wait(self, timeout: float | None = None) -> list[str]:
        """Candidates as soon as there are any (DiscoveryError after ``timeout``)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not (found := self.candidates()):
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                raise DiscoveryError(self.problem)
            await self.directory.wait_changed(left)
        return found


def _describe(e: Entry) -> str:
    return f"cluster {e.announcement.cluster} at {','.join(e.addresses) or '?'}"


async def find_sc(spec: MdnsSpec, *, private: bool = False,
                  timeout: float = constants.FIND_TIMEOUT_S,
                  interfaces: Sequence[str] = ()) -> str:
    """One ``HOST:PORT`` of the SC ``spec`` names, found by listening on the LAN.

    After the first answer it listens a moment longer (``SETTLE_S``) so that two
    SCs claiming one site are reported instead of one being picked at random.
    """
    mdns = Mdns(interfaces=interfaces)
    directory = Directory(mdns)
    try:
        await directory.start()
    except OSError as exc:
        raise DiscoveryError(f"cannot look up {spec}: {exc}") from None
    try:
        finder = ScFinder(directory, spec, private=private)
        try:
            await finder.wait(timeout)
        except DiscoveryError:
            raise DiscoveryError(f"{finder.problem} within {timeout:g}s (is the site's SC "
                                 "running with site set, on this LAN?)") from None
        await asyncio.sleep(constants.SETTLE_S)
        await directory.settled()
        found = finder.candidates()
        if not found:
            raise DiscoveryError(finder.problem)
        return found[0]
    finally:
        await directory.stop()

"""``sc = "mdns"`` / ``"mdns:SITE"``: an SC address to be found on the LAN."""

from __future__ import annotations

from dataclasses import dataclass

from edge.discovery.txt import check_site

PREFIX = "mdns"


@dataclass(frozen=True)
class MdnsSpec:
    """Find the SC of ``site`` (any site, if the LAN has only one, when None)."""

    site: str | None = None

    def __str__(self) -> str:
        return PREFIX if self.site is None else f"{PREFIX}:{self.site}"


def parse_sc(value: str) -> MdnsSpec | None:
    """``MdnsSpec`` for ``mdns`` or ``mdns:SITE``; None for anything else (HOST:PORT).

    ValueError for ``mdns:`` followed by an invalid site name.
    """
    if value == PREFIX:
        return MdnsSpec()
    if value.startswith(PREFIX + ":"):
        rest = value[len(PREFIX) + 1:]
        if rest.isdigit():
            return None  # a host called "mdns" with a port
        return MdnsSpec(check_site(rest))
    return None

"""The discovery settings shared by the SC, SPU and gateway configurations.

Top-level keys of each daemon's TOML: ``site = "kitchen"`` turns announcing on,
``interfaces = ["eth0", "wlan0"]`` limits mDNS to those interfaces (default: all,
which on a Pi may include docker0 or a VPN), ``ipv6 = true`` adds IPv6.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from edge.config import ConfigError, take
from edge.discovery.spec import parse_sc
from edge.discovery.txt import check_site
from edge.net.connection import split_addr_list

# Linux interface names: at most 15 bytes, no '/', no whitespace.
INTERFACE_NAME: Final = re.compile(r"[A-Za-z0-9_.:@-]{1,15}")
MAX_INTERFACES: Final = 16


@dataclass(frozen=True, kw_only=True)
class DiscoveryConfig:
    site: str | None = None
    interfaces: tuple[str, ...] = ()
    ipv6: bool = False

    def __post_init__(self) -> None:
        if self.site is not None:
            try:
                check_site(self.site)
            except ValueError as exc:
                raise ConfigError(str(exc), key="site") from None
        if len(self.interfaces) > MAX_INTERFACES:
            raise ConfigError(f"at most {MAX_INTERFACES}", key="interfaces")
        for name in self.interfaces:
            if not isinstance(name, str) or not INTERFACE_NAME.fullmatch(name):
                raise ConfigError(f"{name!r} is not an interface name (like eth0 or wlan0)",
                                  key="interfaces")

    @classmethod
    def take_from(cls, raw: dict[str, Any], **overrides: Any) -> DiscoveryConfig:
        """Pop ``site``, ``interfaces`` and ``ipv6`` from a daemon's TOML table."""
        interfaces = take(raw, "interfaces", list, [])
        values: dict[str, Any] = {"site": take(raw, "site", str, None),
                                  "interfaces": tuple(interfaces),
                                  "ipv6": take(raw, "ipv6", bool, False)}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def check_sc_address(key: str, value: str) -> None:
    """``HOST:PORT``, several comma-separated (a cloud cluster's SCs), ``mdns`` or
    ``mdns:SITE``; ConfigError naming ``key`` otherwise."""
    try:
        if parse_sc(value) is None:
            split_addr_list(value)
    except ValueError as exc:
        raise ConfigError(f"{exc} (HOST:PORT, several as H1:P1,H2:P2, or mdns / mdns:SITE "
                          "to find it on the LAN)", key=key) from None

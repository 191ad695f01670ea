"""Checks on what an SPU claims when it registers that its schema cannot say
(pure: no I/O). The SPU id's range is REGISTER_SPU's schema (``sc_api``)."""

from __future__ import annotations

import ipaddress
import re
from typing import Final

from edge.protocol.errors import InvalidRequest

_LABEL: Final = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_MAX_HOSTNAME: Final = 253


def check_address(field: str, addr: str) -> None:
    """``addr`` must be ``host:port`` with a hostname or IP and a port in 1..65535."""
    host, sep, port = addr.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not _valid_host(host) or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise InvalidRequest(f"{field}: {addr!r} is not host:port (port 1..65535)",
                             field=field, value=addr[:300])


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return True
    if not host or len(host) > _MAX_HOSTNAME or not host.isascii():
        return False
    return all(_LABEL.match(label) for label in host.removesuffix(".").split("."))

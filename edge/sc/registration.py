"""Checks on what an SPU claims when it registers (pure: no I/O)."""

from __future__ import annotations

import ipaddress
import re
from typing import Final

from edge.protocol.errors import InvalidRequest

# SQLite stores ids as signed 64-bit integers; 2**31-1 keeps ids printable,
# portable to 32-bit peers and far from that limit.
MAX_SPU_ID: Final = 2**31 - 1
_LABEL: Final = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_MAX_HOSTNAME: Final = 253


def check_spu_id(spu_id: int) -> None:
    if not 0 <= spu_id <= MAX_SPU_ID:
        raise InvalidRequest(f"spu: id {spu_id} is outside 0..{MAX_SPU_ID}", field="spu",
                             value=spu_id, max=MAX_SPU_ID)


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

"""Checks on what an SPU claims when it registers that its schema cannot say, and
what the SC learns from the replica status it reports (pure: no I/O). The SPU id's
range is REGISTER_SPU's schema (``sc_api``)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from typing import Final

from edge.protocol.errors import InvalidRequest
from edge.protocol.sc_api import ReplicaStatus

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


# --- epochs the SPUs report ---------------------------------------------------
#
# Only the SC issues leader epochs, and an SPU ignores an assignment older than the
# epoch it knows. An SC whose database is older than the cluster (a restored backup,
# a host replaced from a copy) would push epochs the SPUs ignore, and no partition it
# moved since could be led. So the SC reads the epochs in what SPUs report and moves
# past them; these functions decide, from the reports alone, whether and how.


def epoch_behind(epoch: int, leader: int | None, reports: Mapping[int, ReplicaStatus],
                 seen: int) -> int | None:
    """The highest epoch the SPUs know of a partition (``seen``, the highest ever
    reported, and ``reports``, SPU id -> its replica's current status) when the SC's
    ``epoch`` with ``leader`` is behind it; None when the SC's view is current.

    Behind: lower, or the same epoch with another SPU claiming to lead it (only an
    older copy of the SC's own history can be behind, and one SC never gave one epoch
    to two leaders). A replica at the SC's epoch that follows is in step with it."""
    top = max([seen, *(s.epoch for s in reports.values())])
    if top > epoch:
        return top
    if top == epoch and any(s.leader and s.epoch == top and spu != leader
                            for spu, s in reports.items()):
        return top
    return None


def reported_leader(replicas: Sequence[int], reports: Mapping[int, ReplicaStatus],
                    epoch: int) -> tuple[int, list[int]] | None:
    """The replica that reports leading ``epoch`` (and has not failed), with the ISR it
    reports, kept to the replica set and including itself; None if no replica does."""
    for r in replicas:
        s = reports.get(r)
        if s is None or not s.leader or s.epoch != epoch or s.failed:
            continue
        isr = [x for x in replicas if x in (s.isr or ()) and x != r]
        return r, [r, *isr]
    return None

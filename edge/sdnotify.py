"""Readiness and status reports to systemd (``sd_notify(3)``), standard library only.

A service started with ``Type=notify`` finds a datagram socket in ``$NOTIFY_SOCKET``
and sends newline-separated ``KEY=VALUE`` assignments to it: ``READY=1`` once it
serves, ``STOPPING=1`` when it begins to shut down, ``STATUS=...`` for
``systemctl status``. systemd orders dependent units and rolling restarts on
``READY=1``, so a daemon sends it only when it really answers (the SC once it
listens, an SPU once it listens and has registered).

Outside systemd (tests, ``headwater local``, a shell) every call is a no-op that
returns ``False``: callers never need to know how they were started.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from typing import Final

__all__ = [
    "READY",
    "RELOADING",
    "STOPPING",
    "notify",
    "ready",
    "status",
    "stopping",
    "watchdog_interval",
]

READY: Final = "READY=1"
RELOADING: Final = "RELOADING=1"
STOPPING: Final = "STOPPING=1"

# systemd drains its notify socket at once; the bound only matters when the
# manager is wedged, and a daemon must not hang on its way up because of it.
SEND_TIMEOUT_S: Final = 1.0
# The kernel's sun_path is 108 bytes including the terminating NUL.
MAX_SOCKET_PATH: Final = 107
# systemd reads at most one page-sized datagram per message (NOTIFY_BUFFER_MAX).
MAX_MESSAGE_BYTES: Final = 4096

_log = logging.getLogger(__name__)


def notify(*states: str) -> bool:
    """Send ``states`` to systemd in one datagram; ``False`` when not under systemd.

    Each state is one ``KEY=VALUE`` assignment without a newline. A socket that
    cannot be reached is logged and reported as ``False``; it never raises.
    """
    message = _encode(states)
    address = _socket_address(os.environ)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(SEND_TIMEOUT_S)
            sock.sendto(message, address)
    except OSError as exc:
        _log.warning("sd_notify to %r failed: %s", os.environ.get("NOTIFY_SOCKET"), exc)
        return False
    return True


def ready(status_text: str | None = None) -> bool:
    """Tell systemd the service is up (``READY=1``), optionally with a status line."""
    if status_text is None:
        return notify(READY)
    return notify(READY, _status_state(status_text))


def stopping(status_text: str | None = None) -> bool:
    """Tell systemd a clean shutdown has begun (``STOPPING=1``)."""
    if status_text is None:
        return notify(STOPPING)
    return notify(STOPPING, _status_state(status_text))


def status(text: str) -> bool:
    """Set the one-line status shown by ``systemctl status``."""
    return notify(_status_state(text))


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between the ``WATCHDOG=1`` pings systemd expects, or ``None``.

    ``None`` when no watchdog is configured or it is meant for another process
    (``$WATCHDOG_PID`` names a different PID).
    """
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 1_000_000


def _status_state(text: str) -> str:
    # A status line cannot carry a newline: it would start a new assignment.
    return "STATUS=" + " ".join(text.split())


def _encode(states: tuple[str, ...]) -> bytes:
    if not states:
        raise ValueError("sd_notify needs at least one KEY=VALUE state")
    for state in states:
        key, sep, _ = state.partition("=")
        if not sep or not key or "\n" in state:
            raise ValueError(f"not a single KEY=VALUE sd_notify state: {state!r}")
    message = "\n".join(states).encode()
    if len(message) > MAX_MESSAGE_BYTES:
        raise ValueError(f"sd_notify message of {len(message)} bytes over {MAX_MESSAGE_BYTES}")
    return message


def _socket_address(environ: Mapping[str, str]) -> str | bytes | None:
    """The address in ``$NOTIFY_SOCKET``: a path, or ``@name`` in the abstract namespace."""
    value = environ.get("NOTIFY_SOCKET", "")
    if len(value) < 2 or len(value.encode()) > MAX_SOCKET_PATH:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    # vsock: and other transports are for VMs and containers, not our services.
    return None

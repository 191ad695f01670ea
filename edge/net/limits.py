"""Resource limits of a listener: what one process spends on its clients.

Every SC and SPU port is bounded the same way, so that nothing a client or a
peer does (open connections, stall halfway through a frame, pipeline requests
without reading answers, park thousands of long polls) grows the process past
what a Raspberry Pi can give it. The defaults hold an SPU under about 100 MB of
RSS on a Pi (see docs/OPERATIONS.md for the arithmetic); the ``[limits]``
table of ``sc.toml``/``spu.toml`` changes them.

A limit that is reached either slows the one connection that reached it (it is
not read until it is back under: TCP carries the back-pressure) or, where
waiting cannot help, closes it with one log line and a counter.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Final

from edge.config import ConfigError, reject_unknown, take

# Bytes a connection may hold in a partial frame without drawing from the
# process's shared pool: small requests never wait for it.
FREE_SHARE_BYTES: Final = 64 * 1024
_MAX_CONNECTIONS: Final = 65_536
_MAX_IN_FLIGHT: Final = 4096
_MAX_TIMEOUT_S: Final = 86_400.0
_MAX_BUFFERED_BYTES: Final = 4 * 1024**3


@dataclass(frozen=True, kw_only=True)
class ServerLimits:
    """The ``[limits]`` table; validated at construction."""

    # Client connections per process (public port). A site's gateways, CLIs and
    # consumers (one connection per partition read) fit in 64; each can make the
    # process hold about 0.4 MiB at worst (docs/OPERATIONS.md).
    max_connections: int = 64
    # Peer connections per process (private port): followers dial one connection
    # per partition they follow, the SC link one more. Counted apart so that a
    # flood of clients never locks the peers out.
    max_peer_connections: int = 64
    # A connection with nothing outstanding that sends nothing this long is closed
    # (clients reconnect on their next request); reclaims half-open connections.
    idle_timeout_s: float = 300.0
    # A frame must arrive whole within this long of its first byte: a client that
    # sends part of a frame and stalls is cut. 30 s carries a 1 MiB frame over a
    # 300 kbit/s link; slower uplinks need more.
    frame_timeout_s: float = 30.0
    # Requests of one connection being served at once (waiting for an fsync, a
    # long-poll fetch, a stream). Beyond it the connection is not read until one
    # finishes: pipelining is bounded, and so are the tasks a client can park.
    max_in_flight: int = 64
    # Of those, requests that may wait long (fetches with a wait, streams,
    # metadata watches): more are refused at once (INSUFFICIENT_RESOURCES), so a
    # client cannot park thousands of tasks. A consumer holds one per connection.
    max_long_polls: int = 16
    # Bytes of partial frames every connection of the process holds together,
    # beyond each one's free 64 KiB: a connection that needs more waits (and its
    # frame timeout runs). Two whole 8 MiB frames at once.
    max_buffered_bytes: int = 16 * 1024 * 1024

    def __post_init__(self) -> None:
        for key, top in (("max_connections", _MAX_CONNECTIONS),
                         ("max_peer_connections", _MAX_CONNECTIONS),
                         ("max_in_flight", _MAX_IN_FLIGHT),
                         ("max_long_polls", _MAX_IN_FLIGHT),
                         ("max_buffered_bytes", _MAX_BUFFERED_BYTES)):
            value = getattr(self, key)
            if not 1 <= value <= top:
                raise ConfigError(f"limits.{key} must be in 1..{top}, not {value}")
        if self.max_long_polls > self.max_in_flight:
            raise ConfigError("limits.max_long_polls must not exceed limits.max_in_flight")
        for key in ("idle_timeout_s", "frame_timeout_s"):
            if not 0 < getattr(self, key) <= _MAX_TIMEOUT_S:
                raise ConfigError(f"limits.{key} must be in (0, {_MAX_TIMEOUT_S:.0f}] seconds")

    @classmethod
    def from_table(cls, table: object) -> ServerLimits:
        if not isinstance(table, dict):
            raise ConfigError("limits must be a table")
        raw: dict[str, Any] = dict(table)
        values = {key: take(raw, key, float if key.endswith("_s") else int,
                            getattr(cls, key))
                  for key in cls.__dataclass_fields__}
        reject_unknown(raw, "limits")
        return cls(**values)


def limits_from(raw: dict[str, Any]) -> ServerLimits:
    """The optional ``[limits]`` table of a daemon config (defaults when absent)."""
    table = raw.pop("limits", None)
    return ServerLimits() if table is None else ServerLimits.from_table(table)


class BufferPool:
    """Bytes of partial frames the connections of one process hold together."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._freed = asyncio.Event()

    def charge(self, before: int, after: int) -> None:
        """A connection's charge moved from ``before`` to ``after`` bytes."""
        self.used += after - before
        if after < before:
            self._freed.set()

    def fits(self, extra: int) -> bool:
        return self.used + extra <= self.limit

    def wake(self) -> None:
        """Wake the waiters to look again (one of them was closed)."""
        self._freed.set()

    async def wait_freed(self) -> None:
        """Until some connection gave bytes back."""
        self._freed.clear()
        await self._freed.wait()


def charge_of(buffered: int) -> int:
    """What a connection holding ``buffered`` bytes draws from its pool."""
    return max(buffered - FREE_SHARE_BYTES, 0)

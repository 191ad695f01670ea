"""The gateway's local status endpoint: one JSON line per connection, then close.

It listens on a unix socket or a loopback TCP port (``[status] listen``) and has no
authentication, which is why the config refuses non-loopback addresses. Reading it
needs nothing but a socket: ``socat - UNIX-CONNECT:/run/headwater/gateway.sock``,
``nc 127.0.0.1 9099``, or ``headwater gateway status``.

The line is a JSON object::

    {"version": 1, "pid": 812, "uptime_s": 3600.2, "sc": "127.0.0.1:9003",
     "bridges": {"mqtt": {"kind": "mqtt", "counters": {"received": 10, ...}},
                 "serial": {"kind": "serial", "counters": {...}}}}
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Final, Self

from gateway.config import StatusConfig

log = logging.getLogger(__name__)

STATUS_VERSION: Final = 1
# A status line is a few hundred bytes; a reader that sends junk gets cut off here.
MAX_LINE_BYTES: Final = 1024 * 1024
READ_TIMEOUT_S: Final = 5.0
# The columns of `headwater gateway status`, in order; other counters follow in JSON only.
TABLE_COUNTERS: Final = (
    "received", "produced", "duplicates", "bad_frames", "dead_lettered", "reconnects",
)  # fmt: skip

Snapshot = Callable[[], Mapping[str, Any]]


class StatusServer:
    """``async with StatusServer(config, snapshot)``: serve ``snapshot()`` as JSON lines."""

    def __init__(self, config: StatusConfig, snapshot: Snapshot) -> None:
        self._config = config
        self._snapshot = snapshot
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        """Where it listens (with the real port when the config said port 0)."""
        if self._config.unix_path is not None or self._server is None:
            return self._config.listen
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"{host}:{port}"

    async def start(self) -> None:
        path = self._config.unix_path
        if path is None:
            self._server = await asyncio.start_server(
                self._serve, self._config.host, self._config.port
            )
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a stale socket of a previous run that was killed
        self._server = await asyncio.start_unix_server(self._serve, path)
        # Counters are not secret, but only the owner's group needs them.
        os.chmod(path, 0o660)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        await server.wait_closed()
        path = self._config.unix_path
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = json.dumps(self._snapshot(), separators=(",", ":"), sort_keys=True) + "\n"
            writer.write(line.encode())
            async with asyncio.timeout(READ_TIMEOUT_S):
                await writer.drain()
        except (OSError, TimeoutError) as exc:
            log.debug("status reader went away: %s", exc)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


async def read_status(listen: str, *, timeout_s: float = READ_TIMEOUT_S) -> dict[str, Any]:
    """Read one status line from a running gateway (``listen`` as in the config)."""
    async with asyncio.timeout(timeout_s):
        if listen.startswith("unix:"):
            reader, writer = await asyncio.open_unix_connection(
                listen[len("unix:"):], limit=MAX_LINE_BYTES
            )
        else:
            host, _, port = listen.rpartition(":")
            reader, writer = await asyncio.open_connection(
                host.strip("[]"), int(port), limit=MAX_LINE_BYTES
            )
        try:
            line = await reader.readline()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    data = json.loads(line)
    if not isinstance(data, dict):
        raise TypeError("status line is not a JSON object")
    return data


def table_rows(status: Mapping[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """Headers and one row per bridge, for an aligned table."""
    headers = ["bridge", "kind", *TABLE_COUNTERS]
    rows = []
    for name, bridge in sorted(status.get("bridges", {}).items()):
        counters = bridge.get("counters", {})
        rows.append([name, bridge.get("kind", "?"), *(counters.get(k) for k in TABLE_COUNTERS)])
    return headers, rows

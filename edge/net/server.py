"""The socket shell every Headwater listener shares.

A :class:`FrameServer` accepts connections, decodes frames with the pure
:class:`~edge.protocol.framing.FrameDecoder` and hands each request to a
dispatch function. Dispatch runs synchronously in arrival order (so appends to
a partition keep the order of a connection's requests) and may return a
response, nothing, or an awaitable that produces the response later (a produce
waiting for its fsync). Responses carry the correlation id, so they may leave
in any order.

Bad input gets an error response when the frame itself was readable, and a
closed connection when framing is lost; either way it is counted and logged
once per peer and kind, never per byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import cbor2

from edge.protocol import messages
from edge.protocol.errors import HeadwaterError, InvalidRequest, ProtocolError
from edge.protocol.framing import FrameDecoder, encode_frame, frame_header

log = logging.getLogger(__name__)

READ_CHUNK = 256 * 1024
# Responses queue in the transport up to this many bytes before a slow reader
# pauses its own requests (flow control towards that one peer only).
WRITE_HIGH_WATER = 1024 * 1024

Response = tuple[dict[str, Any], bytes] | None
Dispatch = Callable[["Connection", dict[Any, Any], bytes], Response | Awaitable[Response]]


@dataclass
class ServerStats:
    """Counters a listener exposes (and tests read)."""

    connections: int = 0
    requests: int = 0
    protocol_errors: int = 0
    request_errors: int = 0
    _logged: set[tuple[str, str]] = field(default_factory=set, repr=False)

    def log_once(self, peer: str, kind: str, message: str) -> None:
        """Log the first error of a kind from a host; count the rest silently."""
        host = peer.rsplit(":", 1)[0]
        if (host, kind) in self._logged:
            return
        if len(self._logged) > 4096:  # bounded: a scan from many hosts must not grow it forever
            self._logged.clear()
        self._logged.add((host, kind))
        log.warning("%s from %s: %s (further %s errors from this host are counted, not logged)",
                    kind, peer, message, kind)


class Connection:
    """One accepted client connection."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: FrameServer
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.server = server
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.tls = writer.get_extra_info("ssl_object") is not None
        self._write_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = False
        self.on_close: list[Callable[[], None]] = []

    @property
    def principal(self) -> str | None:
        """Common name of the verified client certificate, if any."""
        cert = self.writer.get_extra_info("peercert")
        if not cert:
            return None
        for rdn in cert.get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    return str(value)
        return None

    async def send(self, meta: dict[str, Any], blob: bytes = b"") -> None:
        """Write one frame, waiting while the peer is not reading."""
        if self.closed:
            return
        async with self._write_lock:
            self.writer.write(encode_frame(meta, blob))
            await self.writer.drain()

    def send_soon(self, meta: dict[str, Any], blob: bytes = b"") -> None:
        """Write a frame now if nothing else is writing, else queue it behind the writer."""
        if self.closed:
            return
        if self._write_lock.locked():
            self.spawn(self.send(meta, blob), "reply")
        else:
            self.writer.write(encode_frame(meta, blob))

    async def send_file(self, meta: dict[str, Any], fd: int, position: int, length: int) -> None:
        """Write a frame whose blob is ``length`` bytes of file ``fd`` from ``position``.

        Plain TCP uses ``loop.sendfile`` (zero-copy); TLS falls back to reading.
        The fd is duplicated first, so retention closing the segment meanwhile is harmless.
        """
        if self.closed:
            return
        dup = os.dup(fd)
        try:
            with open(dup, "rb", closefd=True) as f:  # noqa: ASYNC230 - wraps an fd, no I/O
                async with self._write_lock:
                    self.writer.write(frame_header(cbor2.dumps(meta), length))
                    await self.writer.drain()
                    loop = asyncio.get_running_loop()
                    await loop.sendfile(self.writer.transport, f, position, length)
        except OSError:
            self.abort()
            raise

    def spawn(self, coro: Awaitable[None], name: str) -> None:
        """Run a per-connection task that is cancelled when the connection closes."""
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            if not isinstance(exc, ConnectionError | OSError):
                log.error("task %s for %s failed", task.get_name(), self.peer, exc_info=exc)
            self.abort()

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self.writer.transport.abort()

    def _finish(self) -> None:
        self.closed = True
        for task in list(self._tasks):
            task.cancel()
        for callback in self.on_close:
            callback()
        self.writer.transport.abort()


class FrameServer:
    """Listener that decodes frames and dispatches requests."""

    def __init__(
        self, name: str, dispatch: Dispatch, *, ssl_context: ssl.SSLContext | None = None,
        max_frame_bytes: int | None = None,
    ) -> None:
        self.name = name
        self._dispatch = dispatch
        self._ssl = ssl_context
        self._max_frame = max_frame_bytes
        self._server: asyncio.Server | None = None
        self._connections: set[Connection] = set()
        self.stats = ServerStats()

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen; return the bound (host, port) — port 0 picks a free one."""
        self._server = await asyncio.start_server(
            self._handle, host, port, ssl=self._ssl, limit=READ_CHUNK,
            ssl_handshake_timeout=10.0 if self._ssl else None,
        )
        sock = self._server.sockets[0]
        bound = sock.getsockname()
        log.info("%s listening on %s:%d%s", self.name, bound[0], bound[1],
                 " (TLS)" if self._ssl else "")
        return bound[0], bound[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.abort()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        writer.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        conn = Connection(reader, writer, self)
        self._connections.add(conn)
        self.stats.connections += 1
        decoder = (FrameDecoder(max_frame_bytes=self._max_frame) if self._max_frame
                   else FrameDecoder())
        try:
            await self._read_loop(conn, decoder)
        except ProtocolError as exc:
            self.stats.protocol_errors += 1
            self.stats.log_once(conn.peer, "protocol error", str(exc))
        except (ConnectionError, OSError, ssl.SSLError) as exc:
            self.stats.log_once(conn.peer, "connection error", str(exc) or type(exc).__name__)
        finally:
            self._connections.discard(conn)
            conn._finish()

    async def _read_loop(self, conn: Connection, decoder: FrameDecoder) -> None:
        while not conn.closed:
            data = await conn.reader.read(READ_CHUNK)
            if not data:
                return
            decoder.feed(data)
            while (frame := decoder.next_frame()) is not None:
                self.stats.requests += 1
                self._serve(conn, frame.meta, frame.blob)
            # Back-pressure: stop reading while responses pile up for a slow reader.
            if conn.writer.transport.get_write_buffer_size() > WRITE_HIGH_WATER:
                async with conn._write_lock:
                    await conn.writer.drain()

    def _serve(self, conn: Connection, meta: dict[Any, Any], blob: bytes) -> None:
        raw_id = meta.get("id")
        cid = raw_id if isinstance(raw_id, int) and not isinstance(raw_id, bool) else -1
        try:
            if cid != raw_id:
                raise InvalidRequest("request without an integer correlation id")  # noqa: TRY301
            result = self._dispatch(conn, meta, blob)
        except HeadwaterError as exc:
            self._count_error(conn, exc)
            conn.spawn(conn.send(messages.error_response(cid, exc)), f"{self.name}-error")
            return
        except Exception as exc:
            log.exception("%s: request %r from %s failed", self.name, meta.get("api"), conn.peer)
            conn.spawn(conn.send(messages.error_response(cid, exc)), f"{self.name}-error")
            return
        if result is None:
            return
        if isinstance(result, tuple):
            conn.send_soon(*result)
            return
        conn.spawn(self._finish_later(conn, cid, result), f"{self.name}-pending")

    async def _finish_later(self, conn: Connection, cid: int, pending: Awaitable[Response]) -> None:
        try:
            result = await pending
        except HeadwaterError as exc:
            self._count_error(conn, exc)
            await conn.send(messages.error_response(cid, exc))
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("%s: request from %s failed", self.name, conn.peer)
            await conn.send(messages.error_response(cid, exc))
            return
        if result is not None:
            await conn.send(*result)

    def _count_error(self, conn: Connection, exc: HeadwaterError) -> None:
        self.stats.request_errors += 1
        if not exc.retriable:
            self.stats.log_once(conn.peer, type(exc).__name__, str(exc))

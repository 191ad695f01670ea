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
once per peer and kind, never per byte. An exception no handler expected (a
bug) is answered UNKNOWN, counted, and logged with its traceback once per kind.

Every listener is bounded by :class:`~edge.net.limits.ServerLimits`: connections
beyond the cap are refused with an error frame (correlation id 0) and closed;
idle connections and frames that stall halfway are cut; a connection's requests
in flight, its long polls and the partial frames of all connections together
are bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any, Final

import cbor2

from edge.logstate import LogOnce, StateLog
from edge.net.connection import CONNECTION_ERROR_ID
from edge.net.limits import FREE_SHARE_BYTES, BufferPool, ServerLimits, charge_of
from edge.protocol import messages
from edge.protocol.errors import (
    ErrorCode,
    HeadwaterError,
    InsufficientResources,
    InvalidRequest,
    ProtocolError,
)
from edge.protocol.framing import FrameDecoder, encode_frame, frame_header

log = logging.getLogger(__name__)

READ_CHUNK: Final = 256 * 1024
# What the stream reader holds ahead of the decoder (it buffers up to twice this
# plus one socket read before it stops reading the socket); small, because it is
# per connection and unbounded by anything else.
READER_LIMIT: Final = 16 * 1024
# Responses queue in the transport up to this many bytes before a slow reader
# pauses its own requests (flow control towards that one peer only).
WRITE_HIGH_WATER: Final = 64 * 1024
# Dead peers on a long-idle stream are found by TCP keepalive: probes after 60 s
# of silence, every 10 s, 6 unanswered probes close the connection.
KEEPALIVE: Final = ((getattr(socket, "TCP_KEEPIDLE", None), 60),
                    (getattr(socket, "TCP_KEEPINTVL", None), 10),
                    (getattr(socket, "TCP_KEEPCNT", None), 6))
# A connection's pipelined requests are served this many at a time before the
# loop turns to others: one client's 30k requests must not stall everyone's acks.
FAIR_SHARE_FRAMES: Final = 32
# (host, kind) pairs and kinds of unexpected error remembered for log-once; past
# that the oldest is forgotten (a scan from many hosts must not grow them forever).
MAX_LOGGED_PEERS: Final = 4096
MAX_ERROR_KINDS: Final = 256

Response = tuple[dict[str, Any], bytes] | None
Dispatch = Callable[["Connection", dict[Any, Any], bytes], Response | Awaitable[Response]]


@dataclass
class ServerStats:
    """Counters a listener exposes (and tests read)."""

    connections: int = 0
    requests: int = 0
    protocol_errors: int = 0
    request_errors: int = 0
    # Connections refused at the cap, closed idle, cut halfway through a frame,
    # cut because they did not read their answers; long polls refused.
    refused: int = 0
    idle_closed: int = 0
    frame_timeouts: int = 0
    write_timeouts: int = 0
    long_polls_refused: int = 0
    # Exceptions no handler expected (answered UNKNOWN).
    unexpected_errors: int = 0
    # Bytes read from and written to this listener's connections (frames, TLS payload).
    bytes_in: int = 0
    bytes_out: int = 0
    _peers: LogOnce = field(default_factory=lambda: LogOnce(log, max_keys=MAX_LOGGED_PEERS),
                            repr=False, compare=False)
    _kinds: LogOnce = field(default_factory=lambda: LogOnce(log, max_keys=MAX_ERROR_KINDS),
                            repr=False, compare=False)

    def log_once(self, peer: str, kind: str, message: str) -> None:
        """Log the first error of a kind from a host; count the rest silently."""
        self._peers.warning((peer.rsplit(":", 1)[0], kind),
                            "%s from %s: %s (further %s errors from this host are counted, "
                            "not logged)", kind, peer, message, kind)

    def unexpected(self, server: str, where: str, exc: BaseException) -> None:
        """Count an exception no handler expected; log it with its traceback once
        per (type, place) for the life of the process."""
        self.unexpected_errors += 1
        name = type(exc).__name__
        self._kinds.error((name, where), "%s: unexpected %s in %s (answered UNKNOWN; further "
                          "ones of this kind are counted, not logged)", server, name, where,
                          exc_info=exc)


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
        self._task_ended = asyncio.Event()
        self.long_polls = 0
        self.closed = False
        self.on_close: list[Callable[[], None]] = []
        # On a private port: the SPU id the caller proved (edge/net/auth.py).
        self.spu_id: int | None = None
        # On a public port: (token digest, principal) after LOGIN (edge/tokens.py).
        self.login: tuple[str, str] | None = None
        peer_host = peer[0] if isinstance(peer, tuple) else str(peer)
        self.peer_host = str(peer_host)

    @property
    def in_flight(self) -> int:
        """Requests being served (and answers waiting for the writer)."""
        return len(self._tasks)

    async def task_ended(self) -> None:
        """Until one of this connection's tasks finished."""
        self._task_ended.clear()
        await self._task_ended.wait()

    @property
    def principal(self) -> str | None:
        """Who the caller proved to be: the common name of its verified client
        certificate, else the principal of the token it logged in with, if any."""
        cert = self.writer.get_extra_info("peercert")
        for rdn in cert.get("subject", ()) if cert else ():
            for key, value in rdn:
                if key == "commonName":
                    return str(value)
        return None if self.login is None else self.login[1]

    @property
    def gone(self) -> bool:
        """Closed here, or the peer went away (writing on would only be refused, and
        asyncio warns about every such write)."""
        if not self.closed and self.writer.transport.is_closing():
            self.closed = True
        return self.closed

    async def send(self, meta: dict[str, Any], blob: bytes = b"") -> None:
        """Write one frame, waiting while the peer is not reading."""
        if self.gone:
            return
        async with self._write_lock:
            if self.writer.transport.is_closing():  # went while waiting for the writer
                self.closed = True
                return
            frame = encode_frame(meta, blob)
            self.server.stats.bytes_out += len(frame)
            self.writer.write(frame)
            await self.writer.drain()

    def send_soon(self, meta: dict[str, Any], blob: bytes = b"") -> None:
        """Write a frame now if nothing else is writing, else queue it behind the writer."""
        if self.gone:
            return
        if self._write_lock.locked():
            self.spawn(self.send(meta, blob), "reply")
        else:
            frame = encode_frame(meta, blob)
            self.server.stats.bytes_out += len(frame)
            self.writer.write(frame)

    async def send_file(self, meta: dict[str, Any], fd: int, position: int, length: int) -> None:
        """Write a frame whose blob is ``length`` bytes of file ``fd`` from ``position``.

        Plain TCP uses ``loop.sendfile`` (zero-copy); TLS falls back to reading.
        The fd is duplicated first, so retention closing the segment meanwhile is harmless.
        """
        if self.gone:
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

    async def close_after(self, meta: dict[str, Any]) -> None:
        """Send a last frame, then close; frames still arriving are not served."""
        await self.send(meta)
        if not self.closed:
            self.closed = True
            self.writer.close()

    def spawn(self, coro: Awaitable[None], name: str) -> None:
        """Run a per-connection task that is cancelled when the connection closes."""
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._task_ended.set()
        if not task.cancelled() and (exc := task.exception()) is not None:
            if not isinstance(exc, ConnectionError | OSError):
                self.server.stats.unexpected(self.server.name, f"task {task.get_name()}", exc)
            self.abort()

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self.writer.transport.abort()
            self._task_ended.set()  # a read loop waiting for a slot sees it is closed

    def _finish(self) -> None:
        self.closed = True
        for task in list(self._tasks):
            task.cancel()
        for callback in self.on_close:
            callback()
        self.writer.transport.abort()


class FrameServer:
    """Listener that decodes frames and dispatches requests, within its limits.

    ``max_connections`` defaults to ``limits.max_connections`` (a private port
    passes ``limits.max_peer_connections``); ``pool`` is shared by the listeners
    of one process. ``long_polls`` are the API keys whose requests may wait for
    long (fetches with a wait, streams, watches): each connection may park at
    most ``limits.max_long_polls`` of them, further ones are refused at once.
    """

    def __init__(
        self, name: str, dispatch: Dispatch, *, ssl_context: ssl.SSLContext | None = None,
        max_frame_bytes: int | None = None, limits: ServerLimits | None = None,
        max_connections: int | None = None, pool: BufferPool | None = None,
        long_polls: Collection[int] = (),
        on_connect: Callable[[Connection], None] | None = None,
    ) -> None:
        self.name = name
        self._dispatch = dispatch
        self._on_connect = on_connect
        self._ssl = ssl_context
        self._max_frame = max_frame_bytes
        self.limits = limits or ServerLimits()
        self.max_connections = max_connections or self.limits.max_connections
        self.pool = pool or BufferPool(self.limits.max_buffered_bytes)
        self._long_polls = frozenset(long_polls)
        self._server: asyncio.Server | None = None
        self._connections: set[Connection] = set()
        self._refusing = StateLog(log)
        self.stats = ServerStats()
        # Told of every answered request: (listener, API name, seconds, error code or 0).
        self.observe: Callable[[str, str, float, int], None] | None = None

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    def status(self) -> dict[str, int]:
        """What the listener holds now and its counters (PARTITION_STATUS shows it)."""
        st = self.stats
        return {"open": len(self._connections),
                "in_flight": sum(c.in_flight for c in self._connections),
                "connections": st.connections,
                "refused": st.refused, "idle_closed": st.idle_closed,
                "frame_timeouts": st.frame_timeouts, "write_timeouts": st.write_timeouts,
                "long_polls_refused": st.long_polls_refused,
                "protocol_errors": st.protocol_errors,
                "unexpected_errors": st.unexpected_errors,
                "request_errors": st.request_errors, "requests": st.requests,
                "bytes_in": st.bytes_in, "bytes_out": st.bytes_out}

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen; return the bound (host, port) — port 0 picks a free one."""
        self._server = await asyncio.start_server(
            self._handle, host, port, ssl=self._ssl, limit=READER_LIMIT,
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
        self.pool.wake()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _tune_socket(writer)
        writer.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        if len(self._connections) >= self.max_connections:
            self._refuse(writer)
            return
        conn = Connection(reader, writer, self)
        self._connections.add(conn)
        self.stats.connections += 1
        if self._on_connect is not None:
            self._on_connect(conn)
        decoder = (FrameDecoder(max_frame_bytes=self._max_frame) if self._max_frame
                   else FrameDecoder())
        charged = _Charge(self.pool)
        try:
            await self._read_loop(conn, decoder, charged)
        except ProtocolError as exc:
            self.stats.protocol_errors += 1
            self.stats.log_once(conn.peer, "protocol error", str(exc))
        except (ConnectionError, OSError, ssl.SSLError) as exc:
            self.stats.log_once(conn.peer, "connection error", str(exc) or type(exc).__name__)
        finally:
            charged.set(0)
            self._connections.discard(conn)
            conn._finish()
            if self._refusing.active and len(self._connections) < self.max_connections:
                self._refusing.end("%s: accepting connections again, %d open", self.name,
                                   len(self._connections))

    def _refuse(self, writer: asyncio.StreamWriter) -> None:
        """Answer a connection over the cap with one error frame, then close it."""
        self.stats.refused += 1
        self._refusing.begin("%s: %d connections open, the limit: refusing new ones "
                             "(counted; one line when it ends)", self.name,
                             len(self._connections))
        exc = InsufficientResources(
            f"{self.name} refuses the connection: {self.max_connections} connections open "
            "(limits.max_connections)", limit=self.max_connections)
        with contextlib.suppress(Exception):
            writer.write(encode_frame(messages.error_response(CONNECTION_ERROR_ID, exc)))
            writer.transport.close()  # flushes the error frame first

    async def _read_loop(self, conn: Connection, decoder: FrameDecoder,
                         charged: _Charge) -> None:
        partial_s = 0.0  # time spent waiting for the rest of a started frame
        while not conn.closed:
            served = 0
            while not conn.closed:
                if conn.in_flight >= self.limits.max_in_flight:
                    # Pipelining is bounded: the next request waits in the decoder.
                    await conn.task_ended()
                    continue
                frame = decoder.next_frame()
                if frame is None:
                    break
                partial_s = 0.0
                self.stats.requests += 1
                self._serve(conn, frame.meta, frame.blob)
                await self._drain_if_full(conn)
                served += 1
                if served % FAIR_SHARE_FRAMES == 0:
                    await asyncio.sleep(0)  # a long pipeline must not hold up the others
            charged.set(charge_of(decoder.buffered))
            if decoder.buffered == 0:
                partial_s = 0.0
            started = time.monotonic()
            data = await self._read(conn, decoder.buffered, charged, partial_s)
            if decoder.buffered:
                partial_s += time.monotonic() - started
            if not data:
                return
            self.stats.bytes_in += len(data)
            decoder.feed(data)
            charged.set(charge_of(decoder.buffered))

    async def _read(self, conn: Connection, buffered: int, charged: _Charge,
                    partial_s: float) -> bytes:
        """The next bytes of ``conn`` within its time limits and the buffer pool;
        b"" when the connection ends (or is cut)."""
        limits = self.limits
        if buffered:
            timeout: float | None = max(limits.frame_timeout_s - partial_s, 0.0)
        elif conn.in_flight == 0:
            timeout = limits.idle_timeout_s
        else:
            timeout = None  # a stream or a long poll is open: not idle
        # A timer that aborts the connection rather than asyncio.timeout: a timeout
        # that fires as the read completes leaves a cancellation behind (3.11).
        timer = (asyncio.get_running_loop().call_later(timeout, self._expire, conn, buffered)
                 if timeout is not None else None)
        try:
            while not conn.closed:
                room = self.pool.limit - self.pool.used + charged.value
                size = min(READ_CHUNK, read_room(buffered, room))
                if size > 0:
                    # Reserved before the read, so connections reading at once
                    # cannot overcommit the pool; settled after it.
                    charged.set(charge_of(buffered + size))
                    return await conn.reader.read(size)
                await self.pool.wait_freed()
            return b""
        finally:
            if timer is not None:
                timer.cancel()

    def _expire(self, conn: Connection, buffered: int) -> None:
        if buffered:
            self.stats.frame_timeouts += 1
            self.stats.log_once(conn.peer, "frame timeout",
                                f"a frame still incomplete after "
                                f"{self.limits.frame_timeout_s:g} s ({buffered} bytes): "
                                "connection closed")
        else:
            self.stats.idle_closed += 1
            log.debug("%s: closing %s, idle for %g s", self.name, conn.peer,
                      self.limits.idle_timeout_s)
        conn.abort()
        self.pool.wake()  # a connection waiting for the pool sees it is closed

    async def _drain_if_full(self, conn: Connection) -> None:
        """Back-pressure: stop reading while responses pile up for a slow reader,
        and cut a reader that takes none of them for the idle timeout."""
        if conn.writer.transport.get_write_buffer_size() <= WRITE_HIGH_WATER:
            return
        try:
            async with asyncio.timeout(self.limits.idle_timeout_s), conn._write_lock:
                await conn.writer.drain()
        except TimeoutError:
            self.stats.write_timeouts += 1
            self.stats.log_once(conn.peer, "write timeout",
                                f"answers not read for {self.limits.idle_timeout_s:g} s: "
                                "connection closed")
            conn.abort()

    def _serve(self, conn: Connection, meta: dict[Any, Any], blob: bytes) -> None:
        started = time.perf_counter()
        raw_id = meta.get("id")
        cid = raw_id if isinstance(raw_id, int) and not isinstance(raw_id, bool) else -1
        api = meta.get("api")
        long_poll = isinstance(api, int) and api in self._long_polls
        try:
            if cid != raw_id:
                raise InvalidRequest("request without an integer correlation id")  # noqa: TRY301
            if long_poll and conn.long_polls >= self.limits.max_long_polls:
                self.stats.long_polls_refused += 1
                raise InsufficientResources(  # noqa: TRY301
                    f"{conn.long_polls} long polls open on this connection "
                    "(limits.max_long_polls)", limit=self.limits.max_long_polls)
            result = self._dispatch(conn, meta, blob)
        except HeadwaterError as exc:
            self._count_error(conn, exc)
            conn.send_soon(messages.error_response(cid, exc))
            self._observed(api, started, int(exc.code))
            return
        except Exception as exc:
            self.stats.unexpected(self.name, _api_name(api), exc)
            conn.send_soon(messages.error_response(cid, exc))
            self._observed(api, started, int(ErrorCode.UNKNOWN))
            return
        if result is None:
            return
        if isinstance(result, tuple):
            conn.send_soon(*result)
            self._observed(api, started, 0)
            return
        if long_poll:
            conn.long_polls += 1
        conn.spawn(self._finish_later(conn, cid, api, result, long_poll=long_poll,
                                      started=started),
                   f"{self.name}-pending")

    def _observed(self, api: object, started: float, code: int) -> None:
        if self.observe is not None:
            self.observe(self.name, _api_name(api), time.perf_counter() - started, code)

    async def _finish_later(self, conn: Connection, cid: int, api: object,
                            pending: Awaitable[Response], *, long_poll: bool,
                            started: float) -> None:
        where = _api_name(api)
        try:
            result = await pending
        except HeadwaterError as exc:
            self._count_error(conn, exc)
            await conn.send(messages.error_response(cid, exc))
            self._observed(api, started, int(exc.code))
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if conn.gone or isinstance(exc, ConnectionError):
                conn.abort()  # the peer left while its request was being served
                return
            self.stats.unexpected(self.name, where, exc)
            await conn.send(messages.error_response(cid, exc))
            self._observed(api, started, int(ErrorCode.UNKNOWN))
            return
        finally:
            if long_poll:
                conn.long_polls -= 1
        if result is not None:
            await conn.send(*result)
        self._observed(api, started, 0)

    def _count_error(self, conn: Connection, exc: HeadwaterError) -> None:
        self.stats.request_errors += 1
        if not exc.retriable:
            self.stats.log_once(conn.peer, type(exc).__name__, str(exc))


class _Charge:
    """What one connection currently draws from its process's buffer pool."""

    def __init__(self, pool: BufferPool) -> None:
        self.pool = pool
        self.value = 0

    def set(self, value: int) -> None:
        if value != self.value:
            self.pool.charge(self.value, value)
            self.value = value


def read_room(buffered: int, pool_room: int) -> int:
    """Bytes a connection holding ``buffered`` may read: its free share, then what
    the pool has left (``pool_room`` counts the connection's own charge as free)."""
    return max(FREE_SHARE_BYTES - buffered, FREE_SHARE_BYTES + pool_room - buffered)


def _api_name(api: object) -> str:
    if isinstance(api, int) and not isinstance(api, bool):
        with contextlib.suppress(ValueError):
            return messages.ApiKey(api).name
    return "a request"


def _tune_socket(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in KEEPALIVE:
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)

"""Client side of a Headwater connection: pipelined requests and streams.

One connection multiplexes any number of outstanding requests, matched to
their responses by correlation id. A *stream* (stream fetch, metadata watch,
replica assignments) is a request whose id keeps receiving frames until it is
ended; its frames land in a bounded queue, and when the queue is full the read
loop stops reading the socket, so TCP carries the back-pressure to the server.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from edge.protocol import messages
from edge.protocol.errors import ConnectionLost, HeadwaterError, ProtocolError, RequestTimeout
from edge.protocol.framing import MAX_RESPONSE_META_BYTES, FrameDecoder, encode_frame
from edge.protocol.messages import ApiKey
from edge.tasks import cancel

log = logging.getLogger(__name__)

READ_CHUNK = 256 * 1024
CONNECT_TIMEOUT_S = 5.0
REQUEST_TIMEOUT_S = 30.0
# A Headwater server answers API_VERSIONS at once; a port that stays silent this long
# is something else (an HTTP server waits for a request line that never comes).
HANDSHAKE_TIMEOUT_S = 5.0
# Request ids start at 1; id 0 is what a server sends unprompted about the
# connection: an error refusing it, or a private port's hello.
CONNECTION_ERROR_ID = 0

Frame = tuple[dict[Any, Any], bytes]
# Runs the private-port handshake (edge/net/auth.py) given the server's first frame.
Authenticator = Callable[["ClientConnection", Awaitable[Frame]], Awaitable[None]]


def split_addr(addr: str, default_port: int | None = None) -> tuple[str, int]:
    """``"host:port"`` (IPv6 as ``[::1]:9003``) → (host, port)."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        if default_port is None:
            raise ValueError(f"address {addr!r} must be HOST:PORT")
        return addr.strip("[]"), default_port
    if not 0 <= int(port) <= 65535:
        raise ValueError(f"port {port} out of range in {addr!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


# A cloud cluster's SCs (one active, the others standby) are given as a list.
MAX_SC_ADDRESSES = 16


def split_addr_list(value: str) -> list[str]:
    """``"h1:9003,h2:9003"`` → the addresses, each checked as :func:`split_addr`
    checks one; ValueError for an empty entry, a repeat or more than 16."""
    parts = [part.strip() for part in value.split(",")]
    if not all(parts):
        raise ValueError(f"empty address in {value!r}")
    if len(parts) > MAX_SC_ADDRESSES:
        raise ValueError(f"at most {MAX_SC_ADDRESSES} addresses, not {len(parts)}")
    if len(set(parts)) != len(parts):
        raise ValueError(f"an address is listed twice in {value!r}")
    for part in parts:
        split_addr(part)
    return parts


def _retrieve(fut: asyncio.Future[Any]) -> None:
    # A failed request whose caller gave up must not log "exception never retrieved".
    if not fut.cancelled():
        fut.exception()


class Stream:
    """Frames arriving for one long-lived request."""

    def __init__(self, conn: ClientConnection, cid: int, maxsize: int) -> None:
        self._conn = conn
        self.cid = cid
        self.queue: asyncio.Queue[tuple[dict[Any, Any], bytes] | BaseException] = (
            asyncio.Queue(maxsize)
        )

    def __aiter__(self) -> AsyncIterator[tuple[dict[Any, Any], bytes]]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[tuple[dict[Any, Any], bytes]]:
        while True:
            item = await self.next()
            if item is None:
                return
            yield item

    async def next(self) -> tuple[dict[Any, Any], bytes] | None:
        """The next frame, None when the server ended the stream."""
        item = await self.queue.get()
        if isinstance(item, BaseException):
            raise item
        meta, blob = item
        messages.check_response(meta)
        if meta.get("end"):
            return None
        return meta, blob

    def close(self) -> None:
        self._conn._streams.pop(self.cid, None)


class ClientConnection:
    """A connection to one SC or SPU address."""

    def __init__(self, addr: str, *, ssl_context: ssl.SSLContext | None = None,
                 server_hostname: str | None = None,
                 authenticate: Authenticator | None = None) -> None:
        self.addr = addr
        self._ssl = ssl_context
        self._server_hostname = server_hostname
        self._authenticate = authenticate
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[tuple[dict[Any, Any], bytes]]] = {}
        self._streams: dict[int, Stream] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self.closed = False
        self.versions: dict[int, tuple[int, int]] = {}
        # What the peer said it is in its API_VERSIONS answer.
        self.role: str | None = None
        self.cluster: str | None = None
        # A standby SC names the active one (role "sc-standby").
        self.active: str | None = None

    def local_host(self) -> str | None:
        """The local address this connection leaves from (the one the peer can reach)."""
        sockname = self._writer.get_extra_info("sockname") if self._writer else None
        return str(sockname[0]) if sockname else None

    async def connect(self, *, handshake: bool = True) -> ClientConnection:
        host, port = split_addr(self.addr)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=self._ssl, limit=READ_CHUNK,
                    server_hostname=(self._server_hostname or host) if self._ssl else None,
                )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise ConnectionLost(f"cannot connect to {self.addr}: {str(exc) or 'timed out'}",
                                 addr=self.addr) from None
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._writer = writer
        # A private port speaks first (its hello, correlation id 0): catch that frame.
        hello: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        hello.add_done_callback(_retrieve)
        if self._authenticate is not None:
            self._pending[0] = hello
        self._reader_task = asyncio.create_task(self._read_loop(reader), name=f"conn-{self.addr}")
        if self._authenticate is not None:
            await self._run_handshake(self._authenticate, hello)
        if handshake:
            meta = await self._hello()
            raw = meta.get("versions", {})
            self.versions = {int(k): (int(v[0]), int(v[1])) for k, v in raw.items()}
            role, cluster = meta.get("role"), meta.get("cluster")
            self.role = role if isinstance(role, str) else None
            self.cluster = cluster if isinstance(cluster, str) else None
            active = meta.get("active")
            self.active = active if isinstance(active, str) and active else None
        return self

    async def _hello(self) -> dict[Any, Any]:
        """API_VERSIONS, telling a port that is not Headwater's apart from a slow one."""
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                meta, _ = await self.request(ApiKey.API_VERSIONS)
        except TimeoutError:
            await self.close()
            raise ConnectionLost(
                f"{self.addr} accepted the connection but gave no Headwater answer within "
                f"{HANDSHAKE_TIMEOUT_S:g}s: is it a Headwater SC or SPU port?",
                addr=self.addr) from None
        except ProtocolError as exc:
            await self.close()
            raise ProtocolError(f"{self.addr} does not speak the Headwater protocol ({exc}): "
                                "is it a Headwater SC or SPU port?") from None
        return meta

    async def _run_handshake(self, authenticate: Authenticator, hello: asyncio.Future[Frame]
                             ) -> None:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await authenticate(self, asyncio.shield(hello))
        except TimeoutError:
            await self.close()
            raise ConnectionLost(f"{self.addr} did not complete the private-port handshake "
                                 f"within {CONNECT_TIMEOUT_S:g}s", addr=self.addr) from None
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        self._fail(ConnectionLost(f"connection to {self.addr} closed", addr=self.addr))
        if self._reader_task is not None:
            # edge.tasks.cancel: a cancellation of the closing task itself propagates.
            await cancel(self._reader_task)

    async def __aenter__(self) -> ClientConnection:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def send_request(self, api: ApiKey, blob: bytes = b"", /, **fields: Any
                     ) -> asyncio.Future[tuple[dict[Any, Any], bytes]]:
        """Write a request now; the future resolves to its (checked) response."""
        if self.closed or self._writer is None:
            raise ConnectionLost(f"connection to {self.addr} is closed", addr=self.addr)
        cid = next(self._ids)
        fut: asyncio.Future[tuple[dict[Any, Any], bytes]] = (
            asyncio.get_running_loop().create_future()
        )
        self._pending[cid] = fut
        fut.add_done_callback(_retrieve)
        self._writer.write(encode_frame(messages.request(api, cid, **fields), blob))
        return fut

    def send_oneway(self, api: ApiKey, blob: bytes = b"", /, **fields: Any) -> None:
        """Write a request that gets no response (produce with acks=none)."""
        if self.closed or self._writer is None:
            raise ConnectionLost(f"connection to {self.addr} is closed", addr=self.addr)
        self._writer.write(encode_frame(messages.request(api, next(self._ids), **fields), blob))

    async def drain(self) -> None:
        if self._writer is not None:
            try:
                await self._writer.drain()
            except (ConnectionError, OSError) as exc:
                raise ConnectionLost(str(exc), addr=self.addr) from None

    async def request(self, api: ApiKey, blob: bytes = b"", /, *,
                      timeout: float = REQUEST_TIMEOUT_S, **fields: Any
                      ) -> tuple[dict[Any, Any], bytes]:
        fut = self.send_request(api, blob, **fields)
        await self.drain()
        try:
            async with asyncio.timeout(timeout):
                meta, data = await asyncio.shield(fut)
        except TimeoutError:
            raise RequestTimeout(f"{api.name} to {self.addr} timed out after {timeout}s",
                                 addr=self.addr) from None
        messages.check_response(meta)
        return meta, data

    def open_stream(self, api: ApiKey, blob: bytes = b"", /, *, maxsize: int = 8,
                    **fields: Any) -> Stream:
        if self.closed or self._writer is None:
            raise ConnectionLost(f"connection to {self.addr} is closed", addr=self.addr)
        cid = next(self._ids)
        stream = Stream(self, cid, maxsize)
        self._streams[cid] = stream
        self._writer.write(encode_frame(messages.request(api, cid, **fields), blob))
        return stream

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        decoder = FrameDecoder(max_meta_bytes=MAX_RESPONSE_META_BYTES)
        try:
            while True:
                data = await reader.read(READ_CHUNK)
                if not data:
                    raise ConnectionLost(f"{self.addr} closed the connection", addr=self.addr)
                decoder.feed(data)
                while (frame := decoder.next_frame()) is not None:
                    await self._deliver(frame.meta, frame.blob)
        except asyncio.CancelledError:
            raise
        except HeadwaterError as exc:
            self._fail(exc)
        except (OSError, ssl.SSLError) as exc:
            self._fail(ConnectionLost(f"connection to {self.addr} failed: {exc}", addr=self.addr))

    async def _deliver(self, meta: dict[Any, Any], blob: bytes) -> None:
        cid = meta.get("id")
        if not isinstance(cid, int):
            return
        if cid == CONNECTION_ERROR_ID:
            # The server speaks unprompted: an error refuses the whole connection (too
            # many open), anything else is a private port's hello (below).
            try:
                messages.check_response(meta)
            except HeadwaterError as exc:
                self._fail(exc)
                return
        fut = self._pending.pop(cid, None)
        if fut is not None:
            if not fut.done():
                fut.set_result((meta, blob))
            return
        stream = self._streams.get(cid)
        if stream is not None:
            # A full queue blocks this loop, which stops reading the socket: TCP back-pressure.
            await stream.queue.put((meta, blob))
            if meta.get("end") or meta.get("err"):
                self._streams.pop(cid, None)

    def _fail(self, exc: BaseException) -> None:
        if self.closed:
            return
        self.closed = True
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(exc)
        self._pending.clear()
        for stream in self._streams.values():
            # Queued frames are dropped: a stream's reader resumes from what it consumed.
            while not stream.queue.empty():
                stream.queue.get_nowait()
            stream.queue.put_nowait(exc)
        self._streams.clear()
        if self._writer is not None:
            self._writer.transport.abort()

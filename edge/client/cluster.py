"""What every client shares: the SC connection, metadata, SPU connections.

Clients are given only the SC address. They ask the SC for partition leaders
and SPU addresses, route requests to the leaders themselves, and refresh the
metadata when an SPU says it is not the leader (or is gone).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from typing import Any, NamedTuple

from edge.discovery.spec import parse_sc
from edge.net.backoff import Backoff
from edge.net.connection import ClientConnection, split_addr_list
from edge.protocol import sc_api
from edge.protocol.errors import (
    ConnectionLost,
    HeadwaterError,
    LeaderNotAvailable,
    NotController,
    PartitionNotFound,
    ProtocolError,
    TopicNotFound,
)
from edge.protocol.messages import SC_STANDBY_ROLE, ApiKey
from edge.protocol.schema import decode_response

log = logging.getLogger(__name__)

__all__ = ["Backoff", "ClusterClient", "Metadata", "PartitionInfo"]


class PartitionInfo(NamedTuple):
    topic: str
    partition: int
    leader: int | None
    epoch: int


class Metadata(NamedTuple):
    version: int
    topics: dict[str, list[PartitionInfo]]
    spus: dict[int, str]
    compression: dict[str, str]

    @classmethod
    def parse(cls, meta: dict[Any, Any]) -> Metadata:
        """A METADATA answer (or WATCH_METADATA push); a malformed one is a ProtocolError."""
        md = decode_response(sc_api.METADATA, meta)
        topics = {name: sorted((PartitionInfo(name, p.partition, p.leader, p.epoch)
                                for p in parts), key=lambda p: p.partition)
                  for name, parts in md.topics.items()}
        return cls(md.version, topics, _online_spus(md.spus), md.compression)


def _online_spus(spus: dict[str, dict[str, Any]]) -> dict[int, str]:
    """SPU id -> public address of the SPUs that are online (``spus`` of METADATA)."""
    out = {}
    for key, spu in spus.items():
        public, online = spu.get("public"), spu.get("online", True)
        if not (key.isascii() and key.isdigit() and isinstance(public, str)
                and isinstance(online, bool)):
            raise ProtocolError(f"field 'spus': SPU {key!r} is not an id with "
                                "{public: text, online: boolean}", field="spus")
        if online:
            out[int(key)] = public
    return out


class ClusterClient:
    """SC metadata and leader connections for one client object."""

    def __init__(self, sc: str, *, ssl_context: ssl.SSLContext | None = None,
                 server_hostname: str | None = None, token: str | None = None) -> None:
        if token is not None and not 0 < len(token) <= sc_api.MAX_TOKEN_CHARS:
            raise ValueError(f"a token is 1..{sc_api.MAX_TOKEN_CHARS} characters")
        self.sc_addr = sc
        self.ssl = ssl_context
        self.server_hostname = server_hostname
        # Proved with LOGIN on every new connection (SC and SPUs): edge/tokens.py.
        self.token = token
        self._sc: ClientConnection | None = None
        self._spus: dict[str, ClientConnection] = {}
        self._lock = asyncio.Lock()
        self.metadata: Metadata | None = None
        self._watch: asyncio.Task[None] | None = None
        # ``sc = "mdns:SITE"``: the address last found on the LAN, looked up again
        # whenever it stops answering.
        self._found: str | None = None
        # ``sc = "h1:9003,h2:9003"``: the listed address that was active last.
        self._active: str | None = None

    def start_watch(self) -> None:
        """Follow the SC's metadata stream, so leader changes arrive as they happen
        (requests that hit a stale leader still refresh on their own)."""
        if self._watch is None:
            self._watch = asyncio.get_running_loop().create_task(
                self._follow_metadata(), name=f"watch-{self.sc_addr}")

    async def _follow_metadata(self) -> None:
        backoff = Backoff(0.1, 5.0)
        while True:
            conn = None
            try:
                conn = await self.connect_sc()
                stream = conn.open_stream(ApiKey.WATCH_METADATA)
                while (item := await stream.next()) is not None:
                    self.metadata = Metadata.parse(item[0])
                    backoff.reset()
            except HeadwaterError as exc:
                log.debug("metadata watch on %s interrupted: %s", self.sc_addr, exc)
            finally:
                if conn is not None:
                    await conn.close()
            await backoff.sleep()

    async def sc(self) -> ClientConnection:
        if self._sc is None or self._sc.closed:
            self._sc = await self.connect_sc()
        return self._sc

    async def connect_sc(self) -> ClientConnection:
        """A new connection to the active SC: of a list ``h1:9003,h2:9003``, the one
        that answered last first, then the others, following a standby's pointer to
        the active one; found on the LAN for an ``mdns`` address."""
        spec = parse_sc(self.sc_addr)
        if spec is None:
            return await self._connect_active(split_addr_list(self.sc_addr))
        if self._found is not None:
            try:
                return await self.connect(self._found)
            except ConnectionLost:
                self._found = None
        from edge.discovery.finder import find_sc

        self._found = await find_sc(spec)
        return await self.connect(self._found)

    async def _connect_active(self, listed: list[str]) -> ClientConnection:
        order = sorted(listed, key=lambda a: a != self._active)
        failure: HeadwaterError | None = None
        for addr in order:
            try:
                conn = await self.connect(addr)
                if conn.role == SC_STANDBY_ROLE:
                    conn = await self._follow_standby(conn)
            except (ConnectionLost, NotController) as exc:
                failure = exc
                continue
            self._active = conn.addr if conn.addr in listed else None
            return conn
        assert failure is not None
        raise failure

    async def _follow_standby(self, conn: ClientConnection) -> ClientConnection:
        """The active SC a standby named (once: a standby naming a standby fails)."""
        hint = conn.active
        await conn.close()
        if hint is None:
            raise NotController(f"{conn.addr} is a standby SC and knows no active one yet "
                                "(an election is under way)", addr=conn.addr)
        active = await self.connect(hint)
        if active.role == SC_STANDBY_ROLE:
            await active.close()
            raise NotController(f"{hint}, named active by {conn.addr}, is a standby too",
                                addr=hint)
        return active

    async def connect(self, addr: str) -> ClientConnection:
        conn = ClientConnection(addr, ssl_context=self.ssl, server_hostname=self.server_hostname)
        await conn.connect()
        if self.token is not None and conn.role != SC_STANDBY_ROLE:
            try:
                await conn.request(ApiKey.LOGIN, token=self.token)
            except BaseException:
                await conn.close()
                raise
        return conn

    async def sc_request(self, api: ApiKey, /, **fields: Any) -> dict[Any, Any]:
        """A request to the SC, reconnecting once if the connection had dropped."""
        for attempt in (1, 2):
            conn = await self.sc()
            try:
                meta, _ = await conn.request(api, **fields)
            except (ConnectionLost, NotController):
                # The SC went away, or stepped down to standby: find the active one.
                await conn.close()
                self._sc = None
                if attempt == 2:
                    raise
                continue
            return meta
        raise AssertionError("unreachable")  # pragma: no cover

    async def refresh(self) -> Metadata:
        async with self._lock:
            self.metadata = Metadata.parse(await self.sc_request(ApiKey.METADATA))
            return self.metadata

    async def partitions(self, topic: str) -> list[PartitionInfo]:
        md = self.metadata or await self.refresh()
        if topic not in md.topics:
            md = await self.refresh()
        if topic not in md.topics:
            raise TopicNotFound(f"topic {topic!r} does not exist", topic=topic)
        return md.topics[topic]

    async def leader_addr(self, topic: str, partition: int) -> str:
        parts = await self.partitions(topic)
        if not 0 <= partition < len(parts):
            raise PartitionNotFound(f"{topic} has {len(parts)} partitions, no {partition}",
                                    topic=topic, partition=partition)
        info = parts[partition]
        md = self.metadata
        if info.leader is None or md is None or info.leader not in md.spus:
            raise LeaderNotAvailable(f"no leader for {topic}/{partition} right now",
                                     topic=topic, partition=partition)
        return md.spus[info.leader]

    def leader_moved(self, topic: str, partition: int, addr: str) -> bool:
        """True when the metadata (kept current by the watch) names a leader other
        than ``addr``: a request or stream waiting on ``addr`` should move, since a
        deposed leader that hangs (a frozen process, a dead host) never answers."""
        md = self.metadata
        parts = md.topics.get(topic) if md is not None else None
        if md is None or parts is None or not 0 <= partition < len(parts):
            return False
        leader = parts[partition].leader
        return leader is not None and md.spus.get(leader, addr) != addr

    async def leader(self, topic: str, partition: int) -> ClientConnection:
        """The shared connection to the partition's leader."""
        addr = await self.leader_addr(topic, partition)
        conn = self._spus.get(addr)
        if conn is None or conn.closed:
            conn = await self.connect(addr)
            self._spus[addr] = conn
        return conn

    async def dedicated(self, topic: str, partition: int) -> ClientConnection:
        """A new connection to the leader (for a stream that must not block others)."""
        return await self.connect(await self.leader_addr(topic, partition))

    async def spu_connections(self) -> list[ClientConnection]:
        md = await self.refresh()
        out = []
        for addr in sorted(set(md.spus.values())):
            try:
                conn = self._spus.get(addr)
                if conn is None or conn.closed:
                    conn = self._spus[addr] = await self.connect(addr)
                out.append(conn)
            except HeadwaterError as exc:
                log.warning("SPU %s unreachable: %s", addr, exc)
        return out

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        conns = list(self._spus.values()) + ([self._sc] if self._sc else [])
        self._spus.clear()
        self._sc = None
        for conn in conns:
            await conn.close()

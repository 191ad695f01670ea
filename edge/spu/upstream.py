"""Edge side of the upstream mirror: one uplink per led partition of an upstream topic.

Each uplink asks the cloud SC for its home partition (MIRROR_RESOLVE), asks the
cloud leader where that partition ends (MIRROR_OFFSETS), and from there sends
the stored batches below this partition's high watermark as they are
(MIRROR_APPEND). The resume point is always the cloud's answer, at every
connect and after every refused batch: the cloud appends only where a batch
continues its log, so a reconnect, a replay or a new edge leader can never
store a record twice. Without a cloud the data waits on disk; the uplink
retries with jittered backoff up to ``max_backoff_s`` and never gives up. A
state change is logged once, not once per retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any

from edge.net.backoff import Backoff
from edge.net.connection import ClientConnection
from edge.protocol.errors import HeadwaterError, NotContiguous
from edge.protocol.messages import ApiKey
from edge.spu.config import UpstreamConfig
from edge.spu.partition import Partition
from edge.spu.replicas import ReplicaSet
from edge.storage.mirror import Resume, resume_from

log = logging.getLogger(__name__)

# How often the set of uplinks is compared with the partitions this SPU leads
# (assignment changes also trigger it at once).
SYNC_S = 1.0
# A MIRROR_APPEND waits for every in-sync cloud replica; generous for LTE.
APPEND_TIMEOUT_S = 30.0
IDLE_CHECK_S = 1.0


class LinkState(Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    OFFLINE = "offline"
    STALLED = "stalled"  # connected, but the logs disagree (gap, cloud ahead, new source)
    UNCONFIGURED = "unconfigured"


class StalledError(HeadwaterError):
    """The cloud and edge logs cannot continue each other; retried slowly, shown loudly."""


@dataclass
class UplinkStatus:
    """What ``headwater upstream status`` shows for one partition."""

    topic: str
    partition: int
    state: LinkState = LinkState.CONNECTING
    cloud_partition: int | None = None
    cloud_end: int | None = None
    cloud_acked: int | None = None
    incarnation: str | None = None
    last_error: str | None = None
    since: float = 0.0

    def row(self, p: Partition) -> dict[str, Any]:
        edge_end = p.high_watermark
        acked = self.cloud_acked
        return {"topic": self.topic, "partition": self.partition, "state": self.state.value,
                "edge_end": edge_end, "edge_leo": p.log.log_end_offset,
                "cloud_partition": self.cloud_partition, "cloud_end": self.cloud_end,
                "cloud_acked": acked, "lag": None if acked is None else max(edge_end - acked, 0),
                "last_error": self.last_error, "since_s": round(time.time() - self.since, 1)}


class PartitionUplink:
    """Mirrors one led edge partition into its cloud home, for as long as it runs."""

    def __init__(self, p: Partition, cfg: UpstreamConfig, ssl_context: ssl.SSLContext | None
                 ) -> None:
        self.p = p
        self.cfg = cfg
        self._ssl = ssl_context
        self.status = UplinkStatus(p.topic, p.index, since=time.time())

    async def run(self) -> None:
        backoff = Backoff(0.2, self.cfg.max_backoff_s)
        while True:
            try:
                await self._session(backoff)
            except StalledError as exc:
                self._set_state(LinkState.STALLED, str(exc))
                backoff.delay = self.cfg.max_backoff_s
            except (HeadwaterError, OSError) as exc:
                self._set_state(LinkState.OFFLINE, str(exc) or type(exc).__name__)
            await backoff.sleep()

    def _set_state(self, state: LinkState, error: str | None = None) -> None:
        s = self.status
        s.last_error = error if error is not None else s.last_error
        if state == s.state:
            return
        s.state, s.since = state, time.time()
        how = log.info if state == LinkState.CONNECTED else log.warning
        how("upstream %s: %s%s", self.p.name, state.value, f" ({error})" if error else "")

    async def _session(self, backoff: Backoff) -> None:
        cloud_partition, leader = await self._resolve()
        conn = ClientConnection(leader, ssl_context=self._ssl)
        await conn.connect()
        try:
            meta, _ = await conn.request(ApiKey.MIRROR_OFFSETS, **self._fields(cloud_partition))
            self._seen(meta)
            offset = self._resume(int(meta["end"]))
            self._set_state(LinkState.CONNECTED)
            backoff.reset()
            await self._pump(conn, cloud_partition, offset)
        finally:
            await conn.close()

    async def _resolve(self) -> tuple[int, str]:
        """The cloud home partition of this edge partition and its leader's address."""
        source = self.p.upstream_source or ""
        async with ClientConnection(self.cfg.sc, ssl_context=self._ssl) as sc:
            meta, _ = await sc.request(ApiKey.MIRROR_RESOLVE, site=self.cfg.site,
                                       token=self.cfg.token, topic=self.p.topic,
                                       partition=self.p.index, source=source)
        self.status.cloud_partition = int(meta["partition"])
        return self.status.cloud_partition, str(meta["leader"])

    def _fields(self, cloud_partition: int) -> dict[str, Any]:
        return {"topic": self.p.topic, "partition": cloud_partition, "site": self.cfg.site,
                "token": self.cfg.token}

    def _seen(self, meta: dict[Any, Any]) -> None:
        """Record the cloud's position; a new incarnation means the cloud partition
        was re-created, which is worth one loud line (the resume point follows it)."""
        s = self.status
        incarnation = str(meta.get("incarnation", ""))
        if s.incarnation is not None and incarnation != s.incarnation:
            log.warning("upstream %s: the cloud partition was re-created (incarnation %s -> "
                        "%s); resuming from its end %s", self.p.name, s.incarnation,
                        incarnation, meta.get("end"))
        s.incarnation = incarnation
        s.cloud_end, s.cloud_acked = int(meta["end"]), int(meta["hw"])

    def _resume(self, cloud_end: int) -> int:
        decision = resume_from(cloud_end, self.p.log.log_start_offset,
                               self.p.log.log_end_offset)
        if decision.kind != Resume.SEND:
            raise StalledError(decision.reason)
        return decision.offset

    async def _pump(self, conn: ClientConnection, cloud_partition: int, offset: int) -> None:
        """Send stored batches from ``offset`` while this SPU leads the partition."""
        fields = self._fields(cloud_partition)
        while not self.p.closed:
            hw = self.p.high_watermark
            if hw <= offset:
                await self.p.wait_for_data(offset, IDLE_CHECK_S)
                continue
            blob = self.p.log.read_bytes(offset, self.cfg.max_request_bytes, max_offset=hw)
            try:
                meta, _ = await conn.request(ApiKey.MIRROR_APPEND, blob,
                                             timeout=APPEND_TIMEOUT_S, **fields)
            except NotContiguous as exc:
                # Someone (a former edge leader, an earlier attempt) got there first,
                # or the cloud lost an unreplicated tail: continue from its end.
                offset = self._resume(int(exc.data.get("log_end_offset", offset)))
                continue
            self._seen(meta)
            offset = int(meta["end"])


class Upstream:
    """The uplinks of this SPU: one per led partition of an upstream topic."""

    def __init__(self, cfg: UpstreamConfig | None, replicas: ReplicaSet,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.cfg = cfg
        self.replicas = replicas
        self._ssl = ssl_context
        self._links: dict[tuple[str, int], tuple[PartitionUplink, asyncio.Task[None]]] = {}

    async def run(self) -> None:
        while True:
            self.sync()
            await asyncio.sleep(SYNC_S)

    def _wanted(self) -> dict[tuple[str, int], Partition]:
        return {key: p for key, p in self.replicas.partitions.items()
                if p.is_leader and p.upstream_source is not None and not p.closed}

    def sync(self) -> None:
        """Start an uplink for each newly led upstream partition, stop the others."""
        if self.cfg is None:
            return
        wanted = self._wanted()
        for key in [k for k, (link, _) in self._links.items()
                    if k not in wanted or wanted[k] is not link.p]:
            self._links.pop(key)[1].cancel()
        for key, p in wanted.items():
            if key not in self._links:
                link = PartitionUplink(p, self.cfg, self._ssl)
                task = asyncio.create_task(link.run(), name=f"uplink-{p.name}")
                self._links[key] = (link, task)

    def rows(self) -> list[dict[str, Any]]:
        """Status of every upstream partition this SPU leads."""
        out = []
        for key, p in sorted(self._wanted().items()):
            entry = self._links.get(key)
            status = entry[0].status if entry else UplinkStatus(
                p.topic, p.index, LinkState.UNCONFIGURED, since=time.time(),
                last_error="no [upstream] section in this SPU's config")
            out.append(status.row(p))
        return out

    async def close(self) -> None:
        for _, task in self._links.values():
            task.cancel()
        for _, task in self._links.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._links.clear()

"""Edge side of the upstream mirror: one uplink per led partition of an upstream topic.

Each uplink asks the cloud SC for its home partition (MIRROR_RESOLVE), asks the
cloud leader where that partition ends (MIRROR_OFFSETS), and from there sends
the stored batches below this partition's high watermark as they are
(MIRROR_APPEND), zstd-compressed on the wire where the cloud speaks it. The
resume point is always the cloud's answer, at every connect and after every
refused batch: the cloud appends only where a batch continues its log, so a
reconnect, a replay or a new edge leader can never store a record twice.

All uplinks of the SPU share one :class:`SharedLink`: the site's bandwidth
limit, granted by topic priority with a floor for the low ones. Without a
cloud the data waits on disk; the uplink retries with jittered backoff up to
``max_backoff_s`` and never gives up, and the wait is cut short when the link
returns: another uplink got through, or a TCP probe of the address that failed
answers again after it did not. A state change is logged once, not once per
retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import Any, NamedTuple

from edge.net.backoff import Backoff
from edge.net.bandwidth import SharedLink
from edge.net.connection import ClientConnection, split_addr
from edge.protocol import messages, sc_api, spu_api, wirezstd
from edge.protocol.batch import batch_prefix, decode_header
from edge.protocol.errors import ConnectionLost, HeadwaterError, NotContiguous, RequestTimeout
from edge.protocol.messages import ApiKey
from edge.protocol.sc_api import SHARE_PPM
from edge.protocol.schema import decode_response
from edge.spu.config import UpstreamConfig
from edge.spu.partition import Partition
from edge.spu.replicas import ReplicaSet
from edge.storage.mirror import Resume, resume_from
from edge.tasks import cancel
from edge.tls import client_context

log = logging.getLogger(__name__)

# How often the set of uplinks is compared with the partitions this SPU leads
# (assignment changes also trigger it at once).
SYNC_S = 1.0
# A MIRROR_APPEND waits for every in-sync cloud replica; generous for LTE.
APPEND_TIMEOUT_S = 30.0
IDLE_CHECK_S = 1.0
PROBE_TIMEOUT_S = 2.0
# Charged to the bandwidth limit per request on top of its blob: the frame
# prefix and metadata (names, token), so small requests do not slip past it.
REQUEST_OVERHEAD = 160
# Under a bandwidth limit a request carries at most this much of a second of
# the link, so a high priority never waits long behind a low one's request.
REQUEST_SHARE_S = 0.25
MIN_LIMITED_REQUEST = 16 * 1024
# The least bytes/s an SPU's part of a site's limit is: a partition it just began
# to lead is not stuck until the SC's next share arrives.
MIN_SHARE_RATE = 1000.0
# How often the edge report sent with mirror requests is worked out afresh.
REPORT_S = 1.0


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
    codec: str = wirezstd.Codec.NONE
    raw_bytes: int = 0
    wire_bytes: int = 0
    gaps: int = 0  # gap markers this uplink wrote in the cloud
    gap_offsets: int = 0

    def row(self, p: Partition) -> dict[str, Any]:
        edge_end = p.high_watermark
        acked = self.cloud_acked
        lag_bytes, lag_s = _lag(p, acked)
        return {"topic": self.topic, "partition": self.partition, "state": self.state.value,
                "edge_end": edge_end, "edge_leo": p.log.log_end_offset,
                "cloud_partition": self.cloud_partition, "cloud_end": self.cloud_end,
                "cloud_acked": acked, "lag": None if acked is None else max(edge_end - acked, 0),
                "lag_bytes": lag_bytes, "lag_s": lag_s,
                "last_error": self.last_error, "since_s": round(time.time() - self.since, 1),
                "priority": p.upstream_priority, "codec": self.codec,
                "raw_bytes": self.raw_bytes, "wire_bytes": self.wire_bytes,
                "dropped_records": p.log.dropped.records, "dropped_bytes": p.log.dropped.bytes,
                "gaps_marked": self.gaps, "gap_offsets": self.gap_offsets}


def _lag(p: Partition, acked: int | None) -> tuple[int | None, float | None]:
    """What the cloud still lacks of ``p`` below its high watermark: bytes, and the
    age in seconds of the oldest batch not yet acknowledged (0 when nothing is
    missing); None when the cloud's position is not known yet."""
    if acked is None:
        return None, None
    if acked >= p.high_watermark:
        return 0, 0.0
    try:
        size = p.log.bytes_from(acked) - p.log.bytes_from(p.high_watermark)
        first = p.log.timestamp_at(acked)
    except HeadwaterError:  # a partition failing or closing: the status says so elsewhere
        return None, None
    age = None if first is None else max(0.0, round(time.time() - first / 1000, 1))
    return size, age


class LinkWatch:
    """Tells every backing-off uplink at once that one of them got through."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def up(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    def waiter(self) -> asyncio.Event:
        return self._event


@dataclass
class Shared:
    """What the uplinks of one SPU share: config, TLS, the link and its watch."""

    cfg: UpstreamConfig
    ssl: ssl.SSLContext | None
    link: SharedLink
    watch: LinkWatch

    def request_bytes(self) -> int:
        rate = self.cfg.max_bytes_per_s
        if rate is None:
            return self.cfg.max_request_bytes
        return min(self.cfg.max_request_bytes,
                   max(MIN_LIMITED_REQUEST, int(rate * REQUEST_SHARE_S)))


class PartitionUplink:
    """Mirrors one led edge partition into its cloud home, for as long as it runs."""

    def __init__(self, p: Partition, shared: Shared) -> None:
        self.p = p
        self.shared = shared
        self.cfg = shared.cfg
        self._ssl = shared.ssl
        self.status = UplinkStatus(p.topic, p.index, since=time.time())
        self._report_cache: dict[str, int] | None = None
        self._report_at = 0.0

    async def run(self) -> None:
        backoff = Backoff(0.2, self.cfg.max_backoff_s)
        unreachable: str | None = None
        while True:
            was_unreachable, unreachable = unreachable, None
            try:
                await self._session(backoff)
            except StalledError as exc:
                self._set_state(LinkState.STALLED, str(exc))
                backoff.delay = self.cfg.max_backoff_s
                await backoff.sleep()
                continue
            except (HeadwaterError, OSError) as exc:
                self._set_state(LinkState.OFFLINE, str(exc) or type(exc).__name__)
                addr = exc.data.get("addr") if isinstance(exc, ConnectionLost) else None
                unreachable = addr if isinstance(addr, str) else None
                if was_unreachable is not None and unreachable is None:
                    # The network is back but the cloud is not ready (a leader still
                    # starting): back off afresh from short, not from an outage's minute.
                    backoff.reset()
            await self._back_off(backoff, unreachable)

    async def _back_off(self, backoff: Backoff, unreachable: str | None) -> None:
        woke = await wait_for_link(backoff.next_wait(), self.shared.watch.waiter(),
                                   unreachable, self.cfg.probe_interval_s)
        if woke == Woke.PROBE:
            log.info("upstream %s: %s answers again, reconnecting", self.p.name, unreachable)

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
            offset = await self._resume(conn, cloud_partition, self._seen(meta).end)
            self._set_state(LinkState.CONNECTED)
            self.shared.watch.up()
            backoff.reset()
            version = messages.negotiate(ApiKey.MIRROR_APPEND, conn.versions)
            compress = version >= 1 and self.cfg.compression == wirezstd.Codec.ZSTD
            self.status.codec = wirezstd.Codec.ZSTD if compress else wirezstd.Codec.NONE
            await self._pump(conn, cloud_partition, offset, version=version)
        finally:
            await conn.close()

    async def _resolve(self) -> tuple[int, str]:
        """The cloud home partition of this edge partition and its leader's address."""
        source = self.p.upstream_source or ""
        async with ClientConnection(self.cfg.sc, ssl_context=self._ssl) as sc:
            meta, _ = await sc.request(ApiKey.MIRROR_RESOLVE, site=self.cfg.site,
                                       token=self.cfg.token, topic=self.p.topic,
                                       partition=self.p.index, source=source)
        home = decode_response(sc_api.MIRROR_RESOLVED, meta)
        self.status.cloud_partition = home.partition
        return home.partition, home.leader

    def _fields(self, cloud_partition: int) -> dict[str, Any]:
        return {"topic": self.p.topic, "partition": cloud_partition, "site": self.cfg.site,
                "token": self.cfg.token, "edge": self._report()}

    def _report(self) -> dict[str, int]:
        """What the cloud shows of this edge partition (site list): its end, who
        holds the uplink, what it dropped, how far the cloud is behind. Worked out
        at most once a second: the lag costs a look into the segment files."""
        now = time.monotonic()
        if self._report_cache is not None and now - self._report_at < REPORT_S:
            return {**self._report_cache, "edge_end": self.p.high_watermark}
        lag_bytes, _ = _lag(self.p, self.status.cloud_acked)
        acked = self.status.cloud_acked
        oldest = (self.p.log.timestamp_at(acked) if acked is not None
                  and acked < self.p.high_watermark else None)
        self._report_cache = {"edge_end": self.p.high_watermark, "spu": self.p.spu_id,
                              "dropped": self.p.log.dropped.records,
                              "lag_bytes": lag_bytes or 0,
                              "oldest_unsent_ms": -1 if oldest is None else oldest}
        self._report_at = now
        return self._report_cache

    def _seen(self, meta: dict[Any, Any]) -> spu_api.MirrorPosition:
        """Record the cloud's position; a new incarnation means the cloud partition
        was re-created, which is worth one loud line (the resume point follows it)."""
        at = decode_response(spu_api.MIRROR_POSITION, meta)
        s = self.status
        if s.incarnation is not None and at.incarnation != s.incarnation:
            log.warning("upstream %s: the cloud partition was re-created (incarnation %s -> "
                        "%s); resuming from its end %d", self.p.name, s.incarnation,
                        at.incarnation, at.end)
        s.incarnation = at.incarnation
        s.cloud_end, s.cloud_acked = at.end, at.hw
        self.p.cloud_acked = at.hw
        return at

    async def _resume(self, conn: ClientConnection, cloud_partition: int, cloud_end: int
                      ) -> int:
        """Where to send from: the cloud's end, or, when the edge deleted what the
        cloud lacks (its disk budget, retention), past a gap marked in the cloud."""
        start = self.p.log.log_start_offset
        decision = resume_from(cloud_end, start, self.p.log.log_end_offset)
        if decision.kind == Resume.GAP and int(ApiKey.MIRROR_GAP) in conn.versions:
            meta, _ = await conn.request(ApiKey.MIRROR_GAP, timeout=APPEND_TIMEOUT_S,
                                         start=cloud_end, end=start,
                                         **self._fields(cloud_partition))
            self.status.gaps += 1
            self.status.gap_offsets += start - cloud_end
            dropped = self.p.log.dropped
            log.warning("upstream %s: offsets %d..%d were deleted before the cloud had them "
                        "(this partition has dropped %d records, %d bytes, under its disk "
                        "budget); marked as a gap in the cloud", self.p.name, cloud_end,
                        start - 1, dropped.records, dropped.bytes)
            return self._seen(meta).end
        if decision.kind != Resume.SEND:
            raise StalledError(decision.reason)
        return decision.offset

    async def _pump(self, conn: ClientConnection, cloud_partition: int, offset: int, *,
                    version: int) -> None:
        """Send stored batches from ``offset`` while this SPU leads the partition.

        Up to ``max_in_flight`` MIRROR_APPENDs are in flight, each continuing the one
        before, so reading and compressing here, validating there and the cloud's
        group commit overlap. The cloud appends a request only where it continues
        its log: when one is refused, the ones behind it are refused too (they do
        not continue it either), and the uplink resumes from the cloud's end.
        """
        pending: deque[_Sent] = deque()
        send_at = offset
        # Under a bandwidth limit the limit is the bottleneck, and requests queued
        # for it would hold grants the lower priorities are owed: one at a time.
        depth = self.cfg.max_in_flight if self.cfg.max_bytes_per_s is None else 1
        while not self.p.closed:
            hw = self.p.high_watermark
            if len(pending) < depth and send_at < hw:
                pending.append(await self._send(conn, cloud_partition, send_at, hw,
                                                version=version))
                send_at = pending[-1].next_offset
                continue
            if not pending:
                await self.p.wait_for_data(send_at, IDLE_CHECK_S)
                continue
            head = pending.popleft()
            try:
                async with asyncio.timeout(APPEND_TIMEOUT_S):
                    meta, _ = await asyncio.shield(head.answer)
                messages.check_response(meta)
            except TimeoutError:
                raise RequestTimeout(f"MIRROR_APPEND to {conn.addr} timed out after "
                                     f"{APPEND_TIMEOUT_S}s", addr=conn.addr) from None
            except NotContiguous as exc:
                # Someone (a former edge leader, an earlier attempt) got there first,
                # or the cloud lost an unreplicated tail: continue from its end.
                pending.clear()
                send_at = await self._resume(conn, cloud_partition,
                                             int(exc.data.get("log_end_offset", head.offset)))
                continue
            self._seen(meta)
            self.status.raw_bytes += head.raw_bytes
            self.status.wire_bytes += head.wire_bytes

    async def _send(self, conn: ClientConnection, cloud_partition: int, offset: int, hw: int,
                    *, version: int) -> _Sent:
        """Write one MIRROR_APPEND of the stored batches from ``offset`` (below ``hw``)."""
        blob = self.p.log.read_bytes(offset, self.shared.request_bytes(), max_offset=hw)
        wire, extra = await self._encoded(blob)
        await self.shared.link.acquire(len(wire) + REQUEST_OVERHEAD, self.p.upstream_priority)
        answer = conn.send_request(ApiKey.MIRROR_APPEND, wire, v=version,
                                   **self._fields(cloud_partition), **extra)
        await conn.drain()
        return _Sent(answer, offset, _next_offset(blob), len(blob), len(wire))

    async def _encoded(self, blob: bytes) -> tuple[bytes, dict[str, Any]]:
        """The blob as it goes on the wire and the fields that say how; compressed
        off the event loop (zstd releases the GIL), sent as is if that is not smaller."""
        if self.status.codec != wirezstd.Codec.ZSTD:
            return blob, {}
        packed = await asyncio.to_thread(wirezstd.compress, blob)
        if len(packed) >= len(blob):
            return blob, {}
        return packed, {"codec": str(wirezstd.Codec.ZSTD), "raw_bytes": len(blob)}


class _Sent(NamedTuple):
    """A MIRROR_APPEND in flight."""

    answer: asyncio.Future[tuple[dict[Any, Any], bytes]]
    offset: int
    next_offset: int
    raw_bytes: int
    wire_bytes: int


def _next_offset(blob: bytes) -> int:
    """The offset after the last of the whole stored batches in ``blob``."""
    pos = 0
    while True:
        _, size = batch_prefix(blob, pos)
        if pos + size >= len(blob):
            return decode_header(blob, pos).next_offset
        pos += size


class Woke(Enum):
    TIMER = "timer"
    WATCH = "watch"
    PROBE = "probe"


async def wait_for_link(wait: float, woken: asyncio.Event, unreachable: str | None,
                        probe_every: float) -> Woke:
    """Wait ``wait`` seconds, or less: until ``woken`` is set (another uplink got
    through), or ``unreachable`` answers a TCP probe after one did not. A probe
    that answers at once proves nothing (the failure was not the network), so
    it does not cut the wait short."""
    deadline = time.monotonic() + wait
    seen_down = False
    while deadline - time.monotonic() > 0:
        # Probe first: the peer may come back a moment after the failed attempt,
        # before the first interval is over.
        if unreachable is not None:
            if not await probe(unreachable):
                seen_down = True
            elif seen_down:
                return Woke.PROBE
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(deadline - time.monotonic(), probe_every)):
                await woken.wait()
                return Woke.WATCH
    return Woke.TIMER


async def probe(addr: str) -> bool:
    """Whether a TCP connection to ``addr`` opens (closed at once, nothing sent)."""
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            _, writer = await asyncio.open_connection(*split_addr(addr))
    except (OSError, TimeoutError, ValueError):
        return False
    writer.transport.abort()
    return True


class Upstream:
    """The uplinks of this SPU: one per led partition of an upstream topic."""

    def __init__(self, cfg: UpstreamConfig | None, replicas: ReplicaSet) -> None:
        self.cfg = cfg
        self.replicas = replicas
        self.shared = None if cfg is None else Shared(
            cfg, client_context(cfg.tls) if cfg.tls is not None else None,
            SharedLink(cfg.max_bytes_per_s), LinkWatch())
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
        if self.shared is None:
            return
        self._apply_share()
        wanted = self._wanted()
        for key in [k for k, (link, _) in self._links.items()
                    if k not in wanted or wanted[k] is not link.p]:
            self._links.pop(key)[1].cancel()
        for key, p in wanted.items():
            if key not in self._links:
                link = PartitionUplink(p, self.shared)
                task = asyncio.create_task(link.run(), name=f"uplink-{p.name}")
                self._links[key] = (link, task)

    def _apply_share(self) -> None:
        """This SPU's part of the site's bandwidth limit: the SC splits it among the
        SPUs by the upstream partitions each leads (no part: the whole limit; a part
        of 0 leads nothing, and keeps a trickle so a new leader is not stuck)."""
        assert self.shared is not None
        rate = self.cfg.max_bytes_per_s if self.cfg is not None else None
        share = self.replicas.uplink_share_ppm
        if rate is None or share is None:
            self.shared.link.set_rate(rate)
            return
        self.shared.link.set_rate(max(rate * share / SHARE_PPM, MIN_SHARE_RATE))

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
        await cancel(*(task for _, task in self._links.values()))
        self._links.clear()

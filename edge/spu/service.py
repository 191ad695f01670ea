"""The SPU process: listeners, replicas, the SC link and housekeeping tasks."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from edge.logstate import StateLog
from edge.net.auth import PrivateGate, dialer
from edge.net.connection import split_addr
from edge.net.limits import BufferPool
from edge.net.server import Connection, FrameServer, Response
from edge.protocol import messages
from edge.protocol.errors import DiskFull, InvalidRequest, StorageError
from edge.protocol.messages import ApiKey
from edge.spu.config import SpuConfig, advertised, is_wildcard
from edge.spu.discovery import SpuDiscovery
from edge.spu.guard import LeadershipGuard
from edge.spu.handlers import PublicApi
from edge.spu.replicas import ReplicaSet
from edge.spu.replication import LeaderSide, ReplicaManager
from edge.spu.sc_link import ScLink
from edge.spu.upstream import Upstream
from edge.storage.offsets import ConsumerOffsets
from edge.tasks import cancel
from edge.tls import client_context, server_context

if TYPE_CHECKING:
    from edge.metrics import Metrics

log = logging.getLogger(__name__)

ISR_CHECK_S = 0.25


class Spu:
    """One Streaming Processing Unit."""

    def __init__(self, cfg: SpuConfig) -> None:
        self.cfg = cfg
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        self.guard = LeadershipGuard(pause_s=cfg.pause_s)
        self.replicas = ReplicaSet(cfg.data_dir, spu_id=cfg.id, durability=cfg.durability,
                                   ack_guard=self.guard.ok, disk_budget=cfg.disk_budget)
        self.leader_side = LeaderSide(
            lambda topic, index: self.replicas.partitions.get((topic, index)), cfg.id)
        self.offsets: ConsumerOffsets | None = None
        self.api: PublicApi | None = None
        server_ssl = server_context(cfg.tls) if cfg.tls and cfg.tls.cert else None
        self._client_ssl = client_context(cfg.tls) if cfg.tls else None
        pool = BufferPool(cfg.limits.max_buffered_bytes)
        self.public = FrameServer(f"SPU {cfg.id} public", self._dispatch_public,
                                  ssl_context=server_ssl, limits=cfg.limits, pool=pool,
                                  long_polls=(ApiKey.FETCH, ApiKey.STREAM_FETCH))
        self.gate = PrivateGate(cfg.private_auth, role="spu")
        self.private = FrameServer(f"SPU {cfg.id} private", self.gate.wrap(self._dispatch_private),
                                   ssl_context=server_ssl, limits=cfg.limits, pool=pool,
                                   on_connect=self.gate.greet,
                                   max_connections=cfg.limits.max_peer_connections,
                                   long_polls=(ApiKey.REPLICA_FETCH,))
        # Every connection this SPU opens to a private port (SC, leaders) proves it is cfg.id.
        self._dialer = dialer(cfg.private_auth, cfg.id)
        self.public_addr = ""
        self.private_addr = ""
        self.link: ScLink | None = None
        self.replication: ReplicaManager | None = None
        # The uplink's TLS is its own ([upstream] tls_ca): the cloud's CA is not the site's.
        self.upstream = Upstream(cfg.upstream, self.replicas)
        self.discovery = SpuDiscovery(cfg, self.replicas)
        self.metrics: Metrics | None = None
        self._tasks: list[asyncio.Task[Any]] = []

    async def start(self) -> None:
        self.offsets = ConsumerOffsets.open(self.cfg.data_dir / "consumers.sqlite")
        self.api = PublicApi(self.replicas, self.offsets, upstream_rows=self.upstream.rows,
                             server_status=self.server_status)
        self.leader_side.offsets = self.offsets
        self.link = ScLink(self.cfg, self.replicas, public="", private="",
                           ssl_context=self._client_ssl, authenticate=self._dialer,
                           stats=lambda: dict(self.api.stats) if self.api else {},
                           on_assignment=self._sync_replication, guard=self.guard,
                           finder=await self.discovery.start_finding(),
                           advertise_from_link=(
                               is_wildcard(self.cfg.public_addr, self.cfg.advertise_public),
                               is_wildcard(self.cfg.private_addr, self.cfg.advertise_private)))
        self.replication = ReplicaManager(ssl_context=self._client_ssl, authenticate=self._dialer,
                                          propose_isr=self.link.propose_isr,
                                          lag_s=self.cfg.replica_lag_s)
        self.replication.offsets = self.offsets
        saved = self.replicas.load_saved()
        if saved is not None:
            # Serve what we hosted before, even if the SC never answers again.
            await self.replicas.apply(saved, cluster_id=self.replicas.cluster_id, version=-1,
                                      save=False)
            await self._sync_replication()
        public = await self.public.start(*split_addr(self.cfg.public_addr))
        private = await self.private.start(*split_addr(self.cfg.private_addr))
        self.public_addr = advertised(public, self.cfg.advertise_public)
        self.private_addr = advertised(private, self.cfg.advertise_private)
        if self.cfg.metrics_addr is not None:
            await self._start_metrics(self.cfg.metrics_addr)
        self.discovery.start_announcing(public, private)
        self.link.public, self.link.private = self.public_addr, self.private_addr
        self._tasks = [
            asyncio.create_task(self.guard.run(), name="leadership-guard"),
            asyncio.create_task(self.link.run(), name="sc-link"),
            asyncio.create_task(self._isr_checks(), name="isr"),
            asyncio.create_task(self._checkpoints(), name="checkpoints"),
            asyncio.create_task(self._retention(), name="retention"),
            asyncio.create_task(self._idle_close(), name="idle-close"),
            asyncio.create_task(self.upstream.run(), name="upstream"),
        ]
        log.info("SPU %d serving clients on %s, peers on %s", self.cfg.id, self.public_addr,
                 self.private_addr)
        if self.cfg.insecure_private:
            log.warning("SPU %d private port %s accepts any caller (insecure_private): for "
                        "development only", self.cfg.id, self.private_addr)

    async def _start_metrics(self, addr: str) -> None:
        from edge.metrics import start_metrics
        from edge.spu.metrics import spu_source

        servers = {s.name: s for s in (self.public, self.private)}
        self.metrics = await start_metrics(
            "spu", str(self.cfg.id), addr, data_dir=self.cfg.data_dir,
            listeners=servers.values(),
            source=spu_source(self.replicas, lambda: {k: v.status() for k, v in servers.items()},
                              lambda: dict(self.api.stats) if self.api else {},
                              self.upstream.rows))
        self.replicas.fsync_observer = self.metrics.fsync.observe
        for p in self.replicas.partitions.values():
            p.fsync_observer = self.metrics.fsync.observe

    async def stop(self) -> None:
        """Stop listening, flush and close every partition (SIGTERM path)."""
        await self.discovery.stop()
        if self.metrics is not None:
            await self.metrics.close()
        for task in self._tasks:
            await cancel(task)
        await self.upstream.close()
        if self.replication is not None:
            await self.replication.close()
        await self.public.close()
        await self.private.close()
        await self.replicas.close()
        if self.offsets is not None:
            self.offsets.close()
        log.info("SPU %d stopped cleanly", self.cfg.id)

    def server_status(self) -> dict[str, Any]:
        """The listeners' state and counters, the bytes of partial frames they hold
        together, and the process's asyncio tasks."""
        return {"public": self.public.status(), "private": self.private.status(),
                "buffered": self.public.pool.used, "tasks": len(asyncio.all_tasks())}

    def _dispatch_public(self, conn: Connection, meta: dict[Any, Any], blob: bytes
                         ) -> Any:
        if self.api is None:
            raise InvalidRequest("SPU is starting")
        self.replicas.tokens.check(conn)
        if self.replicas.authorizer.enabled:
            self.replicas.authorizer.check(conn.principal, messages.api_of(meta), meta)
        return self.api.dispatch(conn, meta, blob)

    def _dispatch_private(self, conn: Connection, meta: dict[Any, Any], blob: bytes
                          ) -> Response | Awaitable[Response]:
        api = messages.api_of(meta)
        if api == ApiKey.API_VERSIONS:
            served = (ApiKey.API_VERSIONS, ApiKey.PARTITION_STATUS, ApiKey.REPLICA_FETCH,
                      ApiKey.OFFSET_FOR_EPOCH, ApiKey.AUTHENTICATE)
            return messages.ok(meta["id"], versions={int(k): list(messages.SUPPORTED[k])
                                                     for k in served},
                               role="spu-private", spu=self.cfg.id), b""
        if api == ApiKey.PARTITION_STATUS:
            rows = [p.status() for p in self.replicas.partitions.values()]
            return messages.ok(meta["id"], partitions=rows,
                               stats={"auth_failures": self.gate.failures}), b""
        if api == ApiKey.REPLICA_FETCH:
            return self.leader_side.replica_fetch(conn, meta, blob)
        if api == ApiKey.OFFSET_FOR_EPOCH:
            return self.leader_side.offset_for_epoch(conn, meta, blob)
        raise InvalidRequest(f"{api.name} is not served on the SPU private port")

    async def _sync_replication(self) -> None:
        self.upstream.sync()
        await self.discovery.assignment_applied()
        if self.replication is not None:
            await self.replication.sync(self.replicas.partitions, self.replicas.peers)

    async def _isr_checks(self) -> None:
        while True:
            await asyncio.sleep(ISR_CHECK_S)
            if self.replication is not None:
                await self.replication.check_isr(self.replicas.partitions)

    async def _checkpoints(self) -> None:
        # Fails every round while the disk is full: logged when it begins and ends.
        failing = StateLog(log)
        while True:
            await asyncio.sleep(self.cfg.checkpoint_interval_s)
            failed = False
            for p in list(self.replicas.partitions.values()):
                if p.failed is None and not p.closed:
                    try:
                        p.log.write_checkpoints()
                    except DiskFull:
                        continue  # the old checkpoint stands; retried next round
                    except (OSError, StorageError) as exc:
                        failed = True
                        failing.begin("checkpoint of %s failed: %s (start-up scans more "
                                      "until checkpoints succeed again)", p.name, exc)
            if not failed:
                failing.end("checkpoints succeed again")

    async def _idle_close(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.idle_close_s)
            try:
                closed = self.replicas.release_idle()
            except OSError as exc:  # closing cannot lose data; the next round tries again
                log.warning("closing idle partition files failed: %s", exc)
                continue
            if closed:
                log.debug("closed %d files of idle partitions", closed)

    async def _retention(self) -> None:
        failing = StateLog(log)
        while True:
            await asyncio.sleep(self.cfg.retention_check_interval_s)
            now = int(time.time() * 1000)
            failed = False
            for p in list(self.replicas.partitions.values()):
                if p.failed is None and not p.closed:
                    try:
                        removed = p.log.apply_retention(now, max_offset=p.high_watermark)
                    except StorageError as exc:
                        failed = True
                        failing.begin("retention of %s failed: %s", p.name, exc)
                        continue
                    if removed:
                        log.info("retention removed %d bytes from %s", removed, p.name)
            if not failed:
                failing.end("retention succeeds again")

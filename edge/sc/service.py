"""The SC process: public (admin, metadata) and private (SPU) listeners."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from edge.acl import Authorizer, Operation, Rule, check_rule
from edge.logstate import StateLog
from edge.net.auth import PrivateGate, require_spu
from edge.net.connection import split_addr
from edge.net.limits import BufferPool
from edge.net.server import Connection, FrameServer, Response
from edge.protocol import messages, sc_api
from edge.protocol.errors import HeadwaterError, InvalidConfig, InvalidRequest
from edge.protocol.messages import ApiKey
from edge.protocol.schema import Message, decode_request, rows_in, rows_out
from edge.sc.config import ScConfig
from edge.sc.controller import Controller
from edge.sc.group_handlers import GroupHandlers
from edge.sc.group_store import GroupStore
from edge.sc.registration import check_address
from edge.sc.sites import SiteRegistry
from edge.sc.store import DataDirLock, MetadataStore
from edge.sc.token_handlers import TokenHandlers
from edge.tasks import cancel
from edge.tls import not_after, server_context

if TYPE_CHECKING:
    from edge.discovery.announcer import Announcer
    from edge.metrics import Metrics

log = logging.getLogger(__name__)

T = TypeVar("T")
LIVENESS_CHECK_S = 0.25
Handler = Callable[[Connection, dict[Any, Any], bytes], Response | Awaitable[Response]]


class Sc:
    """One Streaming Controller."""

    def __init__(self, cfg: ScConfig, *, store: MetadataStore | None = None,
                 group_store: GroupStore | None = None,
                 control_plane: Callable[[], dict[str, Any]] | None = None) -> None:
        """``store``/``group_store``: the metadata elsewhere than in SQLite in the data
        directory (an etcd cluster, edge/sc/ha.py), described by ``control_plane``
        in ``cluster status``."""
        self.cfg = cfg
        self.control_plane = control_plane
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        # Before the store opens: a second SC on this directory fails here, at once.
        self.lock = DataDirLock(cfg.data_dir)
        self.store = store or MetadataStore(cfg.data_dir / "metadata.sqlite")
        self.controller = Controller(self.store, heartbeat_timeout_s=cfg.heartbeat_timeout_s)
        self.sites = SiteRegistry(self.controller)
        self.metrics: Metrics | None = None
        self.authorizer = Authorizer(enabled=cfg.authorization, superusers=cfg.superusers,
                                     rules=self._rules())
        self.group_store = group_store or GroupStore(cfg.data_dir / "metadata.sqlite")
        self.groups = GroupHandlers(self.controller, self.group_store)
        self.tokens = TokenHandlers(self.controller)
        ctx = server_context(cfg.tls) if cfg.tls and cfg.tls.cert else None
        pool = BufferPool(cfg.limits.max_buffered_bytes)
        self.public = FrameServer("SC public", self._dispatch_public, ssl_context=ctx,
                                  limits=cfg.limits, pool=pool,
                                  long_polls=(ApiKey.WATCH_METADATA, ApiKey.GROUP_HEARTBEAT))
        self.gate = PrivateGate(cfg.private_auth, role="sc")
        self.private = FrameServer("SC private", self.gate.wrap(self._dispatch_private),
                                   ssl_context=ctx, limits=cfg.limits, pool=pool,
                                   on_connect=self.gate.greet,
                                   max_connections=cfg.limits.max_peer_connections,
                                   long_polls=(ApiKey.REGISTER_SPU,))
        self.public_addr = ""
        self.private_addr = ""
        self._tasks: list[asyncio.Task[Any]] = []
        self.announcer: Announcer | None = None
        self._public: dict[ApiKey, Handler] = {
            ApiKey.API_VERSIONS: self.api_versions,
            ApiKey.CREATE_TOPIC: self.create_topic,
            ApiKey.DELETE_TOPIC: self.delete_topic,
            ApiKey.LIST_TOPICS: self.list_topics,
            ApiKey.DESCRIBE_TOPIC: self.describe_topic,
            ApiKey.LIST_SPUS: self.list_spus,
            ApiKey.LIST_PARTITIONS: self.list_partitions,
            ApiKey.METADATA: self.metadata,
            ApiKey.WATCH_METADATA: self.watch_metadata,
            ApiKey.CLUSTER_STATUS: self.cluster_status,
            ApiKey.INIT_PRODUCER_ID: self.init_producer_id,
            ApiKey.PARTITION_REBALANCE: self.partition_rebalance,
            ApiKey.SITE_REGISTER: self.site_register,
            ApiKey.SITE_UNREGISTER: self.site_unregister,
            ApiKey.LIST_SITES: self.list_sites,
            ApiKey.DESCRIBE_SITE: self.describe_site,
            ApiKey.MIRROR_RESOLVE: self.mirror_resolve,
            ApiKey.ALTER_TOPIC: self.alter_topic,
            ApiKey.ACL_ADD: self.acl_add,
            ApiKey.ACL_REMOVE: self.acl_remove,
            ApiKey.ACL_LIST: self.acl_list,
            **self.groups.table(),
            **self.tokens.table(),
        }
        self._private: dict[ApiKey, Handler] = {
            ApiKey.API_VERSIONS: self.api_versions,
            ApiKey.REGISTER_SPU: self.register_spu,
            ApiKey.HEARTBEAT: self.heartbeat,
            ApiKey.UPDATE_ISR: self.update_isr,
        }

    async def start(self) -> None:
        pub = await self.public.start(*split_addr(self.cfg.public_addr))
        priv = await self.private.start(*split_addr(self.cfg.private_addr))
        self.public_addr = f"{_host(pub[0])}:{pub[1]}"
        self.private_addr = f"{_host(priv[0])}:{priv[1]}"
        self._tasks.append(asyncio.create_task(self._liveness(), name="liveness"))
        if self.cfg.metrics_addr is not None:
            from edge.metrics import start_metrics
            from edge.sc.metrics import sc_source

            servers = {s.name: s for s in (self.public, self.private)}
            self.metrics = await start_metrics(
                "sc", self.controller.cluster_id, self.cfg.metrics_addr,
                data_dir=self.cfg.data_dir, listeners=servers.values(),
                source=sc_source(self.controller, self.sites,
                                 lambda: {k: v.status() for k, v in servers.items()},
                                 lambda: self.authorizer.denied,
                                 lambda: self.groups.coordinator.describe(time.monotonic())))
        self._announce(pub, priv)
        if self.cfg.insecure_private:
            log.warning("SC private port %s accepts any caller (insecure_private): for "
                        "development only", self.private_addr)
        if (self.cfg.authorization and not (self.cfg.tls and self.cfg.tls.verify_client)
                and not self.tokens.book.grants()):
            log.warning("authorization is on but the public port does not ask for client "
                        "certificates ([tls] verify_client = true or \"optional\") and no "
                        "token exists: every client is 'anonymous' and may do only what "
                        "ACLs grant 'anonymous' or '*'")
        if self.tokens.book.grants() and not (self.cfg.tls and self.cfg.tls.cert):
            log.warning("tokens are in use but the public port has no TLS: anyone on the "
                        "path can read a token and log in with it")
        log.info("SC serving clients on %s, SPUs on %s (cluster %s)", self.public_addr,
                 self.private_addr, self.controller.cluster_id)

    def _announce(self, pub: tuple[str, int], priv: tuple[str, int]) -> None:
        site = self.cfg.discovery.site
        if site is None:
            return
        from edge.discovery.announcer import Announcer
        from edge.discovery.mdns import shared, software_version
        from edge.discovery.txt import Announcement, Role

        announcement = Announcement(
            role=Role.SC, site=site, cluster=self.controller.cluster_id or None,
            public_port=pub[1], private_port=priv[1], tls=self.cfg.tls is not None,
            version=software_version())
        mdns = shared(self.cfg.discovery.interfaces, ipv6=self.cfg.discovery.ipv6)
        self.announcer = Announcer(mdns, announcement, bind_host=pub[0])
        self.announcer.start()

    async def stop(self) -> None:
        # Goodbye first: SPUs and clients stop dialing a stopping SC at once.
        if self.announcer is not None:
            await self.announcer.stop()
        for task in self._tasks:
            await cancel(task)
        if self.metrics is not None:
            await self.metrics.close()
        self.controller.stopping = True
        await self.public.close()
        await self.private.close()
        self.group_store.close()
        self.store.close()
        self.lock.close()
        log.info("SC stopped cleanly")

    async def _liveness(self) -> None:
        # With metadata in etcd a write can fail for a while (etcd without quorum):
        # the elections it would have recorded are tried again at the next round.
        failing = StateLog(log)
        while True:
            await asyncio.sleep(LIVENESS_CHECK_S)
            try:
                self.controller.check_liveness()
                self.groups.expire()
            except HeadwaterError as exc:
                if not exc.retriable:
                    raise
                failing.begin("liveness checks and elections fail: %s (retrying)", exc)
                continue
            if failing.active:
                failing.end("liveness checks and elections succeed again")

    def _dispatch_public(self, conn: Connection, meta: dict[Any, Any], blob: bytes) -> Any:
        self.tokens.book.check(conn)
        if self.authorizer.enabled:
            self.authorizer.check(conn.principal, messages.api_of(meta), meta)
        return _route(self._public, "SC public", conn, meta, blob)

    def _dispatch_private(self, conn: Connection, meta: dict[Any, Any], blob: bytes) -> Any:
        return _route(self._private, "SC private", conn, meta, blob)

    # handlers -------------------------------------------------------------

    def api_versions(self, conn: Connection, meta: dict[Any, Any], blob: bytes) -> Response:
        table = (list(self._public) if conn.server is self.public
                 else [*self._private, ApiKey.AUTHENTICATE])
        return messages.ok(meta["id"], versions={int(k): list(messages.SUPPORTED[k])
                                                 for k in table},
                           role="sc", cluster=self.controller.cluster_id), b""

    def create_topic(self, conn: Connection, meta: dict[Any, Any], blob: bytes) -> Response:
        req = _settings_request(sc_api.CREATE_TOPIC, meta)
        row = self.controller.create_topic(req.name, req.partitions, req.replication,
                                           req.config, prefer_leader=req.prefer_leader)
        return messages.ok(meta["id"], status=row.status), b""

    def alter_topic(self, conn: Connection, meta: dict[Any, Any], blob: bytes) -> Response:
        req = _settings_request(sc_api.ALTER_TOPIC, meta)
        row = self.controller.alter_topic(req.name, req.set, req.unset,
                                          validate_only=req.validate_only)
        return messages.ok(meta["id"], config=row.config), b""

    def delete_topic(self, conn: Connection, meta: dict[Any, Any], blob: bytes) -> Response:
        self.controller.delete_topic(decode_request(sc_api.NAMED, meta).name)
        return messages.ok(meta["id"]), b""

    def list_topics(self, conn: Connection, meta: dict[Any, Any], blob: bytes) -> Response:
        rows = [{"name": t.name, "partitions": t.partitions, "replication": t.replication,
                 "config": t.config, "status": t.status, "created_ms": t.created_ms}
                for t in self.store.topics()]
        return messages.ok(meta["id"], topics=rows), b""

    def describe_topic(self, conn: Connection, meta: dict[Any, Any], blob: bytes) -> Response:
        t = self.controller.topic(decode_request(sc_api.NAMED, meta).name)
        parts = [self.controller.partition_status(p) for p in self.store.partitions(t.name)]
        return messages.ok(meta["id"], name=t.name, partitions=t.partitions,
                           replication=t.replication, config=t.config, status=t.status,
                           created_ms=t.created_ms, partition_status=parts), b""

    def list_spus(self, conn: Connection, meta: dict[Any, Any], blob: bytes) -> Response:
        now = time.monotonic()
        rows = [{"id": s.id, "public": s.public, "private": s.private, "rack": s.rack,
                 "online": s.online, "health": s.health,
                 "heartbeat_age_s": round(now - s.last_heartbeat, 3) if s.last_heartbeat else None,
                 "partitions": len(s.partitions)}
                for s in sorted(self.controller.spus.values(), key=lambda s: s.id)]
        return messages.ok(meta["id"], spus=rows), b""

    def list_partitions(self, conn: Connection, meta: dict[Any, Any], blob: bytes) -> Response:
        topic = decode_request(sc_api.TOPIC_FILTER, meta).topic
        rows = [self.controller.partition_status(p) for p in self.store.partitions(topic)]
        return messages.ok(meta["id"], partitions=rows), b""

    def metadata(self, conn: Connection, meta: dict[Any, Any], blob: bytes) -> Response:
        return messages.ok(meta["id"], **self.controller.metadata()), b""

    def watch_metadata(self, conn: Connection, meta: dict[Any, Any], blob: bytes
                       ) -> Awaitable[Response]:
        return self._watch(conn, meta["id"])

    async def _watch(self, conn: Connection, cid: int) -> Response:
        changed = asyncio.Event()
        self.controller.watchers.add(changed.set)
        try:
            while not conn.closed:
                changed.clear()
                await conn.send(messages.ok(cid, **self.controller.metadata()))
                await changed.wait()
        finally:
            self.controller.watchers.discard(changed.set)
        return None

    def cluster_status(self, conn: Connection, meta: dict[Any, Any], blob: bytes) -> Response:
        spus = list(self.controller.spus.values())
        topics = self.store.topics()
        parts = self.store.partitions()
        online = {s.id for s in spus if s.online}
        offline_leaders = sum(1 for p in parts if p.leader not in online)
        return messages.ok(
            meta["id"], cluster=self.controller.cluster_id,
            uptime_s=round(time.time() - self.controller.started, 1),
            version=self.controller.version, public=self.public_addr,
            private=self.private_addr, spus_total=len(spus),
            spus_online=sum(1 for s in spus if s.online), topics=len(topics),
            partitions=len(parts), partitions_offline=offline_leaders,
            waiting_topics=[t.name for t in topics if t.status != "ready"],
            auth_failures=self.gate.failures,
            **({} if (end := self._cert_end()) is None else {"tls_not_after": int(end)}),
            **({} if self.control_plane is None else {"control_plane": self.control_plane()}),
        ), b""

    def _cert_end(self) -> float | None:
        cert = self.cfg.tls.cert if self.cfg.tls is not None else None
        return None if cert is None else not_after(cert)

    def init_producer_id(self, conn: Connection, meta: dict[Any, Any], blob: bytes
                         ) -> Response:
        return messages.ok(meta["id"], producer_id=self.store.allocate_producer_ids(1),
                           epoch=0), b""

    def register_spu(self, conn: Connection, meta: dict[Any, Any], blob: bytes
                     ) -> Awaitable[Response]:
        req = decode_request(sc_api.REGISTER_SPU, rows_in(meta, blob, "partitions",
                                                          InvalidRequest))
        spu_id = req.spu
        require_spu(conn, spu_id, "spu")
        check_address("public", req.public)
        check_address("private", req.private)
        self.controller.check_replaceable(spu_id)
        cid = meta["id"]
        cluster = self.controller.cluster_id

        def push(replicas: list[dict[str, Any]], version: int) -> None:
            rows, blob = rows_out("replicas", replicas)
            share = self.controller.uplink_share_ppm(spu_id)
            extra: dict[str, Any] = {} if share is None else {"uplink_share_ppm": share}
            if self.cfg.authorization:
                extra.update(authorization=True, acls=[r._asdict() for r in self._rules()],
                             superusers=list(self.cfg.superusers))
            extra["tokens"] = self.tokens.wire_grants()
            extra["generation"] = self.store.generation
            conn.send_soon(messages.ok(cid, **rows, version=version, cluster=cluster,
                                       peers=self.controller.peers(), **extra), blob)

        self.controller.register_spu(spu_id, req.public, req.private, req.rack, push,
                                     partitions=req.partitions)
        conn.on_close.append(lambda: self.controller.spu_disconnected(spu_id, push))
        return _hold_open(conn)

    def heartbeat(self, conn: Connection, meta: dict[Any, Any], blob: bytes) -> Response:
        req = decode_request(sc_api.HEARTBEAT, rows_in(meta, blob, "partitions",
                                                       InvalidRequest))
        require_spu(conn, req.spu, "spu")
        self.controller.heartbeat(req.spu, req.health, req.partitions, req.stats)
        return messages.ok(meta["id"], version=self.controller.version), b""

    def update_isr(self, conn: Connection, meta: dict[Any, Any], blob: bytes) -> Response:
        req = decode_request(sc_api.UPDATE_ISR, meta)
        require_spu(conn, req.spu, "spu")
        self.controller.update_isr(req.spu, req.topic, req.partition, req.epoch, req.isr)
        return messages.ok(meta["id"]), b""

    def partition_rebalance(self, conn: Connection, meta: dict[Any, Any], blob: bytes
                            ) -> Response:
        moved = self.controller.rebalance(decode_request(sc_api.TOPIC_FILTER, meta).topic)
        return messages.ok(meta["id"], moved=moved), b""

    # edge sites --------------------------------------------------------------

    def site_register(self, conn: Connection, meta: dict[Any, Any], blob: bytes) -> Response:
        row, token = self.sites.register(decode_request(sc_api.NAMED, meta).name)
        return messages.ok(meta["id"], name=row.name, token=token,
                           created_ms=row.created_ms), b""

    def site_unregister(self, conn: Connection, meta: dict[Any, Any], blob: bytes
                        ) -> Response:
        self.sites.unregister(decode_request(sc_api.NAMED, meta).name)
        return messages.ok(meta["id"]), b""

    # access control ----------------------------------------------------------

    def _rules(self) -> list[Rule]:
        return [Rule(p, Operation(o), r) for p, o, r in self.store.acls()]

    def _acl(self, meta: dict[Any, Any]) -> Rule:
        req = decode_request(sc_api.ACL_RULE, meta)
        try:
            return check_rule(req.principal, req.operation, req.resource)
        except ValueError as exc:
            field = next((f for f in ("principal", "operation", "resource") if f in str(exc)),
                         "resource")
            raise InvalidRequest(str(exc), field=field) from None

    def _acls_changed(self) -> None:
        self.authorizer.update(enabled=self.cfg.authorization, rules=self._rules())
        self.controller.changed()  # pushed to every SPU with its assignment

    def acl_add(self, conn: Connection, meta: dict[Any, Any], blob: bytes) -> Response:
        rule = self._acl(meta)
        if self.store.add_acl(rule.principal, rule.operation.value, rule.resource):
            log.info("ACL added: %s may %s %s", rule.principal, rule.operation.value,
                     rule.resource)
            self._acls_changed()
        return messages.ok(meta["id"]), b""

    def acl_remove(self, conn: Connection, meta: dict[Any, Any], blob: bytes) -> Response:
        rule = self._acl(meta)
        if not self.store.remove_acl(rule.principal, rule.operation.value, rule.resource):
            raise InvalidRequest(f"no ACL lets {rule.principal} {rule.operation.value} "
                                 f"{rule.resource} (see headwater acl list)", field="resource")
        log.info("ACL removed: %s may no longer %s %s", rule.principal, rule.operation.value,
                 rule.resource)
        self._acls_changed()
        return messages.ok(meta["id"]), b""

    def acl_list(self, conn: Connection, meta: dict[Any, Any], blob: bytes) -> Response:
        rows = [{"principal": p, "operation": o, "resource": r} for p, o, r in self.store.acls()]
        return messages.ok(meta["id"], acls=rows, authorization=self.cfg.authorization), b""

    def list_sites(self, conn: Connection, meta: dict[Any, Any], blob: bytes) -> Response:
        return messages.ok(meta["id"], sites=self.sites.list()), b""

    def describe_site(self, conn: Connection, meta: dict[Any, Any], blob: bytes) -> Response:
        site = self.sites.describe(decode_request(sc_api.NAMED, meta).name)
        return messages.ok(meta["id"], **site), b""

    def mirror_resolve(self, conn: Connection, meta: dict[Any, Any], blob: bytes) -> Response:
        req = decode_request(sc_api.MIRROR_RESOLVE, meta)
        mirror, leader = self.sites.resolve(req.site, req.token, req.topic, req.partition,
                                            req.source)
        return messages.ok(meta["id"], partition=mirror.cloud_partition, leader=leader,
                           incarnation=mirror.incarnation), b""


def _settings_request(message: Message[T], meta: dict[Any, Any]) -> T:
    """CREATE_TOPIC's or ALTER_TOPIC's fields; a wrong topic setting (partitions,
    replication, config, set, unset) is INVALID_CONFIG (the schema's bounds, the same
    class as the settings check's answers)."""
    try:
        return decode_request(message, meta)
    except InvalidRequest as exc:
        if exc.data.get("field") not in sc_api.TOPIC_SETTINGS:
            raise
        raise InvalidConfig(exc.message, **exc.data) from None


def _route(table: dict[ApiKey, Handler], where: str, conn: Connection, meta: dict[Any, Any],
           blob: bytes) -> Response | Awaitable[Response]:
    api = messages.api_of(meta)
    handler = table.get(api)
    if handler is None:
        raise InvalidRequest(f"{api.name} is not served on the {where} port")
    return handler(conn, meta, blob)


async def _hold_open(conn: Connection) -> Response:
    """Keep a registration stream open until the SPU disconnects (the connection
    cancels its tasks when it closes)."""
    await asyncio.Event().wait()
    return None


def _host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104

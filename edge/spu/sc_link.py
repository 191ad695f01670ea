"""The SPU's link to the SC: register, receive replica assignments, heartbeat.

The SPU dials the SC's private port (so it works from behind NAT), registers,
and keeps the registration open as a stream on which the SC pushes this SPU's
replica list. Heartbeats carry health and per-partition status. When the SC is
unreachable the SPU keeps serving what it has and redials with jittered
exponential backoff.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from edge import health
from edge.acl import rules_from_wire
from edge.net.backoff import Backoff
from edge.net.connection import Authenticator, ClientConnection, split_addr_list
from edge.protocol import sc_api
from edge.protocol.errors import (
    AuthenticationFailed,
    HeadwaterError,
    ProtocolError,
    StaleEpoch,
)
from edge.protocol.messages import ApiKey
from edge.protocol.schema import decode_response, rows_in, rows_out, to_wire
from edge.spu.config import SpuConfig
from edge.spu.guard import LeadershipGuard
from edge.spu.partition import Partition
from edge.spu.replicas import ReplicaSet
from edge.tls import not_after

if TYPE_CHECKING:
    from edge.discovery.finder import ScFinder

log = logging.getLogger(__name__)

BACKOFF_MIN_S = 0.1
# Redial at least every second: a restarted SC waits one heartbeat timeout (2 s)
# for registered SPUs before it elects new leaders for their partitions.
BACKOFF_MAX_S = 1.0
# How long one dial waits for the SC to be announced before it reports it missing.
DISCOVERY_WAIT_S = 5.0


class ScLink:
    """Keeps this SPU registered with the SC."""

    def __init__(self, cfg: SpuConfig, replicas: ReplicaSet, *, public: str, private: str,
                 ssl_context: ssl.SSLContext | None, authenticate: Authenticator,
                 stats: Callable[[], dict[str, Any]],
                 on_assignment: Callable[[], Awaitable[None]],
                 guard: LeadershipGuard, finder: ScFinder | None = None,
                 advertise_from_link: tuple[bool, bool] = (False, False)) -> None:
        self.cfg = cfg
        # With ``sc = "mdns..."`` the SC's address comes from the LAN at every dial.
        self.finder = finder
        # ``sc = "h1:9004,h2:9004"``: the SC that took the connection last.
        self._last_sc: str | None = None
        # A wildcard listener without a configured advertised address is announced
        # with the local address of the link to the SC: the one the SC's side can reach.
        self.advertise_from_link = advertise_from_link
        self.replicas = replicas
        self.public = public
        self.private = private
        self._ssl = ssl_context
        self._authenticate = authenticate
        self._stats = stats
        self._on_assignment = on_assignment
        self.guard = guard
        self._conn: ClientConnection | None = None
        self.connected = asyncio.Event()
        self.registered_once = asyncio.Event()
        self.connects = 0

    async def run(self) -> None:
        """Register and follow assignments until cancelled."""
        backoff = Backoff(BACKOFF_MIN_S, BACKOFF_MAX_S)
        warned = False
        while True:
            try:
                await self._session()
                backoff.reset()
            except Exception as exc:
                if self.connected.is_set() or not warned:
                    what = ("refused" if isinstance(_first(exc), AuthenticationFailed)
                            else "unreachable")
                    log.warning("SC %s %s (%s); serving on, retrying", self.cfg.sc, what,
                                _reason(exc))
                warned = True
            else:
                warned = False
            self.connected.clear()
            await backoff.sleep()

    async def _session(self) -> None:
        conn = await self._dial()
        try:
            public, private = self._advertised(conn)
            rows, blob = rows_out("partitions", self._status())
            stream = conn.open_stream(
                ApiKey.REGISTER_SPU, blob, spu=self.cfg.id, public=public, private=private,
                rack=self.cfg.rack, **rows,
            )
            first = await stream.next()
            if first is None:
                return
            self.connects += 1
            self._conn = conn
            self.connected.set()
            log.info("registered with SC %s as SPU %d (advertising %s, %s)", conn.addr,
                     self.cfg.id, public, private)
            await self._apply(*first)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._heartbeats(conn), name="heartbeat")
                tg.create_task(self._follow(stream), name="assignments")
                if self.finder is not None:
                    tg.create_task(self._watch_moved(self.finder, conn.addr), name="sc-moved")
        except* (HeadwaterError, OSError) as eg:
            raise eg.exceptions[0] from None
        finally:
            self._conn = None
            await conn.close()

    async def _dial(self) -> ClientConnection:
        """The first SC that takes the connection: of ``sc = "h1:9004,h2:9004"`` (the
        one that did last tried first; only the active SC of a cloud cluster listens
        on its private port), or of those the LAN announces (``sc = "mdns..."``)."""
        found = self.finder is not None
        addrs = (await self.finder.wait(timeout=DISCOVERY_WAIT_S) if self.finder is not None
                 else sorted(split_addr_list(self.cfg.sc), key=lambda a: a != self._last_sc))
        failure: Exception | None = None
        for addr in addrs:
            conn = ClientConnection(addr, ssl_context=self._ssl, authenticate=self._authenticate)
            try:
                await conn.connect()
            except HeadwaterError as exc:
                failure = exc
                continue
            joined = self.replicas.cluster_id
            if found and joined is not None and conn.cluster != joined:
                assert self.finder is not None
                # The announcement claimed our cluster; the SC itself says otherwise.
                self.finder.directory.log_once(
                    addr, f"answers {conn.cluster}", "SC at %s (found on mDNS) is of cluster "
                    "%s, not %s which this SPU joined; not registering there", addr,
                    conn.cluster, joined)
                await conn.close()
                failure = ConnectionError(f"{addr} is not an SC of cluster {joined}")
                continue
            self._last_sc = addr
            return conn
        raise failure or ConnectionError(f"no SC at {self.cfg.sc}")

    def _advertised(self, conn: ClientConnection) -> tuple[str, str]:
        host = conn.local_host()
        public, private = self.public, self.private
        if host is not None and self.advertise_from_link[0]:
            public = _with_host(public, host)
        if host is not None and self.advertise_from_link[1]:
            private = _with_host(private, host)
        return public, private

    async def _watch_moved(self, finder: ScFinder, addr: str) -> None:
        """End the session when the SC is announced elsewhere (a new DHCP lease):
        the old connection may otherwise hang until a heartbeat times out."""
        while True:
            await finder.directory.wait_changed()
            now = finder.candidates()
            if now and addr not in now:
                raise ConnectionError(f"the SC moved from {addr} to {', '.join(now)}")

    async def _follow(self, stream: Any) -> None:
        while (item := await stream.next()) is not None:
            await self._apply(*item)
        raise ConnectionError("SC ended the assignment stream")

    async def _apply(self, meta: dict[Any, Any], blob: bytes) -> None:
        """One REGISTER_SPU push; a malformed one is a ProtocolError that ends the session."""
        push = decode_response(sc_api.ASSIGNMENT, rows_in(meta, blob, "replicas",
                                                          ProtocolError))
        if not all(k.isascii() and k.isdigit() for k in push.peers):
            raise ProtocolError("field 'peers': keys must be SPU ids", field="peers")
        peers = {int(k): v for k, v in push.peers.items()}
        self.replicas.uplink_share_ppm = push.uplink_share_ppm
        self.replicas.set_access(enabled=push.authorization is True,
                                 rules=rules_from_wire(to_wire(push.acls or ())),
                                 superusers=list(push.superusers or ()),
                                 tokens=[(t.sha256, t.principal) for t in push.tokens or ()])
        await self.replicas.apply(to_wire(push.replicas), cluster_id=push.cluster,
                                  version=push.version, peers=peers,
                                  generation=push.generation)
        await self._on_assignment()
        self.registered_once.set()

    async def propose_isr(self, p: Partition, isr: list[int]) -> bool:
        """Ask the SC to record a new ISR; only an accepted change may be applied."""
        conn = self._conn
        if conn is None or conn.closed:
            return False
        try:
            await conn.request(ApiKey.UPDATE_ISR, spu=self.cfg.id, topic=p.topic,
                               partition=p.index, epoch=p.leader_epoch, isr=isr, timeout=5.0)
        except StaleEpoch as exc:
            p.step_down(f"the SC refused an ISR change: {exc}")
            return False
        except HeadwaterError as exc:
            log.info("ISR change for %s not recorded: %s", p.name, exc)
            return False
        return True

    def _health(self) -> dict[str, Any]:
        """The psutil figures, and when this SPU's first certificate expires."""
        out = health.snapshot(self.cfg.data_dir)
        cert = self.cfg.tls.cert if self.cfg.tls is not None else None
        end = None if cert is None else not_after(cert)
        if end is not None:
            out["tls_not_after"] = int(end)
        return out

    async def _heartbeats(self, conn: ClientConnection) -> None:
        """One heartbeat every ``heartbeat_interval_s`` from the start of the last one,
        not from its answer: an SC slow to answer (busy electing for hundreds of
        partitions) must not stretch the period past its own heartbeat timeout."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            sent_at = self.guard.token()
            rows, blob = rows_out("partitions", self._status())
            meta, _ = await conn.request(
                ApiKey.HEARTBEAT, blob, spu=self.cfg.id,
                health=self._health(), stats=self._stats(), timeout=10.0,
                **rows,
            )
            # Confirmed only once the assignment the SC had when it answered is applied.
            if self.replicas.version >= decode_response(sc_api.HEARTBEAT_ANSWER, meta).version:
                self.guard.confirmed(sent_at)
            await asyncio.sleep(max(0.0, started + self.cfg.heartbeat_interval_s - loop.time()))

    def _status(self) -> list[dict[str, Any]]:
        return [p.status() for p in self.replicas.partitions.values()]


def _with_host(addr: str, host: str) -> str:
    port = addr.rpartition(":")[2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _first(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _reason(exc: BaseException) -> str:
    exc = _first(exc)
    return str(exc) or type(exc).__name__



"""Several SCs on one etcd: one active, the others standby, and the hand-over.

With ``metadata = "etcd://h1:2379,h2:2379,h3:2379"`` in ``sc.toml`` each
``headwater run sc`` process runs :class:`HaSc`:

1. **Standby.** It answers on its public port as a standby (edge/sc/standby.py:
   where the active SC is), keeps a warm copy of the metadata through an etcd watch
   (edge/sc/warm.py) and campaigns for ``{prefix}/leader`` (edge/sc/election.py),
   an etcd key bound to its lease.
2. **Active.** Once it holds the key it takes the metadata from its warm copy when
   the copy is shown to be current, else loads it from etcd
   (edge/sc/etcd_store.py), starts the SC proper (edge/sc/service.py) on its
   public and private ports, and renews its lease every third of its TTL. Every
   write it makes is an etcd transaction conditioned on still holding the key
   (fencing): an SC that was paused or cut off past its lease changes nothing.
3. **Stepping down.** When a renewal fails (the lease expired: paused, partitioned
   from etcd's quorum, or etcd lost quorum) it stops the SC proper, drops every
   connection and goes back to 1. A clean stop resigns first, so a standby takes
   over at once rather than after the TTL.

SPUs and clients are given every SC's address (``sc = "h1:9004,h2:9004"``,
``--sc h1:9003,h2:9003``); SPUs find the active SC by its private port (only it
listens), clients by the standbys' answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, cast

from edge.logstate import StateLog
from edge.protocol.errors import StorageError
from edge.sc.config import EtcdSettings, ScConfig
from edge.sc.standby import StandbyServer
from edge.tasks import cancel
from edge.tls import client_context

if TYPE_CHECKING:
    from edge.sc.election import Election
    from edge.sc.etcd import EtcdClient
    from edge.sc.group_store import GroupStore
    from edge.sc.service import Sc
    from edge.sc.store import MetadataStore
    from edge.sc.warm import WarmCopy

log = logging.getLogger(__name__)


class UnfinishedMigrationError(StorageError):
    """The etcd prefix holds the marker of a ``headwater sc migrate`` that stopped."""

MAX_MEMBERS = 15
MEMBERS_EVERY_S = 2.0


def _endpoint(member: dict[str, Any]) -> str:
    """A member's first client URL as HOST:PORT."""
    urls = member.get("clientURLs") or member.get("client_urls") or [""]
    url = str(urls[0])
    return url.split("://", 1)[-1].rstrip("/")


def etcd_client(settings: EtcdSettings) -> EtcdClient:
    from edge.sc.etcd import EtcdClient

    ctx = client_context(settings.tls) if settings.tls is not None else None
    return EtcdClient(list(settings.endpoints), timeout_s=settings.timeout_s, ssl_context=ctx,
                      username=settings.username, password=settings.password())


class HaSc:
    """One SC process of a highly available control plane (``start``/``stop`` as
    every service of edge/daemon.py)."""

    def __init__(self, cfg: ScConfig) -> None:
        assert cfg.etcd is not None
        from edge.sc.election import Election

        self.cfg = cfg
        self.settings = cfg.etcd
        self.client = etcd_client(cfg.etcd)
        self.candidate = {"public": cfg.public_addr, "private": cfg.private_addr,
                          "node": f"{socket.gethostname()}:{os.getpid()}"}
        self.election: Election = Election(self.client, prefix=f"{cfg.etcd.prefix}/sc",
                                           candidate=self.candidate, ttl_s=cfg.etcd.ttl_s)
        self.standby = StandbyServer(cfg, self._active_public)
        self.sc: Sc | None = None
        self.activations = 0
        self.active = asyncio.Event()
        self._leader_public: str | None = None
        self._stopping = threading.Event()
        self._task: asyncio.Task[None] | None = None
        self._members: list[dict[str, Any]] = []
        self._warm: WarmCopy | None = None
        self.warm_takeovers = 0

    @property
    def public_addr(self) -> str:
        return self.sc.public_addr if self.sc is not None else self.cfg.public_addr

    def _active_public(self) -> str | None:
        return self._leader_public

    async def start(self) -> None:
        await self.standby.start()
        self._task = asyncio.create_task(self._run(), name="sc-ha")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            await cancel(self._task)
        await asyncio.to_thread(self._drop_warm)
        await self._step_down(resign=True)
        await self.standby.stop()

    async def _run(self) -> None:
        refused = StateLog(log)
        while not self._stopping.is_set():
            await self._wait_for_leadership()
            if self._stopping.is_set():
                return
            failed = True
            try:
                await self._activate()
                refused.end("the metadata in etcd is usable again")
                failed = False
                await self._hold()
            except UnfinishedMigrationError as exc:
                refused.begin("SC cannot become active: %s", exc)
            except Exception:  # an activation that failed must not stay active
                log.exception("SC activation failed; standing by again")
            # After a failed activation, resign (another SC may fare better) and wait
            # a lease before campaigning again, rather than loop on the same failure.
            await self._step_down(resign=failed)
            with contextlib.suppress(OSError):
                await self.standby.start()
            if failed:
                await asyncio.sleep(self.settings.ttl_s)

    async def _wait_for_leadership(self) -> None:
        """Campaign in a thread (the etcd client blocks), noting who leads meanwhile,
        with a warm copy of the metadata following etcd (edge/sc/warm.py)."""
        from edge.sc.warm import WarmCopy

        self._drop_warm()
        self._warm = WarmCopy(self.client, self.settings.prefix, self.election.fence)
        self._warm.start()
        campaign = asyncio.create_task(asyncio.to_thread(self.election.campaign,
                                                         self._stopping))
        try:
            while not campaign.done():
                leader = await asyncio.to_thread(self._leader_or_none)
                self._leader_public = None if leader is None else leader.get("public")
                await asyncio.wait({campaign}, timeout=self.settings.ttl_s / 4)
            await campaign
        finally:
            if not campaign.done():
                self._stopping.set()
                await asyncio.wait({campaign})

    def _drop_warm(self) -> None:
        warm, self._warm = self._warm, None
        if warm is not None:
            warm.close()

    def _leader_or_none(self) -> dict[str, str] | None:
        try:
            return self.election.leader()
        except Exception:  # etcd away: nobody is known to lead
            return None

    async def _activate(self) -> None:
        from edge.sc.etcd_store import EtcdGroupStore, EtcdMetadataStore, unfinished_migration
        from edge.sc.service import Sc

        await self.standby.stop()
        prefix = self.settings.prefix
        began = await asyncio.to_thread(unfinished_migration, self.client, prefix)
        if began is not None:
            raise UnfinishedMigrationError(
                f"a migration into etcd prefix {prefix}/ did not finish ({began}): run "
                "`headwater sc migrate` again, it starts over")
        warm, self._warm = self._warm, None
        stores = (None if warm is None
                  else await asyncio.to_thread(warm.take, self.election.revision))
        if stores is not None:
            store, groups = stores
            await asyncio.to_thread(store.ensure_cluster_id)
            self.warm_takeovers += 1
            log.info("taking over with the standby copy of the metadata (etcd revision %d)",
                     warm.revision if warm is not None else 0)
        else:
            store = await asyncio.to_thread(EtcdMetadataStore, self.client,
                                            prefix=f"{prefix}/meta", fence=self.election.fence)
            groups = await asyncio.to_thread(EtcdGroupStore, self.client,
                                             prefix=f"{prefix}/groups",
                                             fence=self.election.fence)
        # The etcd stores have the SQLite stores' methods and meaning, checked by
        # running the same store tests on both (tests/sc/test_etcd_store.py).
        self.sc = Sc(self.cfg, store=cast("MetadataStore", store),
                     group_store=cast("GroupStore", groups), control_plane=self.describe)
        loop, controller = asyncio.get_running_loop(), self.sc.controller

        def push_again() -> None:
            loop.call_soon_threadsafe(controller.changed)

        store.on_reload = groups.on_reload = push_again
        await self.sc.start()
        self._leader_public = self.sc.public_addr
        self.activations += 1
        self.active.set()
        log.info("SC active (election %s/sc, metadata in etcd %s)", self.settings.prefix,
                 ",".join(self.settings.endpoints))

    def describe(self) -> dict[str, Any]:
        """What ``cluster status`` shows of the control plane (no etcd call: the
        members' health is the last one :meth:`_hold` read)."""
        return {"metadata": "etcd", "active": self.candidate["node"],
                "prefix": self.settings.prefix, "members": self._members}

    def _read_members(self) -> list[dict[str, Any]]:
        rows = []
        try:
            members = self.client.members()
        except Exception as exc:
            return [{"name": "?", "endpoint": ",".join(self.settings.endpoints),
                     "healthy": False, "error": str(exc)[:200]}]
        for m in members[:MAX_MEMBERS]:
            endpoint = _endpoint(m)
            row: dict[str, Any] = {"name": str(m.get("name", "")), "endpoint": endpoint}
            try:
                status = self.client.status(endpoint)
                row.update(healthy=True, leader=bool(status.get("leader")),
                           db_size=int(status.get("db_size", 0)))
            except Exception:
                row.update(healthy=False)
            rows.append(row)
        return rows

    async def _hold(self) -> None:
        """Renew the lease until a renewal fails; refresh the members' health."""
        interval = self.settings.ttl_s / 3
        health = asyncio.create_task(self._watch_members(), name="etcd-health")
        try:
            await self._renew_until_lost(interval)
        finally:
            await cancel(health)

    async def _watch_members(self) -> None:
        while True:
            self._members = await asyncio.to_thread(self._read_members)
            await asyncio.sleep(MEMBERS_EVERY_S)

    async def _renew_until_lost(self, interval: float) -> None:
        """Until the lease may have expired: a renewal that fails (etcd slow or away)
        is tried again while the last good one is less than a TTL old."""
        last_ok = time.monotonic()
        while not self._stopping.is_set():
            await asyncio.sleep(interval)
            if await asyncio.to_thread(self._renew):
                last_ok = time.monotonic()
            elif time.monotonic() - last_ok >= self.settings.ttl_s:
                log.warning("SC lost its leadership (lease not renewed within %ds): "
                            "stepping down to standby", self.settings.ttl_s)
                return

    def _renew(self) -> bool:
        try:
            return self.election.keepalive()
        except Exception as exc:
            log.warning("lease renewal failed: %s", exc)
            return False

    async def _step_down(self, *, resign: bool) -> None:
        self.active.clear()
        sc, self.sc = self.sc, None
        self._leader_public = None
        if sc is not None:
            await sc.stop()
        if resign:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.election.resign)

"""The control plane's state machine: topics, SPUs, placement, metadata.

The controller owns the :class:`MetadataStore` and the soft state of live SPUs.
Every change bumps ``version`` and notifies subscribers: each registered SPU
gets its replica list, each metadata watcher the new picture.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from edge.protocol.errors import (
    InvalidConfig,
    InvalidRequest,
    StaleEpoch,
    TopicExists,
    TopicNotFound,
)
from edge.protocol.sc_api import SHARE_PPM, ReplicaStatus, TopicStatus
from edge.sc.assignment import SpuSlot, assign, led_by
from edge.sc.registration import epoch_behind, reported_leader
from edge.sc.store import MetadataStore, PartitionRow, TopicRow
from edge.sc.topic_settings import altered_config, check_topic_settings
from edge.storage.config import is_topic_name
from edge.storage.mirror import MirrorOwner

log = logging.getLogger(__name__)

# One election: the partition as stored, its new leader (None: no eligible one), ISR.
Election = tuple[PartitionRow, int | None, list[int]]
# A round of more elections than this is logged as one line per kind.
ROUND_LINES = 10


@dataclass
class SpuState:
    """What the SC knows about a registered SPU right now."""

    id: int
    public: str
    private: str
    rack: str | None
    online: bool = False
    last_heartbeat: float = 0.0
    health: dict[str, Any] = field(default_factory=dict)
    partitions: tuple[ReplicaStatus, ...] = ()
    stats: dict[str, Any] = field(default_factory=dict)
    push: Callable[[list[dict[str, Any]], int], None] | None = None


class Controller:
    """Topics, partitions and SPUs, kept consistent and pushed to subscribers."""

    def __init__(self, store: MetadataStore, *, heartbeat_timeout_s: float) -> None:
        self.store = store
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.cluster_id = store.get_meta("cluster_id") or ""
        self.version = 0
        # A restarted SC gives every registered SPU one heartbeat timeout to dial in
        # before it counts as offline: the SPUs kept serving while the SC was down,
        # and electing away from the ones that reconnect last would interrupt them.
        now = time.monotonic()
        self.spus: dict[int, SpuState] = {
            r.id: SpuState(r.id, r.public, r.private, r.rack, online=True, last_heartbeat=now)
            for r in store.spus()
        }
        self.watchers: set[Callable[[], None]] = set()
        self.started = time.time()
        # The highest leader epoch any SPU reported per partition since this SC started:
        # every epoch the SC issues is above it (see _catch_up_epochs).
        self.seen_epochs: dict[tuple[str, int], int] = {}
        # Set by the stopping SC: its SPU links closing are not SPU failures.
        self.stopping = False

    # topics ---------------------------------------------------------------

    def create_topic(self, name: str, partitions: int, replication: int,
                     config: dict[str, Any], *, prefer_leader: int | None = None) -> TopicRow:
        """A new topic from CREATE_TOPIC's decoded fields (their bounds are the
        schema's, ``edge/protocol/sc_api.py``): names and settings checked here."""
        if not is_topic_name(name):
            raise InvalidConfig(f"invalid topic name {name!r}: use letters, digits, '.', '_', "
                                "'-' (at most 200, starting with a letter or digit)")
        config = check_topic_settings(config, replication)
        if self.store.topic(name) is not None:
            raise TopicExists(f"topic {name!r} already exists", topic=name)
        slots = self.slots()
        placement = assign(partitions, replication, slots)
        if (placement is not None and prefer_leader is not None
                and prefer_leader in {slot.id for slot in slots}):
            placement = led_by(placement, prefer_leader)
        status = TopicStatus.READY if placement else TopicStatus.WAITING
        row = TopicRow(name, partitions, replication, config, status, int(time.time() * 1000))
        self.store.add_topic(row, _partition_rows(name, placement))
        if placement is None:
            log.warning("topic %s waits for %d online SPUs (have %d)", name, replication,
                        len(self.slots()))
        self._changed()
        return row

    def alter_topic(self, name: str, changes: dict[str, Any], reset: Sequence[str], *,
                    validate_only: bool = False) -> TopicRow:
        """ALTER_TOPIC: ``changes`` set and ``reset`` back to their defaults, checked
        as CREATE_TOPIC checks settings (``edge/sc/topic_settings.py``), then stored
        and pushed to SPUs and watchers, unless ``validate_only`` or nothing changed."""
        row = self.topic(name)
        altered = row._replace(config=altered_config(row.config, changes, reset,
                                                     replication=row.replication))
        if validate_only or altered.config == row.config:
            return altered
        self.store.set_topic_config(name, altered.config)
        log.info("topic %s settings changed: %s", name, ", ".join(
            [f"{k}={v!r}" for k, v in sorted(changes.items())]
            + [f"{k} reset" for k in sorted(reset)]))
        self._changed()
        return altered

    def delete_topic(self, name: str) -> None:
        if not self.store.delete_topic(name):
            raise TopicNotFound(f"topic {name!r} does not exist", topic=name)
        # A new topic of that name starts at epoch 0 again.
        self.seen_epochs = {k: v for k, v in self.seen_epochs.items() if k[0] != name}
        self._changed()

    def topic(self, name: str) -> TopicRow:
        row = self.store.topic(name)
        if row is None:
            raise TopicNotFound(f"topic {name!r} does not exist", topic=name)
        return row

    def _place_waiting(self) -> bool:
        placed = False
        for t in self.store.topics():
            if t.status != TopicStatus.WAITING:
                continue
            placement = assign(t.partitions, t.replication, self.slots())
            if placement is not None:
                self.store.place_topic(t.name, _partition_rows(t.name, placement))
                log.info("placed waiting topic %s", t.name)
                placed = True
        return placed

    def slots(self) -> list[SpuSlot]:
        """The online SPUs, with their leader counts, for placement."""
        leaders: dict[int, int] = {}
        for p in self.store.partitions():
            if p.leader is not None:
                leaders[p.leader] = leaders.get(p.leader, 0) + 1
        return [SpuSlot(s.id, s.rack, leaders.get(s.id, 0))
                for s in self.spus.values() if s.online]

    # SPUs -----------------------------------------------------------------

    def register_spu(self, spu_id: int, public: str, private: str, rack: str | None,
                     push: Callable[[list[dict[str, Any]], int], None], *,
                     partitions: Sequence[ReplicaStatus] = ()) -> SpuState:
        """A registration and the replica status it reports (epochs included: the SC
        moves past any it has not issued before it elects or pushes)."""
        self.store.upsert_spu(spu_id, public, private, rack)
        state = self.spus.get(spu_id)
        if state is None:
            state = self.spus[spu_id] = SpuState(spu_id, public, private, rack)
        state.public, state.private, state.rack = public, private, rack
        state.online = True
        state.last_heartbeat = time.monotonic()
        state.push = push
        state.partitions = tuple(partitions)
        log.info("SPU %d online (clients: %s, peers: %s)", spu_id, public, private)
        self._catch_up_epochs()
        self._place_waiting()
        self._elect_leaderless()
        self._changed()
        return state

    def check_replaceable(self, spu_id: int) -> None:
        """Refuse to hand a live SPU's id to a second connection: only the SPU that
        stopped heartbeating (or whose connection closed) may be replaced."""
        state = self.spus.get(spu_id)
        if state is None or state.push is None or not state.online:
            return
        age = time.monotonic() - state.last_heartbeat
        if age < self.heartbeat_timeout_s:
            raise InvalidRequest(f"spu: SPU {spu_id} is live on another connection "
                                 f"(heartbeat {age:.1f}s ago)", field="spu", value=spu_id)

    def heartbeat(self, spu_id: int, health: dict[str, Any], partitions: Sequence[ReplicaStatus],
                  stats: dict[str, Any]) -> None:
        state = self.spus.get(spu_id)
        if state is None or state.push is None:
            return
        state.last_heartbeat = time.monotonic()
        state.health, state.partitions, state.stats = health, tuple(partitions), stats
        was_online, state.online = state.online, True
        caught_up = self._catch_up_epochs()
        if not was_online:
            log.info("SPU %d back online", spu_id)
            self._elect_leaderless()
        if caught_up or not was_online:
            self._changed()

    def spu_disconnected(self, spu_id: int, push: object) -> None:
        state = self.spus.get(spu_id)
        if state is not None and state.push is push:
            state.push = None
            # A stopping SC closes every link; electing then would push leadership
            # changes to the SPUs not yet cut off, and store them, for no failure at all.
            if not self.stopping:
                self._set_offline(state, "connection closed")

    def check_liveness(self) -> None:
        now = time.monotonic()
        for state in self.spus.values():
            if state.online and now - state.last_heartbeat > self.heartbeat_timeout_s:
                self._set_offline(state, f"no heartbeat for {self.heartbeat_timeout_s}s")

    def _set_offline(self, state: SpuState, why: str) -> None:
        if state.online:
            state.online = False
            log.warning("SPU %d offline: %s", state.id, why)
            self._catch_up_epochs()
            self._elect_away_from(state.id)
            self._changed()

    # elections --------------------------------------------------------------

    def _online(self) -> set[int]:
        return {s.id for s in self.spus.values() if s.online}

    def _elect_away_from(self, spu_id: int) -> None:
        """New leaders, from the ISR, for every partition ``spu_id`` led."""
        topics = {t.name: t for t in self.store.topics()}
        online = self._online()
        changes: list[Election] = []
        for p in self.store.partitions():
            if p.leader != spu_id:
                continue
            isr = [r for r in p.isr if r != spu_id]
            new = self._choose_leader(p, isr, online, topics.get(p.topic))
            # The deposed leader leaves the ISR; with no successor it stays, so
            # it can lead again when it returns (it has everything committed). An
            # unclean successor is in sync with nobody but itself.
            if new is None:
                changes.append((p, None, p.isr))
            else:
                changes.append((p, new, isr if new in isr else [new]))
        self._set_leaders(changes)

    def _elect_leaderless(self) -> None:
        topics = {t.name: t for t in self.store.topics()}
        online = self._online()
        changes: list[Election] = []
        for p in self.store.partitions():
            if p.leader is None or p.leader not in online:
                new = self._choose_leader(p, p.isr, online, topics.get(p.topic))
                if new is not None and new != p.leader:
                    changes.append((p, new, p.isr if new in p.isr else [new]))
        self._set_leaders(changes)

    def _catch_up_epochs(self) -> bool:
        """Move each partition whose replicas know an epoch the SC's store lacks (the
        store is older than the cluster: a restored backup, a host replaced from a
        copy) past the highest of them, so that its next assignment is accepted. The
        leader is the replica that reports leading that epoch, else the usual
        election's; while no replica claims it and one has still to dial in after an
        SC start, the partition waits for its report. True if anything changed."""
        reports = self._reports()
        topics: dict[str, TopicRow] | None = None
        changes: list[Election] = []
        for p in self.store.partitions():
            key = (p.topic, p.idx)
            live = reports.get(key, {})
            seen = max([self.seen_epochs.get(key, -1), *(s.epoch for s in live.values())])
            if seen < 0:
                continue
            self.seen_epochs[key] = seen
            top = epoch_behind(p.epoch, p.leader, live, seen)
            if top is None:
                continue
            claimed = reported_leader(p.replicas, live, top)
            if claimed is None and self._unheard(p):
                continue
            leader: int | None
            if claimed is not None:
                leader, isr = claimed
            else:
                if topics is None:
                    topics = {t.name: t for t in self.store.topics()}
                leader = self._choose_leader(p, p.isr, self._online(), topics.get(p.topic))
                isr = p.isr if leader is None or leader in p.isr else [leader]
            log.warning("SC's epoch for %s/%d was behind the SPUs' (%d %s %d): metadata "
                        "restored from an older copy? moving to epoch %d", p.topic, p.idx,
                        p.epoch, "<" if p.epoch < top else "=", top, max(p.epoch, top) + 1)
            changes.append((p, leader, isr))
        self._set_leaders(changes)
        return bool(changes)

    def _reports(self) -> dict[tuple[str, int], dict[int, ReplicaStatus]]:
        """Per partition, what each registered online SPU last reported of it."""
        out: dict[tuple[str, int], dict[int, ReplicaStatus]] = {}
        for state in self.spus.values():
            if state.push is not None and state.online:
                for r in state.partitions:
                    out.setdefault((r.topic, r.partition), {})[state.id] = r
        return out

    def _unheard(self, p: PartitionRow) -> bool:
        """A replica of ``p`` counts as online (an SC start's grace) but has not
        registered yet: its report may still change the picture."""
        return any(s is not None and s.online and s.push is None
                   for s in (self.spus.get(r) for r in p.replicas))

    def _choose_leader(self, p: PartitionRow, isr: list[int], online: set[int],
                       topic: TopicRow | None) -> int | None:
        for r in p.replicas:  # replica order = preference order
            if r in isr and r in online:
                return r
        if topic is not None and topic.config.get("unclean_election"):
            for r in p.replicas:
                if r in online:
                    log.warning("unclean election of SPU %d for %s/%d: records committed "
                                "only on the ISR may be lost", r, p.topic, p.idx)
                    return r
        return None

    def _set_leaders(self, changes: Sequence[Election]) -> None:
        """Store a round of elections in one write and log it: a partition a line,
        or for a large round one line of each kind naming the first few."""
        # Past the stored epoch and every epoch an SPU reported: an SPU ignores an
        # assignment older than what it knows, and one epoch never has two leaders.
        rows = [PartitionRow(p.topic, p.idx, p.replicas, leader,
                             max(p.epoch, self.seen_epochs.get((p.topic, p.idx), -1)) + 1, isr)
                for p, leader, isr in changes]
        if not rows:
            return
        self.store.update_partitions(rows)
        leaderless = [f"{p.topic}/{p.idx} has no eligible leader (ISR {p.isr} offline)"
                      for (p, _, _), row in zip(changes, rows, strict=True)
                      if row.leader is None]
        led = [f"{p.topic}/{p.idx}: SPU {row.leader} leads, epoch {row.epoch} "
               f"(was SPU {p.leader})" for (p, _, _), row in zip(changes, rows, strict=True)
               if row.leader is not None]
        _log_round(logging.WARNING, leaderless)
        _log_round(logging.INFO, led)

    def update_isr(self, spu_id: int, topic: str, index: int, epoch: int,
                   isr: Sequence[int]) -> None:
        """A leader's ISR change; refused unless it is the current leader and epoch."""
        wanted = list(isr)
        current = next((p for p in self.store.partitions(topic) if p.idx == index), None)
        if current is None:
            raise TopicNotFound(f"{topic}/{index} does not exist", topic=topic)
        if current.leader != spu_id or current.epoch != epoch:
            raise StaleEpoch(f"{topic}/{index}: SPU {spu_id} at epoch {epoch} is not the "
                             f"leader (SPU {current.leader}, epoch {current.epoch})",
                             epoch=current.epoch)
        if not set(wanted) <= set(current.replicas) or spu_id not in wanted:
            raise InvalidConfig(f"ISR {wanted} is not a subset of replicas {current.replicas} "
                                "including the leader")
        self.store.update_partition(current._replace(isr=wanted))
        log.info("%s/%d: ISR %s -> %s", topic, index, current.isr, wanted)
        self._changed()

    def rebalance(self, topic: str | None = None) -> int:
        """Move leadership back to each partition's preferred replica where it is in
        the ISR and online; returns how many partitions moved."""
        online = self._online()
        changes: list[Election] = []
        for p in self.store.partitions(topic):
            preferred = p.replicas[0]
            if p.leader != preferred and preferred in p.isr and preferred in online:
                changes.append((p, preferred, p.isr))
        self._set_leaders(changes)
        if changes:
            self._changed()
        return len(changes)

    def replicas_for(self, spu_id: int) -> list[dict[str, Any]]:
        topics = {t.name: t for t in self.store.topics()}
        owners = self._mirror_owners()
        out = []
        for p in self.store.partitions():
            if spu_id in p.replicas and p.topic in topics:
                t = topics[p.topic]
                out.append({"topic": p.topic, "partition": p.idx, "leader": p.leader,
                            "replicas": p.replicas, "epoch": p.epoch, "isr": p.isr,
                            "config": t.config, "mirror": owners.get((p.topic, p.idx)),
                            # The edge log's identity, which the cloud pins a mirror to.
                            "source": f"{self.cluster_id}/{t.name}/{t.created_ms}"})
        return out

    def _mirror_owners(self) -> dict[tuple[str, int], dict[str, Any]]:
        digests = {s.name: s.token_sha256 for s in self.store.sites()}
        return {(m.topic, m.cloud_partition):
                MirrorOwner(m.site, digests[m.site], m.incarnation, m.edge_partition).to_wire()
                for m in self.store.mirrors() if m.site in digests}

    # metadata -------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        """Leaders and SPU addresses: what a client needs to route requests."""
        topics: dict[str, list[dict[str, Any]]] = {}
        for t in self.store.topics():
            topics[t.name] = []
        for p in self.store.partitions():
            if p.topic in topics:
                topics[p.topic].append({"partition": p.idx, "leader": p.leader,
                                        "epoch": p.epoch, "replicas": p.replicas})
        spus = {str(s.id): {"public": s.public, "online": s.online, "rack": s.rack}
                for s in self.spus.values()}
        return {"version": self.version, "topics": topics, "spus": spus,
                "compression": {t.name: t.config.get("compression", "none")
                                for t in self.store.topics()}}

    def partition_status(self, p: PartitionRow) -> dict[str, Any]:
        """A partition row merged with what its leader last reported."""
        row: dict[str, Any] = {"topic": p.topic, "partition": p.idx, "leader": p.leader,
                               "replicas": p.replicas, "isr": p.isr, "epoch": p.epoch}
        leader = self.spus.get(p.leader) if p.leader is not None else None
        row["leader_online"] = bool(leader and leader.online)
        if leader is not None:
            for s in leader.partitions:
                if s.topic == p.topic and s.partition == p.idx:
                    row.update(hw=s.hw, leo=s.leo, start=s.start, size=s.size,
                               followers=s.followers or {}, dropped=s.dropped, gaps=s.gaps,
                               gap_offsets=s.gap_offsets, edge=s.edge)
        return row

    def uplink_share_ppm(self, spu_id: int) -> int | None:
        """The part of its site's uplink bandwidth limit an SPU may use, in millionths:
        its share of the led partitions of upstream topics (each SPU applies the
        site's ``max_bytes_per_s`` times this, so together they never pass it).
        None when the site mirrors nothing."""
        upstream = {t.name for t in self.store.topics() if t.config.get("upstream") is True}
        leaders = [p.leader for p in self.store.partitions()
                   if p.topic in upstream and p.leader is not None]
        if not leaders:
            return None
        return leaders.count(spu_id) * SHARE_PPM // len(leaders)

    def peers(self) -> dict[str, str]:
        return {str(s.id): s.private for s in self.spus.values()}

    def changed(self) -> None:
        """Push the new picture to every SPU and watcher."""
        self._changed()

    def _changed(self) -> None:
        self.version += 1
        for state in self.spus.values():
            if state.push is not None:
                state.push(self.replicas_for(state.id), self.version)
        for notify in list(self.watchers):
            notify()


def _partition_rows(topic: str, placement: list[list[int]] | None) -> list[PartitionRow]:
    if placement is None:
        return []
    return [PartitionRow(topic, i, replicas, replicas[0], 0, list(replicas))
            for i, replicas in enumerate(placement)]


def _log_round(level: int, lines: list[str]) -> None:
    if len(lines) <= ROUND_LINES:
        for line in lines:
            log.log(level, "%s", line)
    else:
        log.log(level, "%d partitions in one round: %s; ... and %d more", len(lines),
                "; ".join(lines[:3]), len(lines) - 3)

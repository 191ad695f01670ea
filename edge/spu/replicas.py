"""The replicas an SPU hosts, as assigned by the SC.

The SC sends the full list of this SPU's replicas whenever it changes. The list
is saved (atomically) in the data directory, so an SPU restarted while the SC
is down serves the same partitions: the data plane does not wait for the
control plane. Data of a replica that is no longer assigned is deleted only
when the assignment comes from the same cluster (cluster id) that created it:
a freshly installed SC with an empty database cannot wipe an SPU.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2

from edge.acl import Authorizer, Rule, check_rule
from edge.net.bandwidth import MAX_PRIORITY, MIN_PRIORITY
from edge.protocol.errors import LeaderNotAvailable, NotLeader, PartitionNotFound
from edge.spu.budget import NodeBudget
from edge.spu.partition import Partition
from edge.storage.budget import TopicBudget
from edge.storage.config import STORAGE_KEYS, LogConfig, is_topic_name
from edge.storage.fileio import DaemonLock, write_atomic
from edge.storage.log import PartitionLog
from edge.storage.mirror import MirrorOwner
from edge.tokens import TokenBook

log = logging.getLogger(__name__)

ASSIGNMENT_FILE = "assignment.cbor"
ACCESS_FILE = "access.cbor"
LOCK_FILE = "spu.lock"
# A replica's data set aside when an SC with older metadata does not list it.
ORPHAN_SUFFIX = ".set-aside-"


def _role(r: dict[str, Any]) -> dict[str, Any]:
    replicas = [int(x) for x in r.get("replicas", [])]
    leader = r.get("leader")
    return {"epoch": int(r.get("epoch", 0)),
            "leader_id": int(leader) if isinstance(leader, int) else None,
            "replicas": replicas, "isr": [int(x) for x in r.get("isr", replicas)],
            "min_isr": int(r.get("config", {}).get("min_insync_replicas", 1))}


def log_config_from(raw: dict[str, Any], durability: str) -> LogConfig:
    """The storage config of a topic as sent by the SC (unknown keys ignored)."""
    return LogConfig(durability=durability,
                     **{k: v for k, v in raw.items() if k in STORAGE_KEYS})


def _storage_settings(cfg: LogConfig) -> str:
    return ", ".join(f"{k}={getattr(cfg, k)}" for k in sorted(STORAGE_KEYS))


class ReplicaSet:
    """Partitions hosted by this SPU, keyed by (topic, partition)."""

    def __init__(self, data_dir: Path, *, spu_id: int, durability: str,
                 ack_guard: Callable[[], bool] | None = None,
                 disk_budget: int | None = None) -> None:
        self.data_dir = data_dir
        # One lock for the whole directory, so partitions need no descriptor of their
        # own while idle (PartitionLog.release_idle).
        self._lock = DaemonLock(data_dir, LOCK_FILE, "SPU")
        self.spu_id = spu_id
        self.durability = durability
        self.ack_guard = ack_guard
        self.partitions: dict[tuple[str, int], Partition] = {}
        self.budget = NodeBudget(disk_budget, self.partitions)
        # Told the seconds of every group commit (metrics), when set.
        self.fsync_observer: Callable[[float], None] | None = None
        # This SPU's part of the site's uplink limit, as the SC last said (millionths).
        self.uplink_share_ppm: int | None = None
        # The SC's access rules, kept on disk so that a restart while the SC is away
        # does not open what the SC closed.
        self.authorizer = Authorizer()
        self.tokens = TokenBook()
        self._load_access()
        # Private (peer) addresses of the SPUs, as the SC last told us.
        self.peers: dict[int, str] = {}
        self.cluster_id: str | None = None
        self.version = -1
        # The SC store generation of the assignment this SPU last applied (kept
        # across restarts), and of the one being applied.
        self.generation = -1
        self.generation_offered: int | None = None
        (data_dir / "partitions").mkdir(parents=True, exist_ok=True)

    def load_saved(self) -> list[dict[str, Any]] | None:
        path = self.data_dir / ASSIGNMENT_FILE
        try:
            saved = cbor2.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except Exception as exc:
            log.warning("ignoring unreadable %s: %s", path, exc)
            return None
        self.cluster_id = saved.get("cluster_id")
        generation = saved.get("generation")
        self.generation = generation if isinstance(generation, int) else -1
        self.peers = {int(k): str(v) for k, v in saved.get("peers", {}).items()}
        replicas: list[dict[str, Any]] = saved.get("replicas", [])
        return replicas

    def leader(self, topic: str, index: int) -> Partition:
        """The partition this SPU leads, or the error a client can act on."""
        p = self.partitions.get((topic, index))
        if p is None:
            raise PartitionNotFound(f"{topic}/{index} is not hosted by SPU {self.spu_id}",
                                    topic=topic, partition=index)
        if not p.is_leader:
            raise NotLeader(f"SPU {self.spu_id} is not the leader of {topic}/{index}",
                            topic=topic, partition=index)
        if p.failed is not None:
            raise LeaderNotAvailable(str(p.failed), topic=topic, partition=index)
        return p

    async def apply(self, replicas: list[dict[str, Any]], *, cluster_id: str | None,
                    version: int, save: bool = True,
                    peers: dict[int, str] | None = None,
                    generation: int | None = None) -> None:
        """Make the hosted replicas match the SC's list."""
        if peers is not None:
            self.peers = peers
        wanted: dict[tuple[str, int], dict[str, Any]] = {}
        for r in replicas:
            topic, index = str(r["topic"]), int(r["partition"])
            if not is_topic_name(topic):
                log.error("ignoring replica with unsafe topic name %r", topic)
                continue
            wanted[(topic, index)] = r
        same_cluster = self.cluster_id is None or cluster_id == self.cluster_id
        # An SC whose metadata is older than what this SPU applied (restored from a
        # backup, or a copy of its database): a replica it does not list may belong
        # to a topic made after that copy. Its data is set aside, never deleted.
        behind = (save and same_cluster and generation is not None
                  and generation < self.generation)
        self.generation_offered = generation
        for key in [k for k in self.partitions if k not in wanted]:
            await self._remove(key, delete=same_cluster and not behind, set_aside=behind)
        for key, r in wanted.items():
            self._open_or_update(key, r)
        if save:
            if cluster_id is not None and self.cluster_id is not None and not same_cluster:
                log.error("SC cluster id %s differs from the one this SPU joined (%s); "
                          "keeping data of unassigned partitions", cluster_id, self.cluster_id)
            self.cluster_id = cluster_id or self.cluster_id
            self.version = version
            if generation is not None:  # from here on this SC's store is followed
                self.generation = generation
            self._save(list(wanted.values()))

    def _open_or_update(self, key: tuple[str, int], r: dict[str, Any]) -> None:
        role = _role(r)
        cfg = log_config_from(r.get("config", {}), self.durability)
        p = self.partitions.get(key)
        if p is None:
            path = self.partition_dir(*key)
            plog = PartitionLog.open(path, cfg, exclusive=False)
            p = Partition(key[0], key[1], plog, spu_id=self.spu_id,
                          durability=self.durability, leader_epoch=role["epoch"],
                          leader_id=role["leader_id"], replicas=role["replicas"],
                          isr=role["isr"], min_isr=role["min_isr"], ack_guard=self.ack_guard)
            self.partitions[key] = p
            log.info("hosting %s (leader %s, epoch %d, log end %d)", p.name,
                     role["leader_id"], role["epoch"], plog.log_end_offset)
        else:
            p.update_role(**role)
            if p.log.reconfigure(cfg):
                log.info("%s: topic settings now %s", p.name, _storage_settings(cfg))
        p.mirror = MirrorOwner.parse(r.get("mirror"))
        source = r.get("source")
        config = r.get("config", {})
        upstream = config.get("upstream") is True
        p.upstream_source = source if upstream and isinstance(source, str) else None
        priority = config.get("upstream_priority", MIN_PRIORITY)
        # The SC checked it; an odd value from a hand-edited assignment is the default.
        try:
            p.budget = TopicBudget.from_config(config)
        except ValueError as exc:  # the SC checked it: only a hand-edited assignment
            log.warning("%s: ignoring the budget settings: %s", p.name, exc)
            p.budget = TopicBudget()
        p.make_room = self.budget.make_room
        p.fsync_observer = self.fsync_observer
        p.upstream_priority = (priority if isinstance(priority, int) and not isinstance(
            priority, bool) and MIN_PRIORITY <= priority <= MAX_PRIORITY else MIN_PRIORITY)

    async def _remove(self, key: tuple[str, int], *, delete: bool,
                      set_aside: bool = False) -> None:
        p = self.partitions.pop(key)
        await p.close()
        path = self.partition_dir(*key)
        if delete:
            shutil.rmtree(path, ignore_errors=True)
            log.info("deleted replica %s", p.name)
        elif set_aside and path.exists():
            aside = path.with_name(f"{path.name}{ORPHAN_SUFFIX}{int(time.time())}")
            path.rename(aside)
            log.error("%s: the SC's metadata (generation %s) is older than this SPU's (%d) and "
                      "does not list this replica, whose topic may have been made after "
                      "the SC's copy was taken: its data is kept in %s (not served; "
                      "delete it once nothing needs its records)", p.name, self.generation_offered,
                      self.generation, aside)

    def set_access(self, *, enabled: bool, rules: list[Rule], superusers: list[str],
                   tokens: list[tuple[str, str]]) -> None:
        """The SC's authorization state and live tokens (with each assignment push);
        saved if changed."""
        a = self.authorizer
        if ((enabled, rules, frozenset(superusers), sorted(tokens))
                == (a.enabled, a.rules, a.superusers, self.tokens.grants())):
            return
        self.authorizer.update(enabled=enabled, rules=rules, superusers=superusers)
        self.tokens.update(tokens)
        data = cbor2.dumps({"authorization": enabled, "superusers": superusers, "acls": [
            [r.principal, r.operation.value, r.resource] for r in rules],
            "tokens": [list(t) for t in tokens]})
        dfd = os.open(self.data_dir, os.O_RDONLY)
        try:
            write_atomic(self.data_dir, dfd, ACCESS_FILE, data, mode=0o600)
        finally:
            os.close(dfd)
        log.info("authorization %s, %d ACL(s), %d token(s)", "on" if enabled else "off",
                 len(rules), len(tokens))

    def _load_access(self) -> None:
        path = self.data_dir / ACCESS_FILE
        try:
            saved = cbor2.loads(path.read_bytes())
            rules = [check_rule(*row) for row in saved["acls"]]
            self.authorizer.update(enabled=saved["authorization"] is True, rules=rules,
                                   superusers=[str(u) for u in saved["superusers"]])
            # Saved by this version on: (sha256, principal) pairs.
            self.tokens.update((str(d), str(p)) for d, p in saved.get("tokens", ()))
        except FileNotFoundError:
            return
        except Exception as exc:  # damaged: deny everything until the SC says otherwise
            log.warning("unreadable %s (%s): denying every request until the SC sends its "
                        "rules", path, exc)
            self.authorizer.update(enabled=True, rules=[])

    def partition_dir(self, topic: str, index: int) -> Path:
        return self.data_dir / "partitions" / f"{topic}-{index}"

    def _save(self, replicas: list[dict[str, Any]]) -> None:
        path = self.data_dir / ASSIGNMENT_FILE
        tmp = path.with_suffix(".tmp")
        data = cbor2.dumps({"cluster_id": self.cluster_id, "version": self.version,
                            "generation": self.generation,
                            "replicas": replicas,
                            "peers": {str(k): v for k, v in self.peers.items()}})
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
        dfd = os.open(self.data_dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def release_idle(self) -> int:
        """Close the descriptors of idle partitions (they reopen on use); how many."""
        return sum(p.log.release_idle() for p in list(self.partitions.values())
                   if not p.closed)

    async def close(self) -> None:
        for p in list(self.partitions.values()):
            await p.close()
        self.partitions.clear()
        self._lock.close()

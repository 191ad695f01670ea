"""The SC's metadata and group positions in etcd: the SQLite stores' methods and
meaning (edge/sc/store.py, edge/sc/group_store.py), for several SCs on one cluster.

A store loads every key under its prefix at construction (one range request) and
answers reads from memory. Each write is one etcd txn holding every key it
changes; its compares carry the leadership fence (edge/sc/election.py), so an SC
that lost its leadership changes nothing (:class:`Fenced`), plus a compare-and-swap
that proves the memory copy was current: in the metadata store on
``meta/generation``, which every write but ``set_meta`` bumps, in the group store
on each key it rewrites. A CAS that fails means another writer came first: the
store loads again and plans the write again. Memory changes only after etcd
committed. The active SC must construct its stores after it won the election, so
that what it loads includes every write of the SC before it.

Key layout under ``{prefix}/`` (each name part percent-encoded, values JSON of
the row's fields)::

    meta/<key>                               "value"   cluster_id, generation, ...
    topics/<name>                            TopicRow
    partitions/<topic>/<idx // 64:08d>       [PartitionRow, ...]  up to 64 each
    spus/<id:010d>                           SpuRow
    sites/<name>                             SiteRow
    mirrors/<topic>/<site>/<edge_partition:08d>  MirrorRow
    acls/<principal>/<operation>/<resource>  {principal, operation, resource}
    tokens/<sha256>                          TokenRow
    groups/<name>                            {name, generation, updated_ms}
    group_offsets/<group>/<topic>/<partition // 64:08d>  [Position, ...]

Partitions and positions are kept 64 to a key because etcd refuses a txn of more
than ``--max-txn-ops`` (128 by default) operations, and a topic may have 1000
partitions (edge/protocol/sc_api.py). Mirrors are keyed by topic first so that
deleting a topic deletes its mirrors with one range delete, however many sites.
"""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import quote, unquote

from edge.protocol.errors import StorageError, TopicExists
from edge.sc.etcd import (
    Compare,
    EtcdClient,
    Fenced,
    KeyValue,
    MetadataUnavailable,
    Op,
    Result,
    WatchEvent,
)
from edge.sc.group_store import Position, _now_ms
from edge.sc.store import MirrorRow, PartitionRow, SiteRow, SpuRow, TokenRow, TopicRow

PER_KEY: Final = 64
# Each conflict means another writer committed in between; past this many in a
# row the store gives up for now (retriable) rather than spin.
MAX_CONFLICTS: Final = 32
CONFLICT_BACKOFF_S: Final = 0.01
# Where edge/sc/ha.py keeps the two stores of one cluster below its etcd prefix.
METADATA_PREFIX: Final = "meta"
GROUPS_PREFIX: Final = "groups"
MIGRATION_BATCH: Final = 64
# Rows per txn for the bulk changes that can touch any number of keys (a site's
# mirrors, a user's tokens, the positions in deleted topics): well below etcd's
# --max-txn-ops (128 by default) with room for the generation and the fence.
BULK_ROWS: Final = 100
# Present under the prefix while `headwater sc migrate` copies into it.
MIGRATING_KEY: Final = "migrating"

R = TypeVar("R")
Changes = dict[str, Any]  # relative key -> JSON value, or DELETE
DELETE: Final = object()


def key(table: str, *parts: str | int) -> str:
    return "/".join([table, *(quote(str(p), safe="") for p in parts)])


def _split(rel: str) -> list[str]:
    return [unquote(p) for p in rel.split("/")]


def _chunk(n: int) -> str:
    return f"{n // PER_KEY:08d}"


class _Tables:
    """What both stores share: the memory copy's revisions, load, and the txn loop."""

    def __init__(self, client: EtcdClient, *, prefix: str,
                 fence: Callable[[], Compare] | None) -> None:
        self._client = client
        self._root = prefix.rstrip("/") + "/"
        self._fence = fence
        self._lock = threading.RLock()
        self._revs: dict[str, int] = {}
        # The etcd revision the last load reflects: a watch event at or below it is in.
        self.loaded_revision = 0
        # Told when a write found etcd changed behind this copy (a write that timed
        # out and was applied after all) and the copy was loaded again: whoever acts
        # on the metadata (the SC's pushes to its SPUs) must look again.
        self.on_reload: Callable[[], None] | None = None
        self._load()

    def close(self) -> None:
        """Nothing to release: the etcd client belongs to the caller."""

    def _reset(self) -> None:
        raise NotImplementedError

    def _put_row(self, rel: str, value: Any) -> None:
        raise NotImplementedError

    def _drop_row(self, rel: str) -> None:
        raise NotImplementedError

    def _load(self) -> None:
        with self._lock:
            found, self.loaded_revision = self._client.range_at(self._root, prefix=True)
            self._reset()
            self._revs = {}
            for kv in found:
                rel = kv.key[len(self._root):].decode()
                self._revs[rel] = kv.mod_revision
                try:
                    self._put_row(rel, json.loads(kv.value))
                except (ValueError, TypeError, KeyError, IndexError) as exc:
                    raise StorageError(f"etcd key {self._root}{rel} is not a valid row: {exc}",
                                       key=self._root + rel) from None

    def apply_events(self, events: Iterable[WatchEvent]) -> None:
        """Bring the memory copy forward by watch events (in revision order; those
        outside the prefix or already in the last load are skipped): how a standby
        SC keeps its copy warm (edge/sc/warm.py)."""
        root = self._root.encode()
        with self._lock:
            for e in events:
                if not e.key.startswith(root) or e.mod_revision <= self.loaded_revision:
                    continue
                rel = e.key[len(root):].decode()
                if e.deleted:
                    if self._revs.pop(rel, None) is not None:
                        self._drop_row(rel)
                    continue
                try:
                    value = json.loads(e.value)
                    self._revs[rel] = e.mod_revision
                    self._put_row(rel, value)
                except (ValueError, TypeError, KeyError, IndexError) as exc:
                    raise StorageError(f"etcd key {self._root}{rel} is not a valid row: {exc}",
                                       key=self._root + rel) from None

    def _cas_keys(self, changes: Changes) -> Iterable[str]:
        """The keys whose revision this write must find unchanged."""
        return [k for k, v in changes.items() if v is not DELETE]

    def _write(self, plan: Callable[[], tuple[Changes, list[str], R]]) -> R:
        """Run ``plan`` (changes, prefixes to delete, result) against the memory copy
        and commit it in one txn; plan again after a conflict."""
        with self._lock:
            for _ in range(MAX_CONFLICTS):
                changes, prefixes, result = plan()
                if not changes and not prefixes:
                    return result
                if self._commit(changes, prefixes):
                    return result
                self._load()
                if self.on_reload is not None:
                    self.on_reload()
                # Writers that collided would collide again in lockstep: stagger them.
                time.sleep(random.uniform(0, CONFLICT_BACKOFF_S))
        raise MetadataUnavailable(f"{MAX_CONFLICTS} write conflicts in a row under "
                                  f"{self._root}", prefix=self._root)

    def _write_all(self, plan: Callable[[], tuple[Changes, list[str], int]]) -> int:
        """Run ``_write(plan)`` until the plan has nothing left (it plans at most
        BULK_ROWS rows at a time) and return the sum of its counts."""
        with self._lock:
            total = 0
            while done := self._write(plan):
                total += done
            return total

    def _commit(self, changes: Changes, prefixes: list[str]) -> bool:
        fence = self._fence() if self._fence is not None else None
        compares = [Compare.mod_revision(self._root + k, self._revs.get(k, 0))
                    for k in self._cas_keys(changes)]
        ops = [Op.delete(self._root + k) if v is DELETE
               else Op.put(self._root + k, json.dumps(v, separators=(",", ":")))
               for k, v in changes.items()]
        ops += [Op.delete(self._root + p, prefix=True) for p in prefixes]
        failure = [Op.get(fence.key)] if fence is not None else []
        result = self._client.txn([*compares, *([fence] if fence else [])], ops, failure)
        if not result.succeeded:
            if fence is not None:
                _check_fence(fence, result.ranges[0])
            return False
        for p in prefixes:
            for k in [k for k in self._revs if k.startswith(p)]:
                del self._revs[k]
                self._drop_row(k)
        for k, v in changes.items():
            if v is DELETE:
                if self._revs.pop(k, None) is not None:
                    self._drop_row(k)
            else:
                self._revs[k] = result.revision
                self._put_row(k, v)
        return True


def _check_fence(fence: Compare, found: tuple[KeyValue, ...]) -> None:
    if not fence.holds(found[0] if found else None):
        raise Fenced("this SC is no longer the active one: the write was refused",
                     key=fence.key.decode(errors="replace"))


def _row(cls: type[R], value: dict[str, Any]) -> R:
    return cls(**value)


class EtcdMetadataStore(_Tables):
    """:class:`edge.sc.store.MetadataStore` on etcd."""

    def __init__(self, client: EtcdClient, *, prefix: str,
                 fence: Callable[[], Compare] | None, standby: bool = False) -> None:
        """``standby``: a copy that only follows (a standby SC's), which must not
        create the cluster id; the SC that becomes active calls ``ensure_cluster_id``."""
        super().__init__(client, prefix=prefix, fence=fence)
        if not standby:
            self.ensure_cluster_id()

    def _reset(self) -> None:
        self._meta: dict[str, str] = {}
        self._topics: dict[str, TopicRow] = {}
        self._partitions: dict[str, dict[int, PartitionRow]] = {}
        self._spus: dict[int, SpuRow] = {}
        self._sites: dict[str, SiteRow] = {}
        self._mirrors: dict[tuple[str, str, int], MirrorRow] = {}
        self._acls: set[tuple[str, str, str]] = set()
        self._tokens: dict[str, TokenRow] = {}

    def _put_row(self, rel: str, value: Any) -> None:
        table, *parts = _split(rel)
        if table == "meta":
            self._meta[parts[0]] = str(value)
        elif table == "topics":
            self._topics[parts[0]] = _row(TopicRow, value)
        elif table == "partitions":
            self._drop_row(rel)
            rows = self._partitions.setdefault(parts[0], {})
            rows.update((r.idx, r) for r in (_row(PartitionRow, v) for v in value))
        elif table == "spus":
            self._spus[int(parts[0])] = _row(SpuRow, value)
        elif table == "sites":
            self._sites[parts[0]] = _row(SiteRow, value)
        elif table == "mirrors":
            m = _row(MirrorRow, value)
            self._mirrors[m.site, m.topic, m.edge_partition] = m
        elif table == "acls":
            self._acls.add((value["principal"], value["operation"], value["resource"]))
        elif table == "tokens":
            self._tokens[parts[0]] = _row(TokenRow, value)

    def _drop_row(self, rel: str) -> None:
        table, *parts = _split(rel)
        if table == "partitions":
            rows = self._partitions.get(parts[0], {})
            first = int(parts[1]) * PER_KEY
            for idx in range(first, first + PER_KEY):
                rows.pop(idx, None)
            if not rows:
                self._partitions.pop(parts[0], None)
        elif table == "mirrors":
            self._mirrors.pop((parts[1], parts[0], int(parts[2])), None)
        elif table == "acls":
            self._acls.discard((parts[0], parts[1], parts[2]))
        else:
            tables: dict[str, dict[Any, Any]] = {
                "meta": self._meta, "topics": self._topics, "sites": self._sites,
                "tokens": self._tokens, "spus": self._spus}
            if table in tables:
                tables[table].pop(int(parts[0]) if table == "spus" else parts[0], None)

    def _cas_keys(self, changes: Changes) -> Iterable[str]:
        return ["meta/generation", *(k for k in changes if k == "meta/next_producer_id")]

    def ensure_cluster_id(self) -> None:
        """Once per prefix: every SC on it sees the id the first one made."""
        with self._lock:
            if "cluster_id" in self._meta:
                return
            fence = [self._fence()] if self._fence is not None else []
            k = self._root + key("meta", "cluster_id")
            self._client.txn(
                [Compare.create_revision(k, 0), *fence],
                [Op.put(k, json.dumps(uuid.uuid4().hex)),
                 Op.put(self._root + key("meta", "next_producer_id"), json.dumps("1"))])
            self._load()  # ours, or the one another SC made first
            if "cluster_id" not in self._meta:
                raise Fenced("this SC is no longer the active one: it cannot create the "
                             "cluster id", prefix=self._root)

    def _bump(self, changes: Changes) -> Changes:
        changes["meta/generation"] = str(self.generation + 1)
        return changes

    # meta -----------------------------------------------------------------

    def get_meta(self, key_: str) -> str | None:
        return self._meta.get(key_)

    def set_meta(self, key_: str, value: str) -> None:
        self._write(lambda: ({key("meta", key_): value}, [], None))

    @property
    def generation(self) -> int:
        """How many write transactions were committed on this prefix."""
        return int(self._meta.get("generation") or "0")

    def allocate_producer_ids(self, count: int = 1) -> int:
        """Reserve ``count`` ids; never handed out twice, by any SC on this prefix."""
        def plan() -> tuple[Changes, list[str], int]:
            first = int(self._meta.get("next_producer_id") or "1")
            return self._bump({"meta/next_producer_id": str(first + count)}), [], first
        return self._write(plan)

    # topics and partitions --------------------------------------------------

    def add_topic(self, topic: TopicRow, partitions: list[PartitionRow]) -> None:
        def plan() -> tuple[Changes, list[str], None]:
            if topic.name in self._topics:
                raise TopicExists(f"topic {topic.name!r} already exists", topic=topic.name)
            topics = {topic.name: topic}
            changes = {key("topics", topic.name): topic._asdict()}
            changes.update(self._partition_changes(partitions, topics))
            return self._bump(changes), [], None
        self._write(plan)

    def place_topic(self, name: str, partitions: list[PartitionRow]) -> None:
        def plan() -> tuple[Changes, list[str], None]:
            changes: Changes = {}
            row = self._topics.get(name)
            if row is not None:
                changes[key("topics", name)] = row._replace(status="ready")._asdict()
            changes.update(self._partition_changes(partitions, self._topics))
            return self._bump(changes), [], None
        self._write(plan)

    def set_topic_config(self, name: str, config: dict[str, Any]) -> bool:
        """Replace a topic's settings; False if there is no such topic."""
        def plan() -> tuple[Changes, list[str], bool]:
            row = self._topics.get(name)
            changes = {} if row is None else {
                key("topics", name): row._replace(config=config)._asdict()}
            return self._bump(changes), [], row is not None
        return self._write(plan)

    def delete_topic(self, name: str) -> bool:
        def plan() -> tuple[Changes, list[str], bool]:
            changes = {key("topics", name): DELETE}
            prefixes = [key("partitions", name) + "/", key("mirrors", name) + "/"]
            return self._bump(changes), prefixes, name in self._topics
        return self._write(plan)

    def topics(self) -> list[TopicRow]:
        return [self._topics[n] for n in sorted(self._topics)]

    def topic(self, name: str) -> TopicRow | None:
        return self._topics.get(name)

    def update_partition(self, p: PartitionRow) -> None:
        self.update_partitions([p])

    def update_partitions(self, rows: Sequence[PartitionRow]) -> None:
        """BULK_ROWS partition keys to a txn: an election round can touch a
        partition of every topic."""
        chunks: dict[tuple[str, str], list[PartitionRow]] = {}
        for p in rows:
            chunks.setdefault((p.topic, _chunk(p.idx)), []).append(p)
        groups = list(chunks.values())
        with self._lock:
            for start in range(0, len(groups), BULK_ROWS):
                part = [p for group in groups[start:start + BULK_ROWS] for p in group]

                def plan(part: list[PartitionRow] = part) -> tuple[Changes, list[str], None]:
                    return self._bump(self._partition_changes(part, self._topics)), [], None
                self._write(plan)

    def _partition_changes(self, rows: Iterable[PartitionRow],
                           topics: Mapping[str, TopicRow]) -> Changes:
        """The partition keys holding ``rows``, merged with the rows kept beside them."""
        chunks: dict[tuple[str, str], dict[int, PartitionRow]] = {}
        for p in rows:
            if p.topic not in topics:
                raise StorageError(f"no topic {p.topic!r} for partition {p.idx}",
                                   topic=p.topic, partition=p.idx)
            chunk = chunks.setdefault((p.topic, _chunk(p.idx)), {
                i: r for i, r in self._partitions.get(p.topic, {}).items()
                if _chunk(i) == _chunk(p.idx)})
            chunk[p.idx] = p
        return {key("partitions", t, c): [r._asdict() for _, r in sorted(rs.items())]
                for (t, c), rs in chunks.items()}

    def partitions(self, topic: str | None = None) -> list[PartitionRow]:
        names = sorted(self._partitions) if topic is None else [topic]
        return [r for t in names for _, r in sorted(self._partitions.get(t, {}).items())]

    # spus -----------------------------------------------------------------

    def upsert_spu(self, spu_id: int, public: str, private: str, rack: str | None) -> None:
        def plan() -> tuple[Changes, list[str], None]:
            old = self._spus.get(spu_id)
            registered = old.registered_ms if old is not None else int(time.time() * 1000)
            row = SpuRow(spu_id, public, private, rack, registered)
            return self._bump({key("spus", f"{spu_id:010d}"): row._asdict()}), [], None
        self._write(plan)

    def spus(self) -> list[SpuRow]:
        return [self._spus[i] for i in sorted(self._spus)]

    # sites and their mirror partitions --------------------------------------

    def add_site(self, site: SiteRow) -> bool:
        """False if the name is taken."""
        def plan() -> tuple[Changes, list[str], bool]:
            if site.name in self._sites:
                return self._bump({}), [], False
            return self._bump({key("sites", site.name): SiteRow(*site)._asdict()}), [], True
        return self._write(plan)

    def delete_site(self, name: str) -> bool:
        """The site's mirrors, BULK_ROWS to a txn, then the site: an error part way
        leaves the site registered with fewer mappings, and deleting again finishes."""
        def mirrors() -> tuple[Changes, list[str], int]:
            gone = [_mirror_key(m) for m in self._mirrors.values() if m.site == name]
            changes: Changes = dict.fromkeys(gone[:BULK_ROWS], DELETE)
            return (self._bump(changes) if changes else changes), [], len(changes)

        def plan() -> tuple[Changes, list[str], bool]:
            return self._bump({key("sites", name): DELETE}), [], name in self._sites
        with self._lock:
            self._write_all(mirrors)
            return self._write(plan)

    def sites(self) -> list[SiteRow]:
        return [self._sites[n] for n in sorted(self._sites)]

    def site(self, name: str) -> SiteRow | None:
        return self._sites.get(name)

    def mirrors(self, site: str | None = None) -> list[MirrorRow]:
        return [self._mirrors[k] for k in sorted(self._mirrors, key=lambda k: (k[0], k[1], k[2]))
                if site is None or k[0] == site]

    def add_mirror_partition(self, mirror: MirrorRow, partition: PartitionRow,
                             topic: TopicRow | None) -> None:
        """The topic (when new), one more partition of it, and the mapping, in one txn."""
        def plan() -> tuple[Changes, list[str], None]:
            topics = dict(self._topics)
            if topic is not None:
                if topic.name in topics:
                    raise TopicExists(f"topic {topic.name!r} already exists", topic=topic.name)
                topics[topic.name] = topic._replace(partitions=0)
            changes: Changes = {}
            grown = topics.get(partition.topic)
            if grown is not None:
                topics[grown.name] = grown._replace(partitions=grown.partitions + 1)
            changes.update({key("topics", t.name): t._asdict() for t in topics.values()
                            if self._topics.get(t.name) != t})
            changes.update(self._partition_changes([partition], topics))
            self._check_mirror(MirrorRow(*mirror))
            changes[_mirror_key(MirrorRow(*mirror))] = MirrorRow(*mirror)._asdict()
            return self._bump(changes), [], None
        self._write(plan)

    def _check_mirror(self, m: MirrorRow) -> None:
        if m.site not in self._sites:
            raise StorageError(f"no site {m.site!r} for a mirror", site=m.site)
        for other in self._mirrors.values():
            if (other.site, other.topic, other.edge_partition) == (
                    m.site, m.topic, m.edge_partition) or (
                    other.topic, other.cloud_partition) == (m.topic, m.cloud_partition):
                raise StorageError(f"mirror {m.site}/{m.topic}/{m.edge_partition} or cloud "
                                   f"partition {m.topic}/{m.cloud_partition} exists",
                                   site=m.site, topic=m.topic)

    # acls and tokens --------------------------------------------------------

    def add_acl(self, principal: str, operation: str, resource: str) -> bool:
        """False if the rule exists already."""
        rule = (principal, operation, resource)
        return self._write(lambda: (self._bump({} if rule in self._acls else {
            key("acls", *rule): dict(zip(("principal", "operation", "resource"), rule,
                                         strict=True))}), [], rule not in self._acls))

    def remove_acl(self, principal: str, operation: str, resource: str) -> bool:
        rule = (principal, operation, resource)
        return self._write(lambda: (self._bump({key("acls", *rule): DELETE}), [],
                                    rule in self._acls))

    def acls(self) -> list[tuple[str, str, str]]:
        return sorted(self._acls, key=lambda r: (r[0], r[2], r[1]))

    def add_token(self, row: TokenRow) -> None:
        def plan() -> tuple[Changes, list[str], None]:
            if row.sha256 in self._tokens:
                raise StorageError("a token with this digest exists", token_id=row.sha256[:8])
            return self._bump({key("tokens", row.sha256): TokenRow(*row)._asdict()}), [], None
        self._write(plan)

    def revoke_tokens(self, name: str, id_prefix: str, revoked_ms: int) -> int:
        """Revoke the live tokens of ``name`` whose digest starts with ``id_prefix``,
        BULK_ROWS to a txn (an error part way leaves the first ones revoked; revoking
        again finishes)."""
        def plan() -> tuple[Changes, list[str], int]:
            hit = [t for t in self._tokens.values() if t.name == name
                   and t.revoked_ms is None and t.sha256.startswith(id_prefix)][:BULK_ROWS]
            changes: Changes = {key("tokens", t.sha256):
                                t._replace(revoked_ms=revoked_ms)._asdict() for t in hit}
            return (self._bump(changes) if changes else changes), [], len(hit)
        return self._write_all(plan)

    def tokens(self) -> list[TokenRow]:
        return sorted(self._tokens.values(), key=lambda t: (t.name, t.created_ms, t.sha256))


def _mirror_key(m: MirrorRow) -> str:
    return key("mirrors", m.topic, m.site, f"{m.edge_partition:08d}")


class EtcdGroupStore(_Tables):
    """:class:`edge.sc.group_store.GroupStore` on etcd."""

    def _reset(self) -> None:
        self._groups: dict[str, int] = {}
        self._positions: dict[tuple[str, str, int], Position] = {}

    def _put_row(self, rel: str, value: Any) -> None:
        table, *parts = _split(rel)
        if table == "groups":
            self._groups[parts[0]] = int(value["generation"])
        elif table == "group_offsets":
            self._drop_row(rel)
            for v in value:
                p = _row(Position, v)
                self._positions[p.group, p.topic, p.partition] = p

    def _drop_row(self, rel: str) -> None:
        table, *parts = _split(rel)
        if table == "groups":
            self._groups.pop(parts[0], None)
        elif table == "group_offsets":
            for k in [k for k in self._positions
                      if (k[0], k[1]) == (parts[0], parts[1]) and _chunk(k[2]) == parts[2]]:
                del self._positions[k]

    def generation(self, group: str) -> int:
        return self._groups.get(group, 0)

    def set_generation(self, group: str, generation: int) -> None:
        value = {"name": group, "generation": generation, "updated_ms": _now_ms()}
        self._write(lambda: ({key("groups", group): value}, [], None))

    def commit(self, group: str, topic: str, offsets: Mapping[int, int],
               generation: int) -> None:
        """Store every position of ``offsets`` in one txn; durable on return."""
        now = _now_ms()

        def plan() -> tuple[Changes, list[str], None]:
            chunks: dict[str, dict[int, Position]] = {}
            for partition, offset in offsets.items():
                chunk = chunks.setdefault(_chunk(partition), {
                    k[2]: p for k, p in self._positions.items()
                    if (k[0], k[1]) == (group, topic) and _chunk(k[2]) == _chunk(partition)})
                chunk[partition] = Position(group, topic, partition, offset, generation, now)
            return {key("group_offsets", group, topic, c): [p._asdict() for _, p in
                                                            sorted(ps.items())]
                    for c, ps in chunks.items()}, [], None
        self._write(plan)

    def positions(self, group: str | None = None, topic: str | None = None
                  ) -> list[Position]:
        return [self._positions[k] for k in sorted(self._positions)
                if (group is None or k[0] == group) and (topic is None or k[1] == topic)]

    def groups(self) -> list[str]:
        """Every group with a generation or a stored position."""
        return sorted(set(self._groups) | {k[0] for k in self._positions})

    def delete(self, group: str) -> int | None:
        """Forget a group; the number of positions removed, None if it was unknown."""
        def plan() -> tuple[Changes, list[str], int | None]:
            removed = sum(1 for k in self._positions if k[0] == group)
            known = group in self._groups
            return ({key("groups", group): DELETE}, [key("group_offsets", group) + "/"],
                    removed if known or removed else None)
        return self._write(plan)

    def forget_topics_except(self, topics: Iterable[str]) -> int:
        """Drop the positions in topics that no longer exist, BULK_ROWS keys to a txn;
        returns rows removed."""
        keep = set(topics)

        def plan() -> tuple[Changes, list[str], int]:
            rows: dict[tuple[str, str, str], int] = {}
            for g, t, p in self._positions:
                if t not in keep:
                    chunk = (g, t, _chunk(p))
                    rows[chunk] = rows.get(chunk, 0) + 1
            batch = sorted(rows)[:BULK_ROWS]
            return ({key("group_offsets", *c): DELETE for c in batch}, [],
                    sum(rows[c] for c in batch))
        return self._write_all(plan)


def migrate_from_sqlite(sqlite_path: Path, client: EtcdClient, prefix: str) -> dict[str, int]:
    """Copy an SC's SQLite database (metadata and group tables) into an empty etcd
    prefix, laid out as edge/sc/ha.py opens it (``{prefix}/meta``, ``{prefix}/groups``);
    the rows copied per table. The database is opened read-only.

    The copy takes several txns (etcd caps a txn at 128 operations), so it begins by
    writing ``{prefix}/migrating`` and deletes it once every row is in: no SC
    becomes active on a prefix that holds it (edge/sc/ha.py), and a migration that
    stopped half-way (killed, etcd lost) is started over by running it again.
    """
    root = prefix.rstrip("/")
    marker = f"{root}/{MIGRATING_KEY}"
    found = client.range(root + "/", prefix=True)
    if found and not any(kv.key == marker.encode() for kv in found):
        raise StorageError(f"etcd prefix {root}/ is not empty: migrate into a new prefix",
                           prefix=root)
    db = sqlite3.connect(f"file:{sqlite_path}?mode=ro", uri=True)
    try:
        tables, counts = _sqlite_tables(db)
    finally:
        db.close()
    meta, groups = _encode_metadata(tables), _encode_groups(tables)
    items = [(f"{root}/{METADATA_PREFIX}/{k}", v) for k, v in meta.items()]
    items += [(f"{root}/{GROUPS_PREFIX}/{k}", v) for k, v in groups.items()]
    if found:  # what an unfinished migration left: start over
        client.delete_prefix(root + "/")
    began = json.dumps({"source": str(sqlite_path), "started_ms": _now_ms()})
    if not client.txn([Compare.create_revision(marker, 0)], [Op.put(marker, began)]).succeeded:
        raise StorageError(f"another migration into {root}/ began meanwhile", prefix=root)
    for start in range(0, len(items), MIGRATION_BATCH):
        batch = items[start:start + MIGRATION_BATCH]
        result = client.txn(
            [Compare.create_revision(marker, 0, Result.GREATER),
             *(Compare.create_revision(k, 0) for k, _ in batch)],
            [Op.put(k, json.dumps(v, separators=(",", ":"))) for k, v in batch])
        if not result.succeeded:
            raise StorageError(f"etcd prefix {root}/ was written to during the migration",
                               prefix=root)
    client.txn([], [Op.delete(marker)])
    return counts


def unfinished_migration(client: EtcdClient, prefix: str) -> str | None:
    """What the marker of a migration into ``prefix`` that did not finish says."""
    found = client.get(f"{prefix.rstrip('/')}/{MIGRATING_KEY}")
    return None if found is None else found[0].decode(errors="replace")


_SELECTS: Final = {
    "meta": "SELECT key, value FROM meta",
    "topics": "SELECT * FROM topics", "partitions": "SELECT * FROM partitions",
    "spus": "SELECT * FROM spus", "sites": "SELECT * FROM sites",
    "mirrors": "SELECT * FROM mirrors", "acls": "SELECT * FROM acls",
    "tokens": "SELECT * FROM tokens", "groups": "SELECT * FROM groups",
    "group_offsets": "SELECT * FROM group_offsets",
}


def _sqlite_tables(db: sqlite3.Connection) -> tuple[dict[str, list[Any]], dict[str, int]]:
    present = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    rows = {t: db.execute(q).fetchall() if t in present else [] for t, q in _SELECTS.items()}
    decoded: dict[str, list[Any]] = {
        "meta": rows["meta"],
        "topics": [TopicRow(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5])
                   for r in rows["topics"]],
        "partitions": [PartitionRow(r[0], r[1], json.loads(r[2]), r[3], r[4], json.loads(r[5]))
                       for r in rows["partitions"]],
        "spus": [SpuRow(*r) for r in rows["spus"]], "sites": [SiteRow(*r) for r in rows["sites"]],
        "mirrors": [MirrorRow(*r) for r in rows["mirrors"]], "acls": rows["acls"],
        "tokens": [TokenRow(*r) for r in rows["tokens"]], "groups": rows["groups"],
        "group_offsets": [Position(*r) for r in rows["group_offsets"]],
    }
    return decoded, {t: len(v) for t, v in decoded.items()}


def _encode_metadata(t: dict[str, list[Any]]) -> Changes:
    out: Changes = {key("meta", k): v for k, v in t["meta"]}
    out.update({key("topics", r.name): r._asdict() for r in t["topics"]})
    chunks: dict[str, list[dict[str, Any]]] = {}
    for p in sorted(t["partitions"], key=lambda p: (p.topic, p.idx)):
        chunks.setdefault(key("partitions", p.topic, _chunk(p.idx)), []).append(p._asdict())
    out.update(chunks)
    out.update({key("spus", f"{r.id:010d}"): r._asdict() for r in t["spus"]})
    out.update({key("sites", r.name): r._asdict() for r in t["sites"]})
    out.update({_mirror_key(r): r._asdict() for r in t["mirrors"]})
    out.update({key("acls", *r): dict(zip(("principal", "operation", "resource"), r,
                                          strict=True)) for r in t["acls"]})
    out.update({key("tokens", r.sha256): r._asdict() for r in t["tokens"]})
    return out


def _encode_groups(t: dict[str, list[Any]]) -> Changes:
    out: Changes = {key("groups", name): {"name": name, "generation": gen, "updated_ms": ms}
                    for name, gen, ms in t["groups"]}
    for p in sorted(t["group_offsets"]):
        out.setdefault(key("group_offsets", p.group, p.topic, _chunk(p.partition)),
                       []).append(p._asdict())
    return out

"""The SC's metadata in SQLite (WAL, synchronous=FULL).

Only durable facts live here: topics, partitions (replicas, leader, ISR,
leader epoch), registered SPUs and counters. Liveness and health from
heartbeats are soft state in memory: writing them every second would wear a
Pi's SD card for nothing, and they are rebuilt within one heartbeat.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, NamedTuple

from edge.storage.fileio import DaemonLock

# Held (flock) by the SC that owns the data directory, for as long as it runs.
LOCK_FILE: Final = "sc.lock"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS topics (
    name TEXT PRIMARY KEY,
    partitions INTEGER NOT NULL,
    replication INTEGER NOT NULL,
    config TEXT NOT NULL,
    status TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS partitions (
    topic TEXT NOT NULL REFERENCES topics(name) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    replicas TEXT NOT NULL,
    leader INTEGER,
    epoch INTEGER NOT NULL,
    isr TEXT NOT NULL,
    PRIMARY KEY (topic, idx)
);
CREATE TABLE IF NOT EXISTS spus (
    id INTEGER PRIMARY KEY,
    public TEXT NOT NULL,
    private TEXT NOT NULL,
    rack TEXT,
    registered_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sites (
    name TEXT PRIMARY KEY,
    token_sha256 TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS mirrors (
    site TEXT NOT NULL REFERENCES sites(name) ON DELETE CASCADE,
    topic TEXT NOT NULL,
    edge_partition INTEGER NOT NULL,
    cloud_partition INTEGER NOT NULL,
    source TEXT NOT NULL,
    incarnation TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (site, topic, edge_partition),
    UNIQUE (topic, cloud_partition)
);
CREATE TABLE IF NOT EXISTS acls (
    principal TEXT NOT NULL,
    operation TEXT NOT NULL,
    resource TEXT NOT NULL,
    PRIMARY KEY (principal, operation, resource)
);
CREATE TABLE IF NOT EXISTS tokens (
    sha256 TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    principal TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    revoked_ms INTEGER
);
"""


class TopicRow(NamedTuple):
    name: str
    partitions: int
    replication: int
    config: dict[str, Any]
    status: str
    created_ms: int


class PartitionRow(NamedTuple):
    topic: str
    idx: int
    replicas: list[int]
    leader: int | None
    epoch: int
    isr: list[int]


class SpuRow(NamedTuple):
    id: int
    public: str
    private: str
    rack: str | None
    registered_ms: int


class SiteRow(NamedTuple):
    name: str
    token_sha256: str
    created_ms: int


class TokenRow(NamedTuple):
    """A token as the SC keeps it: never the token itself, only its digest."""

    sha256: str
    name: str
    kind: str
    principal: str
    created_ms: int
    revoked_ms: int | None


class MirrorRow(NamedTuple):
    """Where one (site, topic, edge partition) lives in the cloud."""

    site: str
    topic: str
    edge_partition: int
    cloud_partition: int
    source: str
    incarnation: str
    created_ms: int


class MetadataStore:
    """Durable SC metadata."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)
        if self.get_meta("cluster_id") is None:
            self.set_meta("cluster_id", uuid.uuid4().hex)
            self.set_meta("next_producer_id", "1")

    def close(self) -> None:
        self._db.close()

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    @property
    def generation(self) -> int:
        """How many write transactions this database has committed: it only grows, so
        an SPU that saw a higher one knows this copy is older (a restored backup)."""
        return int(self.get_meta("generation") or "0")

    def allocate_producer_ids(self, count: int = 1) -> int:
        """Reserve ``count`` ids; ids are never handed out twice, across restarts too."""
        with self._tx():
            first = int(self.get_meta("next_producer_id") or "1")
            self.set_meta("next_producer_id", str(first + count))
        return first

    def _tx(self) -> _Transaction:
        return _Transaction(self._db, counted=True)

    # topics ---------------------------------------------------------------

    def add_topic(self, topic: TopicRow, partitions: list[PartitionRow]) -> None:
        with self._tx():
            self._db.execute(
                "INSERT INTO topics VALUES (?, ?, ?, ?, ?, ?)",
                (topic.name, topic.partitions, topic.replication, json.dumps(topic.config),
                 topic.status, topic.created_ms))
            for p in partitions:
                self._put_partition(p)

    def place_topic(self, name: str, partitions: list[PartitionRow]) -> None:
        with self._tx():
            self._db.execute("UPDATE topics SET status='ready' WHERE name=?", (name,))
            for p in partitions:
                self._put_partition(p)

    def set_topic_config(self, name: str, config: dict[str, Any]) -> bool:
        """Replace a topic's settings; False if there is no such topic."""
        with self._tx():
            cur = self._db.execute("UPDATE topics SET config=? WHERE name=?",
                                   (json.dumps(config), name))
        return cur.rowcount > 0

    def delete_topic(self, name: str) -> bool:
        with self._tx():
            self._db.execute("DELETE FROM mirrors WHERE topic=?", (name,))
            cur = self._db.execute("DELETE FROM topics WHERE name=?", (name,))
        return cur.rowcount > 0

    def topics(self) -> list[TopicRow]:
        rows = self._db.execute("SELECT * FROM topics ORDER BY name").fetchall()
        return [TopicRow(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5]) for r in rows]

    def topic(self, name: str) -> TopicRow | None:
        r = self._db.execute("SELECT * FROM topics WHERE name=?", (name,)).fetchone()
        return None if r is None else TopicRow(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5])

    # partitions -----------------------------------------------------------

    def update_partition(self, p: PartitionRow) -> None:
        self.update_partitions([p])

    def update_partitions(self, rows: Sequence[PartitionRow]) -> None:
        """In one transaction: an election round for every partition an SPU led is
        one commit (one fsync), not one per partition."""
        with self._tx():
            for p in rows:
                self._put_partition(p)

    def _put_partition(self, p: PartitionRow) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO partitions VALUES (?, ?, ?, ?, ?, ?)",
            (p.topic, p.idx, json.dumps(p.replicas), p.leader, p.epoch, json.dumps(p.isr)))

    def partitions(self, topic: str | None = None) -> list[PartitionRow]:
        if topic is None:
            rows = self._db.execute("SELECT * FROM partitions ORDER BY topic, idx").fetchall()
        else:
            rows = self._db.execute(
                "SELECT * FROM partitions WHERE topic=? ORDER BY idx", (topic,)).fetchall()
        return [PartitionRow(r[0], r[1], json.loads(r[2]), r[3], r[4], json.loads(r[5]))
                for r in rows]

    # spus -----------------------------------------------------------------

    def upsert_spu(self, spu_id: int, public: str, private: str, rack: str | None) -> None:
        with self._tx():
            self._db.execute(
                "INSERT INTO spus VALUES (?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                "public=excluded.public, private=excluded.private, rack=excluded.rack",
                (spu_id, public, private, rack, int(time.time() * 1000)))

    def spus(self) -> list[SpuRow]:
        rows = self._db.execute("SELECT * FROM spus ORDER BY id").fetchall()
        return [SpuRow(*r) for r in rows]


    # sites and their mirror partitions --------------------------------------

    def add_site(self, site: SiteRow) -> bool:
        """False if the name is taken."""
        with self._tx():
            cur = self._db.execute("INSERT OR IGNORE INTO sites VALUES (?, ?, ?)", site)
        return cur.rowcount > 0

    def delete_site(self, name: str) -> bool:
        with self._tx():
            cur = self._db.execute("DELETE FROM sites WHERE name=?", (name,))
        return cur.rowcount > 0

    def add_acl(self, principal: str, operation: str, resource: str) -> bool:
        """False if the rule exists already."""
        with self._tx():
            cur = self._db.execute("INSERT OR IGNORE INTO acls VALUES (?, ?, ?)",
                                   (principal, operation, resource))
        return cur.rowcount > 0

    def remove_acl(self, principal: str, operation: str, resource: str) -> bool:
        with self._tx():
            cur = self._db.execute(
                "DELETE FROM acls WHERE principal=? AND operation=? AND resource=?",
                (principal, operation, resource))
        return cur.rowcount > 0

    def acls(self) -> list[tuple[str, str, str]]:
        return [(r[0], r[1], r[2]) for r in self._db.execute(
            "SELECT principal, operation, resource FROM acls "
            "ORDER BY principal, resource, operation").fetchall()]

    def add_token(self, row: TokenRow) -> None:
        with self._tx():
            self._db.execute("INSERT INTO tokens VALUES (?, ?, ?, ?, ?, ?)", row)

    def revoke_tokens(self, name: str, id_prefix: str, revoked_ms: int) -> int:
        """Revoke the live tokens of ``name`` whose digest starts with ``id_prefix``."""
        with self._tx():
            cur = self._db.execute(
                "UPDATE tokens SET revoked_ms=? WHERE name=? AND revoked_ms IS NULL "
                "AND substr(sha256, 1, ?)=?", (revoked_ms, name, len(id_prefix), id_prefix))
        return cur.rowcount

    def tokens(self) -> list[TokenRow]:
        return [TokenRow(*r) for r in self._db.execute(
            "SELECT * FROM tokens ORDER BY name, created_ms").fetchall()]

    def sites(self) -> list[SiteRow]:
        return [SiteRow(*r) for r in
                self._db.execute("SELECT * FROM sites ORDER BY name").fetchall()]

    def site(self, name: str) -> SiteRow | None:
        r = self._db.execute("SELECT * FROM sites WHERE name=?", (name,)).fetchone()
        return None if r is None else SiteRow(*r)

    def mirrors(self, site: str | None = None) -> list[MirrorRow]:
        rows = self._db.execute(
            "SELECT * FROM mirrors WHERE ? IS NULL OR site=? ORDER BY site, topic, "
            "edge_partition", (site, site)).fetchall()
        return [MirrorRow(*r) for r in rows]

    def add_mirror_partition(self, mirror: MirrorRow, partition: PartitionRow,
                             topic: TopicRow | None) -> None:
        """Record a site's new home partition: the topic (when new), one more
        partition of it, and the mapping, in one transaction."""
        with self._tx():
            if topic is not None:
                self._db.execute(
                    "INSERT INTO topics VALUES (?, ?, ?, ?, ?, ?)",
                    (topic.name, 0, topic.replication, json.dumps(topic.config),
                     topic.status, topic.created_ms))
            self._db.execute("UPDATE topics SET partitions=partitions+1 WHERE name=?",
                             (partition.topic,))
            self._put_partition(partition)
            self._db.execute("INSERT INTO mirrors VALUES (?, ?, ?, ?, ?, ?, ?)", mirror)


_BUMP_GENERATION: Final = (
    "INSERT INTO meta(key, value) VALUES ('generation', '1') ON CONFLICT(key) "
    "DO UPDATE SET value = CAST(value AS INTEGER) + 1")


class DataDirLock(DaemonLock):
    """The exclusive ``flock`` of ``sc.lock`` in an SC's data directory, with the
    holder's PID written in it."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir, LOCK_FILE, "SC")


class _Transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on error); with ``counted``,
    each committed write also counts up the metadata store's ``generation``."""

    def __init__(self, db: sqlite3.Connection, *, counted: bool = False) -> None:
        self._db = db
        self._counted = counted

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if self._counted and not exc_type:
            self._db.execute(_BUMP_GENERATION)
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")

"""Durable consumer positions: one row per (consumer, topic, partition).

Stored in SQLite with the write-ahead log and ``synchronous=FULL``: a commit
returns only after the WAL is fsynced, so a committed offset survives power
loss. Schema::

    CREATE TABLE consumer_offsets (
        consumer   TEXT    NOT NULL,   -- consumer name chosen by the client
        topic      TEXT    NOT NULL,
        partition  INTEGER NOT NULL,   -- >= 0
        offset     INTEGER NOT NULL,   -- next offset the consumer will read, >= 0
        updated_ms INTEGER NOT NULL,   -- wall clock of the last commit, ms since the epoch
        PRIMARY KEY (consumer, topic, partition)
    ) WITHOUT ROWID

Calls block for an fsync; the SPU runs them in a worker thread. A lock makes
one instance safe to share between threads.
"""

from __future__ import annotations

import builtins
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Final

from edge.protocol.errors import StorageError

# A name is a label, not a payload: bounded so a client cannot bloat the database.
MAX_NAME_BYTES: Final = 255
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS consumer_offsets (
    consumer   TEXT    NOT NULL,
    topic      TEXT    NOT NULL,
    partition  INTEGER NOT NULL,
    offset     INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (consumer, topic, partition)
) WITHOUT ROWID
"""
_UPSERT: Final = """
INSERT INTO consumer_offsets (consumer, topic, partition, offset, updated_ms)
VALUES (?, ?, ?, ?, ?)
ON CONFLICT (consumer, topic, partition)
DO UPDATE SET offset = excluded.offset, updated_ms = excluded.updated_ms
"""

OffsetRow = tuple[str, str, int, int, int]


def _check_name(kind: str, name: str) -> None:
    if not name or len(name.encode()) > MAX_NAME_BYTES:
        raise ValueError(f"{kind} name must be 1..{MAX_NAME_BYTES} bytes, got {name!r}")


class ConsumerOffsets:
    """Committed consumer offsets, durable when ``commit`` returns."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        """Use ``ConsumerOffsets.open``."""
        self._conn = conn
        self._path = path
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: Path) -> ConsumerOffsets:
        """Open or create the database at ``path`` (its directory must exist)."""
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(_SCHEMA)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open offsets {path}: {exc}", path=str(path)) from exc
        return cls(conn, path)

    def commit(self, consumer: str, topic: str, partition: int, offset: int) -> None:
        """Store ``offset`` as the consumer's position; durable on return."""
        _check_name("consumer", consumer)
        _check_name("topic", topic)
        if partition < 0 or offset < 0:
            raise ValueError(f"partition {partition} and offset {offset} must be >= 0")
        now = time.time_ns() // 1_000_000
        self._execute(_UPSERT, (consumer, topic, partition, offset, now))

    def fetch(self, consumer: str, topic: str, partition: int) -> int | None:
        """The committed offset, or None when the consumer never committed one."""
        rows = self._execute(
            "SELECT offset FROM consumer_offsets"
            " WHERE consumer = ? AND topic = ? AND partition = ?",
            (consumer, topic, partition),
        )
        return int(rows[0][0]) if rows else None

    def list(self) -> builtins.list[OffsetRow]:
        """Every ``(consumer, topic, partition, offset, updated_ms)``, sorted."""
        rows = self._execute(
            "SELECT consumer, topic, partition, offset, updated_ms FROM consumer_offsets"
            " ORDER BY consumer, topic, partition",
            (),
        )
        return [(str(c), str(t), int(p), int(o), int(u)) for c, t, p, o, u in rows]

    def delete_topic(self, topic: str) -> int:
        """Forget every position in ``topic`` (it was deleted); returns rows removed."""
        with self._lock:
            try:
                cur = self._conn.execute("DELETE FROM consumer_offsets WHERE topic = ?", (topic,))
            except sqlite3.Error as exc:
                raise StorageError(f"offsets {self._path}: {exc}") from exc
            return cur.rowcount

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _execute(
        self, sql: str, params: tuple[object, ...]
    ) -> builtins.list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StorageError(f"offsets {self._path}: {exc}", path=str(self._path)) from exc

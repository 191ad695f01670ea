"""Durable consumer-group facts in the SC's SQLite database (WAL, synchronous=FULL).

Committed positions have the shape of the SPUs' named-consumer positions
(``edge/storage/offsets.py``), plus the generation whose member stored them;
each group's last generation is kept so generations never repeat, across SC
restarts too. Membership is soft state in memory, like SPU liveness: members
re-join within one session after an SC restart. Schema::

    CREATE TABLE groups (
        name       TEXT PRIMARY KEY,
        generation INTEGER NOT NULL,   -- the last generation handed out
        updated_ms INTEGER NOT NULL
    );
    CREATE TABLE group_offsets (
        grp        TEXT    NOT NULL,   -- group name
        topic      TEXT    NOT NULL,
        partition  INTEGER NOT NULL,
        offset     INTEGER NOT NULL,   -- next offset the group reads, >= 0
        generation INTEGER NOT NULL,   -- of the commit; -1 for an operator's reset
        updated_ms INTEGER NOT NULL,
        PRIMARY KEY (grp, topic, partition)
    ) WITHOUT ROWID;

A commit returns only after SQLite's WAL is fsynced: a position the SC
acknowledged survives power loss.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Final, NamedTuple

from edge.sc.store import _Transaction

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS groups (
    name TEXT PRIMARY KEY,
    generation INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS group_offsets (
    grp TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    generation INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (grp, topic, partition)
) WITHOUT ROWID;
"""
_UPSERT: Final = """
INSERT INTO group_offsets (grp, topic, partition, offset, generation, updated_ms)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (grp, topic, partition)
DO UPDATE SET offset = excluded.offset, generation = excluded.generation,
              updated_ms = excluded.updated_ms
"""
RESET_GENERATION: Final = -1


class Position(NamedTuple):
    group: str
    topic: str
    partition: int
    offset: int
    generation: int
    updated_ms: int


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class GroupStore:
    """Group generations and committed positions."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(str(path), isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def generation(self, group: str) -> int:
        row = self._db.execute("SELECT generation FROM groups WHERE name=?", (group,)).fetchone()
        return 0 if row is None else int(row[0])

    def set_generation(self, group: str, generation: int) -> None:
        self._db.execute(
            "INSERT INTO groups VALUES (?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
            "generation=excluded.generation, updated_ms=excluded.updated_ms",
            (group, generation, _now_ms()))

    def commit(self, group: str, topic: str, offsets: Mapping[int, int],
               generation: int) -> None:
        """Store every position of ``offsets`` in one transaction; durable on return."""
        now = _now_ms()
        with self._tx():
            self._db.executemany(_UPSERT, [(group, topic, p, o, generation, now)
                                           for p, o in offsets.items()])

    def positions(self, group: str | None = None, topic: str | None = None
                  ) -> list[Position]:
        rows = self._db.execute(
            "SELECT * FROM group_offsets WHERE (? IS NULL OR grp=?) AND (? IS NULL OR topic=?)"
            " ORDER BY grp, topic, partition", (group, group, topic, topic)).fetchall()
        return [Position(*r) for r in rows]

    def groups(self) -> list[str]:
        """Every group with a generation or a stored position."""
        rows = self._db.execute(
            "SELECT name FROM groups UNION SELECT grp FROM group_offsets ORDER BY 1").fetchall()
        return [str(r[0]) for r in rows]

    def delete(self, group: str) -> int | None:
        """Forget a group; the number of positions removed, None if it was unknown."""
        with self._tx():
            known = self._db.execute("DELETE FROM groups WHERE name=?", (group,)).rowcount
            removed = self._db.execute("DELETE FROM group_offsets WHERE grp=?",
                                       (group,)).rowcount
        return removed if known or removed else None

    def forget_topics_except(self, topics: Iterable[str]) -> int:
        """Drop the positions in topics that no longer exist; returns rows removed."""
        keep = set(topics)
        stored = {str(r[0]) for r in
                  self._db.execute("SELECT DISTINCT topic FROM group_offsets").fetchall()}
        gone = sorted(stored - keep)
        if not gone:
            return 0
        with self._tx():
            return sum(self._db.execute("DELETE FROM group_offsets WHERE topic=?",
                                        (t,)).rowcount for t in gone)

    def _tx(self) -> _Transaction:
        return _Transaction(self._db)


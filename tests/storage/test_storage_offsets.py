"""ConsumerOffsets: durable positions per consumer, topic and partition."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from edge.storage.offsets import ConsumerOffsets


def test_commit_fetch_list_delete(tmp_path: Path) -> None:
    store = ConsumerOffsets.open(tmp_path / "offsets.db")
    assert store.fetch("c1", "t", 0) is None
    before = time.time_ns() // 1_000_000
    store.commit("c1", "t", 0, 10)
    store.commit("c1", "t", 0, 12)  # overwrites
    store.commit("c1", "t", 1, 5)
    store.commit("c2", "u", 0, 7)
    assert store.fetch("c1", "t", 0) == 12
    rows = store.list()
    assert [r[:4] for r in rows] == [("c1", "t", 0, 12), ("c1", "t", 1, 5), ("c2", "u", 0, 7)]
    assert all(r[4] >= before for r in rows)
    assert store.delete_topic("t") == 2
    assert [r[:4] for r in store.list()] == [("c2", "u", 0, 7)]
    store.close()


def test_offsets_survive_reopen_and_are_in_wal_full_sync(tmp_path: Path) -> None:
    path = tmp_path / "offsets.db"
    store = ConsumerOffsets.open(path)
    store.commit("dashboard", "sensors", 3, 12345)
    store.close()
    store = ConsumerOffsets.open(path)
    assert store.fetch("dashboard", "sensors", 3) == 12345
    store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_committed_offset_is_visible_to_another_connection_at_once(tmp_path: Path) -> None:
    path = tmp_path / "offsets.db"
    store = ConsumerOffsets.open(path)
    store.commit("c", "t", 0, 99)
    other = sqlite3.connect(path)  # no close, no checkpoint: the commit is already durable
    assert other.execute("SELECT offset FROM consumer_offsets").fetchall() == [(99,)]
    other.close()
    store.close()


@pytest.mark.parametrize(
    ("consumer", "topic", "partition", "offset"),
    [
        ("", "t", 0, 0),
        ("c", "", 0, 0),
        ("c" * 300, "t", 0, 0),
        ("c", "t", -1, 0),
        ("c", "t", 0, -5),
    ],
)
def test_bad_commits_are_rejected(
    tmp_path: Path, consumer: str, topic: str, partition: int, offset: int
) -> None:
    store = ConsumerOffsets.open(tmp_path / "offsets.db")
    with pytest.raises(ValueError):
        store.commit(consumer, topic, partition, offset)
    store.close()

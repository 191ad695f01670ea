"""``headwater sc backup`` and ``headwater sc restore`` against a real SC and SPU.

A backup is taken while the SC runs and a writer keeps creating topics; the SC
is stopped, its database destroyed and the backup restored; the SC started
again serves the backup's topics, site, ACL and group positions, the SPU
registers again and records flow. Restore refuses a running SC, and both
commands refuse what is not an SC database or would overwrite a backup.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from edge.client import Admin, Consumer, Offset, Producer
from edge.net.connection import ClientConnection
from edge.protocol.messages import ApiKey
from edge.sc.store import MetadataStore
from edge.testing import LocalCluster

HW = [sys.executable, "-m", "edge.cli.main"]
MARGIN = 2**32  # edge.sc.backup.PRODUCER_ID_MARGIN, restated: the test pins the contract


async def hw(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *HW, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def one_line_error(rc: int, err: str, *expected: str) -> None:
    assert rc != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for text in expected:
        assert text in lines[0], err


def backup_rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return conn.execute(sql).fetchall()


async def producer_id(cluster: LocalCluster) -> int:
    conn = await ClientConnection(cluster.sc_addr).connect()
    try:
        meta, _ = await conn.request(ApiKey.INIT_PRODUCER_ID)
        return int(meta["producer_id"])
    finally:
        await conn.close()


async def produce(cluster: LocalCluster, topic: str, values: list[bytes]) -> None:
    async with Producer(cluster.sc_addr) as p:
        for v in values:
            await (await p.send(topic, v))


async def consume_all(cluster: LocalCluster, topic: str) -> list[bytes]:
    async with Consumer(cluster.sc_addr, topic, offset=Offset.beginning()) as c:
        return [r.value for r in await c.fetch_until_end()]


async def group_offsets(admin: Admin, group: str) -> dict[int, int | None]:
    (row,) = await admin.list_groups(group)
    return {p.partition: p.offset for p in row.partitions}


async def commit_group(cluster: LocalCluster, topic: str, group: str, count: int
                       ) -> dict[int, int]:
    async with Consumer(cluster.sc_addr, topic, group=group, offset=Offset.beginning(),
                        session_timeout_s=2.0) as c, asyncio.timeout(20):
        handed = 0
        async for _ in c:
            handed += 1
            if handed == count:
                break
        return await c.commit()


@contextlib.asynccontextmanager
async def topic_writer(admin: Admin) -> AsyncIterator[list[str]]:
    """Create topics live-0, live-1, ... one after the other until the block ends;
    yields the names whose creation was acknowledged."""
    created: list[str] = []

    async def write() -> None:
        while True:
            name = f"live-{len(created)}"
            await admin.create_topic(name, partitions=2)
            created.append(name)

    task = asyncio.create_task(write(), name="topic-writer")
    try:
        yield created
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_backup_under_writes_then_restore_over_a_destroyed_database(
        cluster: LocalCluster, tmp_path: Path) -> None:
    sc_dir = cluster.data_dir / "sc"
    out = tmp_path / "backup"
    async with Admin(cluster.sc_addr) as admin:
        for i in range(3):
            await admin.create_topic(f"before-{i}", partitions=2)
        await admin.create_topic("orders", partitions=2)
        await admin.wait_ready("orders")
        await admin.add_acl("alice", "produce", "topic:orders")
        rc, _, err = await hw("--sc", cluster.sc_addr, "site", "register", "kitchen",
                              "--export", str(tmp_path / "kitchen.toml"))
        assert rc == 0, err
        await produce(cluster, "orders", [f"r{i}".encode() for i in range(40)])
        committed = await commit_group(cluster, "orders", "billing", 15)
        assert sum(committed.values()) == 15
        first_pid = await producer_id(cluster)

        async with topic_writer(admin) as created:
            while len(created) < 3:
                await asyncio.sleep(0.01)
            during = len(created)
            rc, text, err = await hw("sc", "backup", "--data-dir", str(sc_dir), str(out))
            assert rc == 0, err
            while len(created) < during + 3:  # the SC kept creating topics past the backup
                await asyncio.sleep(0.01)
        assert str(out) in text

        # What the backup holds: every topic acknowledged before it began, a prefix of
        # the writer's topics, each with all of its partition rows (one snapshot).
        db = out / "metadata.sqlite"
        assert backup_rows(db, "PRAGMA integrity_check") == [("ok",)]
        assert not Path(f"{db}-wal").exists()
        names = {r[0] for r in backup_rows(db, "SELECT name FROM topics")}
        live = sorted((n for n in names if n.startswith("live-")),
                      key=lambda n: int(n.split("-")[1]))
        assert live == [f"live-{i}" for i in range(len(live))]
        assert during <= len(live) < len(created)
        assert {"before-0", "before-1", "before-2", "orders"} <= names
        parts = dict(backup_rows(db, "SELECT topic, count(*) FROM partitions GROUP BY topic"))
        assert all(parts[n] == 2 for n in names)
        manifest = json.loads((out / "MANIFEST.json").read_text())
        assert manifest["counts"]["topics"] == len(names)
        assert (manifest["counts"]["sites"], manifest["counts"]["acls"]) == (1, 1)
        assert manifest["counts"]["group_offsets"] == len(committed)
        assert f"{len(names)} topic(s)" in text

        # After the backup: a topic with data, more group progress, another site.
        await admin.create_topic("after", partitions=1)
        await admin.wait_ready("after")
        await produce(cluster, "after", [b"lost-with-the-restore"])  # set aside below
        later = await commit_group(cluster, "orders", "billing", 10)
        assert sum(later.values()) == 25
        rc, _, err = await hw("--sc", cluster.sc_addr, "site", "register", "garden")
        assert rc == 0, err

    after_dir = cluster.data_dir / "spu-1" / "partitions" / "after-0"
    assert after_dir.is_dir()
    assert await cluster.stop_sc() == 0
    damaged = b"not a database any more " * 100
    (sc_dir / "metadata.sqlite").write_bytes(damaged)

    rc, text, err = await hw("sc", "restore", "--data-dir", str(sc_dir), str(out))
    assert rc == 0, err
    assert f"{len(names)} topic(s)" in text
    (aside,) = sc_dir.glob("before-restore-*")
    assert (aside / "metadata.sqlite").read_bytes() == damaged

    await cluster.start_sc()
    await cluster.wait_spu_online(1)
    async with Admin(cluster.sc_addr) as admin:
        assert {t["name"] for t in await admin.list_topics()} == names
        assert [s["name"] for s in await admin.list_sites()] == ["kitchen"]
        _, acls = await admin.list_acls()
        assert acls == [{"principal": "alice", "operation": "produce",
                         "resource": "topic:orders"}]
        assert await group_offsets(admin, "billing") == committed
        spus = await admin.list_spus()
        assert [(s["id"], s["online"]) for s in spus] == [(1, True)]
        await admin.wait_ready("orders")
    # The SPU keeps the data of the backup's topics and serves it again.
    await produce(cluster, "orders", [b"after-restore"])
    values = await consume_all(cluster, "orders")
    assert sorted(values) == sorted([f"r{i}".encode() for i in range(40)] + [b"after-restore"])
    # A topic the restored SC does not know may be newer than the backup: the SPU
    # sets its data aside (not served, not deleted) instead of deleting it.
    async with asyncio.timeout(10):
        while after_dir.exists():
            await asyncio.sleep(0.05)
    (kept,) = after_dir.parent.glob("after-0.set-aside-*")
    assert any(kept.iterdir())
    assert b"lost-with-the-restore" in b"".join(
        f.read_bytes() for f in kept.iterdir() if f.is_file())
    # Producer ids handed out before the restore are not handed out again.
    assert await producer_id(cluster) >= first_pid + MARGIN


async def test_restore_is_refused_while_the_sc_runs(cluster: LocalCluster,
                                                    tmp_path: Path) -> None:
    sc_dir = cluster.data_dir / "sc"
    async with Admin(cluster.sc_addr) as admin:
        await admin.create_topic("kept", partitions=1)
    rc, _, err = await hw("sc", "backup", "--data-dir", str(sc_dir), str(tmp_path / "b"))
    assert rc == 0, err
    rc, _, err = await hw("sc", "restore", "--data-dir", str(sc_dir), str(tmp_path / "b"))
    one_line_error(rc, err, "is running", "stop it")
    assert not list(sc_dir.glob("before-restore-*"))
    assert not list(sc_dir.glob(".metadata.sqlite.restore-*"))
    async with Admin(cluster.sc_addr) as admin:  # the SC was not disturbed
        await admin.create_topic("still-works", partitions=1)
        assert {t["name"] for t in await admin.list_topics()} == {"kept", "still-works"}


async def test_backup_refuses_an_existing_out_unless_forced(cluster: LocalCluster,
                                                            tmp_path: Path) -> None:
    sc_dir = cluster.data_dir / "sc"
    out = tmp_path / "b"
    rc, _, err = await hw("sc", "backup", "--data-dir", str(sc_dir), str(out))
    assert rc == 0, err
    first = (out / "MANIFEST.json").read_bytes()
    async with Admin(cluster.sc_addr) as admin:
        await admin.create_topic("newer", partitions=1)
    rc, _, err = await hw("sc", "backup", "--data-dir", str(sc_dir), str(out))
    one_line_error(rc, err, "exists", "--force")
    assert (out / "MANIFEST.json").read_bytes() == first
    rc, _, err = await hw("sc", "backup", "--force", "--data-dir", str(sc_dir), str(out))
    assert rc == 0, err
    assert backup_rows(out / "metadata.sqlite", "SELECT name FROM topics") == [("newer",)]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".b.")] == []


def sc_database(directory: Path) -> Path:
    """A real SC database, made by the SC's own store."""
    directory.mkdir(parents=True)
    store = MetadataStore(directory / "metadata.sqlite")
    store.close()
    return directory


async def test_what_is_not_an_sc_database_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    with contextlib.closing(sqlite3.connect(other / "metadata.sqlite")) as conn:
        conn.execute("CREATE TABLE readings (x)")
        conn.commit()
    rc, _, err = await hw("sc", "backup", "--data-dir", str(other), str(tmp_path / "b1"))
    one_line_error(rc, err, "not a Headwater SC database")
    assert not (tmp_path / "b1").exists()

    text = tmp_path / "text"
    text.mkdir()
    (text / "metadata.sqlite").write_text("hello\n" * 1000)
    rc, _, err = await hw("sc", "backup", "--data-dir", str(text), str(tmp_path / "b2"))
    one_line_error(rc, err, "not an SQLite database")

    rc, _, err = await hw("sc", "backup", "--data-dir", str(tmp_path / "nowhere"),
                          str(tmp_path / "b3"))
    one_line_error(rc, err, "not a directory")
    rc, _, err = await hw("sc", "backup", str(tmp_path / "b3"))
    one_line_error(rc, err, "--data-dir")
    assert rc == 2

    target = sc_database(tmp_path / "target")
    before = (target / "metadata.sqlite").read_bytes()
    for bad, expected in ((other / "metadata.sqlite", "not a Headwater SC database"),
                          (text / "metadata.sqlite", "not an SQLite database"),
                          (other, "no MANIFEST.json"),
                          (tmp_path / "missing", "does not exist")):
        rc, _, err = await hw("sc", "restore", "--data-dir", str(target), str(bad))
        one_line_error(rc, err, expected)
    assert (target / "metadata.sqlite").read_bytes() == before
    assert not list(target.glob("before-restore-*"))


async def test_a_changed_backup_file_is_refused(tmp_path: Path) -> None:
    source = sc_database(tmp_path / "sc")
    rc, _, err = await hw("sc", "backup", "--data-dir", str(source), str(tmp_path / "b"))
    assert rc == 0, err
    db = tmp_path / "b" / "metadata.sqlite"
    data = bytearray(db.read_bytes())
    data[-1] ^= 0xFF
    db.write_bytes(bytes(data))
    rc, _, err = await hw("sc", "restore", "--data-dir", str(tmp_path / "new"),
                          str(tmp_path / "b"))
    one_line_error(rc, err, "does not match MANIFEST.json")
    assert not (tmp_path / "new" / "metadata.sqlite").exists()


async def test_restore_of_another_clusters_backup_needs_force(tmp_path: Path) -> None:
    one, two = sc_database(tmp_path / "one"), sc_database(tmp_path / "two")
    rc, _, err = await hw("sc", "backup", "--data-dir", str(one), str(tmp_path / "b"))
    assert rc == 0, err
    rc, _, err = await hw("sc", "restore", "--data-dir", str(two), str(tmp_path / "b"))
    one_line_error(rc, err, "belongs to cluster", "--force")
    rc, _, err = await hw("sc", "restore", "--force", "--data-dir", str(two),
                          str(tmp_path / "b"))
    assert rc == 0, err
    cluster_id = "SELECT value FROM meta WHERE key='cluster_id'"
    assert (backup_rows(two / "metadata.sqlite", cluster_id)
            == backup_rows(one / "metadata.sqlite", cluster_id))


async def test_an_sc_restarted_on_its_own_database_still_deletes(cluster: LocalCluster
                                                                 ) -> None:
    """Setting data aside is for an SC on an older copy only: after a plain SC restart
    (its in-memory version starts again at 0), a deleted topic's data is deleted."""
    async with Admin(cluster.sc_addr) as admin:
        await admin.create_topic("gone", partitions=1)
        await admin.wait_ready("gone")
    await produce(cluster, "gone", [b"x"])
    part = cluster.data_dir / "spu-1" / "partitions" / "gone-0"
    assert part.is_dir()
    assert await cluster.stop_sc() == 0
    await cluster.start_sc()
    await cluster.wait_spu_online(1)
    async with Admin(cluster.sc_addr) as admin:
        await admin.delete_topic("gone")
    async with asyncio.timeout(10):
        while part.exists():
            await asyncio.sleep(0.05)
    assert not list(part.parent.glob("gone-0.set-aside-*"))

"""``headwater sc migrate``: an SQLite SC's metadata copied into etcd, and an SC on
etcd taking over from it with the same SPU, as OPERATIONS.md tells an operator to.

A cluster runs on SQLite with a topic of records, a consumer group's committed
positions, a site and an ACL. The migration is refused while the SC runs; once it
is stopped the metadata is copied, a second copy into the same prefix is refused,
and an SC on etcd started on the old SC's ports keeps the cluster id, serves the
topic, the positions, the site and the ACL, takes the running SPU back and
accepts new topics and records."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest
from etcd_harness import EtcdCluster

from edge.client import Acks, Admin, Consumer, Offset, Producer
from edge.net.connection import ClientConnection
from edge.sc import etcd_store
from edge.sc.etcd import EtcdClient, MetadataUnavailable
from edge.sc.etcd_store import (
    EtcdGroupStore,
    EtcdMetadataStore,
    migrate_from_sqlite,
    unfinished_migration,
)
from edge.sc.group_store import GroupStore
from edge.sc.store import MetadataStore
from edge.secret import ClusterSecret
from edge.testing import HaCluster, LocalCluster

HW = [sys.executable, "-m", "edge.cli.main"]


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
    for text in expected:
        assert text in lines[0], err


async def cluster_id(addr: str) -> str | None:
    conn = await ClientConnection(addr).connect()
    try:
        return conn.cluster
    finally:
        await conn.close()


async def test_an_sqlite_sc_migrated_to_etcd_keeps_its_cluster(
        tmp_path: Path, etcd_cluster: EtcdCluster, etcd_prefix: str) -> None:
    cluster = LocalCluster(tmp_path, spus=1)
    await cluster.start()
    etcd_url = "etcd://" + ",".join(etcd_cluster.endpoints)
    sc_dir = tmp_path / "sc"
    ha: HaCluster | None = None
    try:
        async with Admin(cluster.sc_addr) as admin:
            await admin.create_topic("t", partitions=2, replication=1)
            await admin.wait_ready("t")
            await admin.register_site("north")
            await admin.add_acl("user:ada", "consume", "topic:t")
        async with Producer(cluster.sc_addr, acks=Acks.ALL) as p:
            for i in range(20):
                await (await p.send("t", f"r{i}".encode(), partition=i % 2))
        async with Consumer(cluster.sc_addr, "t", group="g", offset=Offset.beginning()) as c:
            seen = 0
            async for _ in c:
                seen += 1
                if seen == 7:
                    break
            committed = await c.commit()
        assert sum(committed.values()) == 7
        before = await cluster_id(cluster.sc_addr)

        rc, _, err = await hw("sc", "migrate", "--to", etcd_url, "--data-dir", str(sc_dir),
                              "--prefix", etcd_prefix)
        one_line_error(rc, err, "SC")  # the SC still runs on that directory

        await cluster.stop_sc()
        rc, out, err = await hw("sc", "migrate", "--to", etcd_url, "--data-dir", str(sc_dir),
                                "--prefix", etcd_prefix)
        assert rc == 0, err
        for copied in ("1 topics", "2 partitions", "1 sites", "1 acls"):
            assert copied in out, out

        # What etcd holds is what SQLite held, table by table.
        sqlite, groups = MetadataStore(sc_dir / "metadata.sqlite"), GroupStore(
            sc_dir / "metadata.sqlite")
        client = etcd_cluster.client()
        on_etcd = EtcdMetadataStore(client, prefix=f"{etcd_prefix}/meta", fence=None)
        etcd_groups = EtcdGroupStore(client, prefix=f"{etcd_prefix}/groups", fence=None)
        try:
            assert on_etcd.get_meta("cluster_id") == sqlite.get_meta("cluster_id") == before
            assert on_etcd.topics() == sqlite.topics()
            assert on_etcd.partitions() == sqlite.partitions()
            assert on_etcd.spus() == sqlite.spus()
            assert on_etcd.sites() == sqlite.sites()
            assert on_etcd.acls() == sqlite.acls()
            assert on_etcd.generation == sqlite.generation
            assert etcd_groups.positions("g") == groups.positions("g")
        finally:
            sqlite.close()
            groups.close()

        rc, _, err = await hw("sc", "migrate", "--to", etcd_url, "--data-dir", str(sc_dir),
                              "--prefix", etcd_prefix)
        one_line_error(rc, err, "not empty")

        # An SC on etcd on the old SC's ports: the SPU, still running, dials it.
        ha = HaCluster(tmp_path, etcd=etcd_cluster.endpoints, prefix=etcd_prefix, spus=0,
                       sc_ports=[(cluster.sc_port, cluster.sc_private_port)])
        await ha.start_sc()
        await ha.wait_spu_online(1)
        assert await cluster_id(cluster.sc_addr) == before
        async with Admin(cluster.sc_addr) as admin:
            assert [t["name"] for t in await admin.list_topics()] == ["t"]
            assert [s["name"] for s in await admin.list_sites()] == ["north"]
            _, rules = await admin.list_acls()
            assert {"principal": "user:ada", "operation": "consume",
                    "resource": "topic:t"} in rules
            (row,) = await admin.list_groups("g")
            assert {p.partition: p.offset for p in row.partitions} == committed
            await admin.create_topic("after", partitions=1, replication=1)
            await admin.wait_ready("after")
        async with Producer(cluster.sc_addr, acks=Acks.ALL) as p:
            await (await p.send("after", b"on etcd"))
            await (await p.send("t", b"r20", partition=0))
        async with Consumer(cluster.sc_addr, "t", offset=Offset.beginning(),
                            stop_at_end=True) as c:
            values = sorted(r.value for r in [r async for r in c])
        assert values == sorted([f"r{i}".encode() for i in range(21)])
        async with Consumer(cluster.sc_addr, "after", offset=Offset.beginning(),
                            stop_at_end=True) as c:
            assert [r.value async for r in c] == [b"on etcd"]
    finally:
        if ha is not None:
            await ha.stop_sc()
        await cluster.stop()


class _CutAfter:
    """An etcd client whose txns fail after ``txns`` of them: a migration killed, or
    etcd lost, half-way through."""

    def __init__(self, client: EtcdClient, txns: int) -> None:
        self._client, self._left = client, txns

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def txn(self, *args: Any, **kwargs: Any) -> Any:
        if self._left == 0:
            raise MetadataUnavailable("etcd went away")
        self._left -= 1
        return self._client.txn(*args, **kwargs)


async def test_a_migration_that_stopped_half_way_blocks_the_sc_until_run_again(
        tmp_path: Path, etcd_cluster: EtcdCluster, etcd_prefix: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = LocalCluster(tmp_path, spus=0)
    await cluster.start()
    async with Admin(cluster.sc_addr) as admin:
        for name in ("a", "b", "c"):
            await admin.create_topic(name, partitions=1, replication=1)
    await cluster.stop()
    sc_dir = tmp_path / "sc"
    etcd_url = "etcd://" + ",".join(etcd_cluster.endpoints)

    # The marker and two batches of two keys go in, then etcd is gone.
    monkeypatch.setattr(etcd_store, "MIGRATION_BATCH", 2)
    with pytest.raises(MetadataUnavailable):
        migrate_from_sqlite(sc_dir / "metadata.sqlite", _CutAfter(etcd_cluster.client(), 3),
                            etcd_prefix)
    client = etcd_cluster.client()
    assert len(client.range(etcd_prefix + "/", prefix=True)) == 5
    assert unfinished_migration(client, etcd_prefix) is not None

    ha = HaCluster(tmp_path / "ha", etcd=etcd_cluster.endpoints, prefix=etcd_prefix, scs=1,
                   spus=0)
    ClusterSecret.ensure(ha.secret_path)
    try:
        await ha.start_sc_number(0)
        await asyncio.sleep(3 * ha.ttl_s)  # several campaigns: each one refuses
        assert await ha.active() is None
        log_text = (ha.data_dir / "sc-0.log").read_text()
        refusals = [line for line in log_text.splitlines() if "did not finish" in line]
        assert len(refusals) == 1, log_text  # logged once, not per campaign
        assert "run `headwater sc migrate` again" in refusals[0]
        assert "Traceback" not in log_text

        rc, out, err = await hw("sc", "migrate", "--to", etcd_url, "--data-dir", str(sc_dir),
                                "--prefix", etcd_prefix)
        assert rc == 0, err
        assert "3 topics" in out, out
        assert unfinished_migration(client, etcd_prefix) is None
        await ha.wait_active(timeout=10 * ha.ttl_s)
        async with Admin(ha.sc_addr) as admin:
            assert sorted(t["name"] for t in await admin.list_topics()) == ["a", "b", "c"]
    finally:
        await ha.stop_sc()

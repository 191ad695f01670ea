"""A standby SC's warm copy of the metadata (edge/sc/warm.py) on a real 3-member
etcd: it follows every kind of write the active SC makes, is handed over only when
it can show it holds everything up to a revision, loads again when its watch ends,
and an SC that takes over on etcd starts from it."""

from __future__ import annotations

import time
from pathlib import Path

from etcd_harness import EtcdCluster

from edge.sc.etcd import Compare, EtcdClient
from edge.sc.etcd_store import EtcdGroupStore, EtcdMetadataStore
from edge.sc.store import MirrorRow, PartitionRow, SiteRow, TokenRow, TopicRow
from edge.sc.warm import WarmCopy
from edge.testing import HaCluster


def never(prefix: str) -> Compare:
    return Compare.create_revision(f"{prefix}/sc/leader", -1)


def active_stores(client: EtcdClient, prefix: str) -> tuple[EtcdMetadataStore, EtcdGroupStore]:
    return (EtcdMetadataStore(client, prefix=f"{prefix}/meta", fence=None),
            EtcdGroupStore(client, prefix=f"{prefix}/groups", fence=None))


def every_kind_of_write(meta: EtcdMetadataStore, groups: EtcdGroupStore, round_: int) -> None:
    """Topics created, placed, altered and deleted, partition moves, SPUs, sites,
    mirrors, ACLs, tokens and group positions: what an active SC writes."""
    t = f"t{round_}"
    meta.add_topic(TopicRow(t, 70, 3, {}, "creating", round_),  # two partition keys
                   [PartitionRow(t, i, [1, 2, 3], None, 0, []) for i in range(70)])
    meta.place_topic(t, [PartitionRow(t, i, [1, 2, 3], 1, 1, [1, 2, 3]) for i in range(70)])
    meta.update_partition(PartitionRow(t, 65, [1, 2, 3], 2, 2, [2, 3]))
    meta.set_topic_config(t, {"retention_ms": 1000 + round_})
    meta.upsert_spu(round_ + 1, f"h{round_}:9005", f"h{round_}:9006", None)
    meta.add_site(SiteRow(f"site{round_}", "digest", round_))
    meta.add_mirror_partition(MirrorRow(f"site{round_}", "m", round_, round_, "src", "inc", 1),
                              PartitionRow("m", round_, [1], 1, 0, [1]),
                              TopicRow("m", 0, 1, {}, "ready", 1) if round_ == 0 else None)
    meta.add_acl(f"user:u{round_}", "consume", f"topic:{t}")
    meta.add_token(TokenRow(f"sha{round_}", f"tok{round_}", "user", f"u{round_}", 1, None))
    groups.set_generation(f"g{round_}", 3)
    groups.commit(f"g{round_}", t, {0: 5, 65: 7}, 3)
    if round_:
        prev = f"t{round_ - 1}"
        meta.delete_topic(prev)  # a range delete: one event a key
        meta.remove_acl(f"user:u{round_ - 1}", "consume", f"topic:{prev}")
        meta.delete_site(f"site{round_ - 1}") if round_ % 2 else None
        meta.revoke_tokens(f"tok{round_ - 1}", "", 99)
        groups.delete(f"g{round_ - 1}")
        groups.forget_topics_except([t])


def same(copy: tuple[EtcdMetadataStore, EtcdGroupStore],
         fresh: tuple[EtcdMetadataStore, EtcdGroupStore]) -> None:
    (m, g), (fm, fg) = copy, fresh
    assert m.topics() == fm.topics()
    assert m.partitions() == fm.partitions()
    assert m.spus() == fm.spus()
    assert m.sites() == fm.sites()
    assert m.mirrors() == fm.mirrors()
    assert m.acls() == fm.acls()
    assert m.tokens() == fm.tokens()
    assert m.generation == fm.generation
    assert m.get_meta("cluster_id") == fm.get_meta("cluster_id")
    assert g.groups() == fg.groups()
    assert g.positions() == fg.positions()
    assert [g.generation(x) for x in fg.groups()] == [fg.generation(x) for x in fg.groups()]


def now_revision(client: EtcdClient, prefix: str) -> int:
    return client.range_at(prefix + "/", prefix=True)[1]


def test_the_copy_follows_every_write_of_the_active_sc(
        etcd_cluster: EtcdCluster, etcd_prefix: str) -> None:
    client = etcd_cluster.client()
    meta, groups = active_stores(client, etcd_prefix)
    every_kind_of_write(meta, groups, 0)  # some of it before the copy loads
    warm = WarmCopy(etcd_cluster.client(), etcd_prefix, lambda: never(etcd_prefix))
    warm.start()
    try:
        for round_ in range(1, 5):
            every_kind_of_write(meta, groups, round_)
        stores = warm.take(now_revision(client, etcd_prefix), wait_s=10)
        assert stores is not None
        assert stores[0].topics()  # not vacuous
        same(stores, active_stores(client, etcd_prefix))
    finally:
        warm.close()


def test_a_copy_that_cannot_show_it_is_current_is_not_handed_over(
        etcd_cluster: EtcdCluster, etcd_prefix: str) -> None:
    client = etcd_cluster.client()
    warm = WarmCopy(client, etcd_prefix, lambda: never(etcd_prefix))
    warm.start()
    started = time.monotonic()
    assert warm.take(now_revision(client, etcd_prefix) + 1000, wait_s=0.3) is None
    assert time.monotonic() - started < 6


def test_a_watch_that_ends_loads_again_and_follows_on(
        etcd_cluster: EtcdCluster, etcd_prefix: str) -> None:
    client = etcd_cluster.client()
    meta, groups = active_stores(client, etcd_prefix)
    warm = WarmCopy(etcd_cluster.client(), etcd_prefix, lambda: never(etcd_prefix))
    warm.start()
    try:
        every_kind_of_write(meta, groups, 0)
        deadline = time.monotonic() + 10
        while warm.revision < now_revision(client, etcd_prefix):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        watch = warm._watch
        assert watch is not None
        watch.interrupt()  # what a member that goes away does to the stream
        every_kind_of_write(meta, groups, 1)  # while the copy has no watch
        every_kind_of_write(meta, groups, 2)
        stores = warm.take(now_revision(client, etcd_prefix), wait_s=10)
        assert stores is not None
        assert warm._watch is not watch
        same(stores, active_stores(client, etcd_prefix))
    finally:
        warm.close()


async def test_a_standby_takes_over_from_its_warm_copy(
        tmp_path: Path, etcd_cluster: EtcdCluster, etcd_prefix: str) -> None:
    ha = HaCluster(tmp_path, etcd=etcd_cluster.endpoints, prefix=etcd_prefix, scs=2, spus=0,
                   log_level="info")
    await ha.start()
    try:
        from edge.client import Admin

        first = await ha.wait_active()
        async with Admin(ha.sc_addr) as admin:
            await admin.create_topic("before", partitions=3, replication=1)
        await ha.kill_sc_number(first)
        second = await ha.wait_active(other_than=first)
        log_text = (ha.data_dir / f"sc-{second}.log").read_text()
        assert "taking over with the standby copy of the metadata" in log_text, log_text
        async with Admin(ha.sc_addr) as admin:
            assert [t["name"] for t in await admin.list_topics()] == ["before"]
            await admin.create_topic("after", partitions=1, replication=1)
    finally:
        await ha.stop()

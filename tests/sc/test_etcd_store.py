"""The SC's metadata and group stores on SQLite and on a real 3-member etcd: the
same assertions for both backends, then what only etcd has (several SCs on one
prefix, fencing, member loss, migration)."""

from __future__ import annotations

import sqlite3
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest
from etcd_harness import EtcdCluster

from edge.protocol.errors import StorageError, TopicExists
from edge.sc.controller import Controller
from edge.sc.etcd import Compare, Fenced, MetadataUnavailable
from edge.sc.etcd_store import (
    GROUPS_PREFIX,
    METADATA_PREFIX,
    EtcdGroupStore,
    EtcdMetadataStore,
    migrate_from_sqlite,
)
from edge.sc.group_store import GroupStore
from edge.sc.store import MetadataStore, MirrorRow, PartitionRow, SiteRow, TokenRow, TopicRow

AnyStore = MetadataStore | EtcdMetadataStore
AnyGroups = GroupStore | EtcdGroupStore
# Open the store (again, when called twice: the same SC restarted).
Open = Callable[[], AnyStore]
OpenGroups = Callable[[], AnyGroups]


@pytest.fixture(params=["sqlite", "etcd"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "etcd":
        request.getfixturevalue("etcd_prefix")
    return str(request.param)


@pytest.fixture
def open_store(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Open:
    if backend == "sqlite":
        return lambda: MetadataStore(tmp_path / "metadata.sqlite")
    cluster: EtcdCluster = request.getfixturevalue("etcd_cluster")
    prefix: str = request.getfixturevalue("etcd_prefix")
    return lambda: EtcdMetadataStore(cluster.client(), prefix=f"{prefix}/meta", fence=None)


@pytest.fixture
def open_groups(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> OpenGroups:
    if backend == "sqlite":
        return lambda: GroupStore(tmp_path / "metadata.sqlite")
    cluster: EtcdCluster = request.getfixturevalue("etcd_cluster")
    prefix: str = request.getfixturevalue("etcd_prefix")
    return lambda: EtcdGroupStore(cluster.client(), prefix=f"{prefix}/groups", fence=None)


def topic_row(name: str = "t", partitions: int = 2, status: str = "ready") -> TopicRow:
    return TopicRow(name, partitions, 3, {"retention_ms": 60_000}, status, 1000)


def parts(name: str = "t", count: int = 2, leader: int | None = 1) -> list[PartitionRow]:
    return [PartitionRow(name, i, [1, 2, 3], leader, 0, [1, 2, 3]) for i in range(count)]


# --- the same behaviour on both backends --------------------------------------------


def test_cluster_id_and_counters_survive_a_restart(open_store: Open) -> None:
    store = open_store()
    cluster_id = store.get_meta("cluster_id")
    assert cluster_id is not None
    assert len(cluster_id) == 32
    assert store.generation == 0
    assert store.allocate_producer_ids(5) == 1
    assert store.allocate_producer_ids() == 6
    assert store.generation == 2
    store.set_meta("note", "x")
    assert store.generation == 2  # set_meta is no counted transaction
    again = open_store()
    assert again.get_meta("cluster_id") == cluster_id
    assert again.get_meta("note") == "x"
    assert again.allocate_producer_ids() == 7
    assert again.get_meta("missing") is None


def test_topics_and_partitions(open_store: Open, backend: str) -> None:
    store = open_store()
    store.add_topic(topic_row("b", 2, "waiting"), [])
    store.add_topic(topic_row("a", 3), parts("a", 3))
    assert [t.name for t in store.topics()] == ["a", "b"]
    assert store.topic("a") == topic_row("a", 3)
    assert store.topic("zz") is None
    store.place_topic("b", parts("b", 2, leader=2))
    b = store.topic("b")
    assert b is not None
    assert b.status == "ready"
    assert store.partitions("b") == parts("b", 2, leader=2)
    assert [(p.topic, p.idx) for p in store.partitions()] == [
        ("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1)]
    moved = PartitionRow("a", 1, [1, 2, 3], 3, 4, [3, 1])
    store.update_partition(moved)
    assert store.partitions("a")[1] == moved
    assert store.set_topic_config("a", {"compression": "zlib"})
    assert not store.set_topic_config("nope", {})
    config = store.topic("a")
    assert config is not None
    assert config.config == {"compression": "zlib"}
    with pytest.raises((sqlite3.IntegrityError, TopicExists)):
        store.add_topic(topic_row("a"), [])
    generation = store.generation
    assert store.delete_topic("a")
    assert not store.delete_topic("a")
    assert store.generation == generation + 2
    assert store.partitions("a") == []
    again = open_store()
    assert again.topics() == store.topics()
    assert again.partitions() == parts("b", 2, leader=2)


def test_a_topic_of_a_thousand_partitions(open_store: Open) -> None:
    store = open_store()
    many = parts("big", 1000)
    store.add_topic(topic_row("big", 1000), many)
    store.update_partition(many[700]._replace(leader=2, epoch=1))
    again = open_store()
    got = again.partitions("big")
    assert len(got) == 1000
    assert got[700].leader == 2
    assert got[699] == many[699]
    assert again.delete_topic("big")
    assert open_store().partitions() == []


def test_spus(open_store: Open) -> None:
    store = open_store()
    store.upsert_spu(2, "h:2", "h:3", "r1")
    store.upsert_spu(1, "h:0", "h:1", None)
    first = store.spus()
    assert [(s.id, s.public, s.rack) for s in first] == [(1, "h:0", None), (2, "h:2", "r1")]
    store.upsert_spu(2, "h:20", "h:30", None)
    again = open_store().spus()
    assert (again[1].public, again[1].private, again[1].rack) == ("h:20", "h:30", None)
    assert again[1].registered_ms == first[1].registered_ms


def test_sites_and_mirrors(open_store: Open, backend: str) -> None:
    store = open_store()
    assert store.add_site(SiteRow("s1", "d1", 1))
    assert not store.add_site(SiteRow("s1", "other", 2))
    assert store.add_site(SiteRow("s0", "d0", 3))
    assert [s.name for s in store.sites()] == ["s0", "s1"]
    assert store.site("s1") == SiteRow("s1", "d1", 1)
    assert store.site("nope") is None
    mirror_topic = TopicRow("m", 0, 1, {"mirror": True}, "ready", 5)
    m0 = MirrorRow("s1", "m", 0, 0, "src", "inc0", 6)
    store.add_mirror_partition(m0, PartitionRow("m", 0, [1], 1, 0, [1]), mirror_topic)
    m1 = MirrorRow("s0", "m", 0, 1, "src", "inc1", 7)
    store.add_mirror_partition(m1, PartitionRow("m", 1, [1], 1, 0, [1]), None)
    topic = store.topic("m")
    assert topic is not None
    assert topic.partitions == 2
    assert store.mirrors() == [m1, m0]
    assert store.mirrors("s1") == [m0]
    with pytest.raises((sqlite3.IntegrityError, StorageError)):
        store.add_mirror_partition(MirrorRow("s1", "m", 0, 2, "x", "y", 8),
                                   PartitionRow("m", 2, [1], 1, 0, [1]), None)
    assert open_store().mirrors() == [m1, m0]
    assert store.delete_site("s1")
    assert not store.delete_site("s1")
    assert store.mirrors() == [m1]
    assert store.delete_topic("m")
    assert store.mirrors() == []
    assert open_store().mirrors() == []
    assert [s.name for s in open_store().sites()] == ["s0"]


def test_acls(open_store: Open) -> None:
    store = open_store()
    assert store.add_acl("user:b", "write", "topic:x")
    assert store.add_acl("user:a", "write", "topic:/odd name")
    assert store.add_acl("user:a", "read", "topic:/odd name")
    assert not store.add_acl("user:a", "read", "topic:/odd name")
    assert store.acls() == [("user:a", "read", "topic:/odd name"),
                            ("user:a", "write", "topic:/odd name"), ("user:b", "write", "topic:x")]
    assert store.remove_acl("user:a", "read", "topic:/odd name")
    assert not store.remove_acl("user:a", "read", "topic:/odd name")
    assert open_store().acls() == [("user:a", "write", "topic:/odd name"),
                                   ("user:b", "write", "topic:x")]


def test_tokens(open_store: Open) -> None:
    store = open_store()
    a1 = TokenRow("aa11" + "0" * 60, "alice", "user", "user:alice", 10, None)
    a2 = TokenRow("aa22" + "0" * 60, "alice", "user", "user:alice", 20, None)
    b1 = TokenRow("bb11" + "0" * 60, "bob", "spu", "spu:bob", 5, None)
    for row in (a2, b1, a1):
        store.add_token(row)
    with pytest.raises((sqlite3.IntegrityError, StorageError)):
        store.add_token(a1)
    assert store.tokens() == [a1, a2, b1]
    assert store.revoke_tokens("alice", "aa2", 99) == 1
    assert store.revoke_tokens("alice", "aa2", 100) == 0
    assert store.revoke_tokens("alice", "", 101) == 1
    assert [t.revoked_ms for t in open_store().tokens()] == [101, 99, None]


def test_bulk_changes_larger_than_one_etcd_txn(open_store: Open,
                                               open_groups: OpenGroups) -> None:
    # etcd refuses a txn of more than --max-txn-ops (128) operations: a site with
    # hundreds of mirrored partitions, a user with hundreds of tokens and positions in
    # hundreds of deleted topics are still removed whole.
    store = open_store()
    store.add_site(SiteRow("big", "d", 1))
    store.add_site(SiteRow("small", "d", 1))
    store.add_topic(TopicRow("m", 0, 1, {"mirror": True}, "ready", 5), [])
    for p in range(300):
        site = "big" if p < 290 else "small"
        store.add_mirror_partition(MirrorRow(site, "m", p, p, "src", f"inc{p}", 6),
                                   PartitionRow("m", p, [1], 1, 0, [1]), None)
    for n in range(260):
        store.add_token(TokenRow(f"{n:04d}" + "0" * 60, "alice", "user", "user:alice", n, None))
    store.add_token(TokenRow("f" * 64, "bob", "user", "user:bob", 1, None))
    assert store.delete_site("big")
    assert store.revoke_tokens("alice", "", 999) == 260
    again = open_store()
    assert [m.edge_partition for m in again.mirrors()] == list(range(290, 300))
    assert [s.name for s in again.sites()] == ["small"]
    assert [t.name for t in again.tokens() if t.revoked_ms is None] == ["bob"]
    assert {t.revoked_ms for t in again.tokens() if t.name == "alice"} == {999}

    # An election round touching a partition of each of 150 topics.
    for n in range(150):
        store.add_topic(TopicRow(f"e{n}", 1, 1, {}, "ready", 5),
                        [PartitionRow(f"e{n}", 0, [1], 1, 0, [1])])
    store.update_partitions([PartitionRow(f"e{n}", 0, [1], None, 1, [1]) for n in range(150)])
    assert {p.leader for p in open_store().partitions() if p.topic.startswith("e")} == {None}

    groups = open_groups()
    for n in range(200):
        groups.commit("g", f"gone-{n}", {0: n, 70: n}, 1)  # two position keys a topic
    groups.commit("g", "kept", {0: 5}, 1)
    assert groups.forget_topics_except(["kept"]) == 400
    assert [(p.topic, p.offset) for p in open_groups().positions()] == [("kept", 5)]


def test_group_store(open_groups: OpenGroups) -> None:
    store = open_groups()
    assert store.generation("g") == 0
    store.set_generation("g", 3)
    store.commit("g", "t", {0: 10, 1: 20}, 3)
    store.commit("g", "t", {1: 25}, 3)
    store.commit("h", "u", {70: 1}, -1)
    assert store.generation("g") == 3
    got = [(p.group, p.topic, p.partition, p.offset, p.generation)
           for p in store.positions()]
    assert got == [("g", "t", 0, 10, 3), ("g", "t", 1, 25, 3), ("h", "u", 70, 1, -1)]
    assert [p.offset for p in store.positions(group="g", topic="t")] == [10, 25]
    assert store.positions(topic="u")[0].partition == 70
    assert store.groups() == ["g", "h"]
    again = open_groups()
    assert again.positions() == store.positions()
    assert again.generation("g") == 3
    assert again.forget_topics_except(["t"]) == 1
    assert again.forget_topics_except(["t"]) == 0
    assert again.groups() == ["g"]
    assert again.delete("g") == 2
    assert again.delete("g") is None
    assert open_groups().groups() == []
    assert open_groups().positions() == []


def test_a_controller_over_the_store(open_store: Open) -> None:
    """The controller drives the store as the SC does: topic, SPUs, leader election."""
    controller = Controller(cast("MetadataStore", open_store()), heartbeat_timeout_s=5.0)
    for spu in (1, 2, 3):
        controller.register_spu(spu, f"127.0.0.1:{9000 + spu}", f"127.0.0.1:{9100 + spu}",
                                None, lambda replicas, version: None)
    controller.create_topic("t", 3, 3, {})
    restarted = open_store()
    assert [p.leader is not None for p in restarted.partitions("t")] == [True] * 3
    assert restarted.generation == open_store().generation > 0


# --- only etcd ---------------------------------------------------------------------


def meta(cluster: EtcdCluster, prefix: str, fence: Callable[[], Compare] | None = None,
         *, timeout_s: float = 2.0) -> EtcdMetadataStore:
    return EtcdMetadataStore(cluster.client(timeout_s=timeout_s), prefix=prefix, fence=fence)


def test_two_stores_on_one_prefix_share_the_cluster_id(etcd_cluster: EtcdCluster,
                                                       etcd_prefix: str) -> None:
    ids: list[str | None] = []
    start = threading.Barrier(4)

    def open_one() -> None:
        start.wait()
        ids.append(meta(etcd_cluster, etcd_prefix).get_meta("cluster_id"))

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 4
    assert ids[0] is not None
    assert len(set(ids)) == 1


def test_producer_ids_are_never_handed_out_twice(etcd_cluster: EtcdCluster,
                                                 etcd_prefix: str) -> None:
    stores = [meta(etcd_cluster, etcd_prefix) for _ in range(3)]
    got: list[list[int]] = [[] for _ in stores]
    start = threading.Barrier(len(stores))

    def allocate(i: int) -> None:
        start.wait()
        for _ in range(40):
            first = stores[i].allocate_producer_ids(3)
            got[i].extend(range(first, first + 3))

    threads = [threading.Thread(target=allocate, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for ids in got for i in ids]
    assert len(every) == 3 * 40 * 3
    assert len(set(every)) == len(every)
    assert meta(etcd_cluster, etcd_prefix).get_meta("next_producer_id") == str(len(every) + 1)


def test_a_fenced_write_fails_and_changes_nothing(etcd_cluster: EtcdCluster,
                                                  etcd_prefix: str) -> None:
    client = etcd_cluster.client()
    leader_key = f"{etcd_prefix}/sc/leader"
    revision = client.put(leader_key, "old")
    store = meta(etcd_cluster, f"{etcd_prefix}/meta",
                 lambda: Compare.create_revision(leader_key, revision))
    store.add_topic(topic_row("t"), parts("t"))
    generation = store.generation
    client.delete_prefix(leader_key)
    client.put(leader_key, "new")  # another SC's tenure
    before = client.range_prefix(f"{etcd_prefix}/meta/")
    with pytest.raises(Fenced):
        store.add_topic(topic_row("u"), [])
    with pytest.raises(Fenced):
        store.allocate_producer_ids()
    assert client.range_prefix(f"{etcd_prefix}/meta/") == before
    assert store.generation == generation
    assert store.topic("u") is None


def test_one_member_lost_changes_nothing(etcd_cluster: EtcdCluster, etcd_prefix: str) -> None:
    # The store talks to the member that goes first: it has to move on to another.
    leader = etcd_cluster.leader_index()
    victim = (leader + 1) % 3
    order = [etcd_cluster.members[victim].endpoint,
             *(m.endpoint for i, m in enumerate(etcd_cluster.members) if i != victim)]
    store = EtcdMetadataStore(etcd_cluster.client(endpoints=order), prefix=etcd_prefix,
                              fence=None)
    store.add_topic(topic_row("t"), parts("t"))
    etcd_cluster.kill_member(victim)
    started = time.monotonic()
    store.add_topic(topic_row("u"), parts("u"))
    assert time.monotonic() - started < 1.0
    assert [t.name for t in meta(etcd_cluster, etcd_prefix).topics()] == ["t", "u"]
    # The raft leader too, once the others re-elected one: writes go on after that.
    etcd_cluster.start_member(victim)
    etcd_cluster.kill_member(etcd_cluster.leader_index())
    deadline = time.monotonic() + 10
    while True:
        try:
            store.add_topic(topic_row("v"), [])
            break
        except MetadataUnavailable:
            assert time.monotonic() < deadline
    assert [t.name for t in meta(etcd_cluster, etcd_prefix).topics()] == ["t", "u", "v"]


def test_without_quorum_a_write_fails_fast_and_works_again_later(
        etcd_cluster: EtcdCluster, etcd_prefix: str) -> None:
    store = meta(etcd_cluster, etcd_prefix, timeout_s=1.0)
    store.add_topic(topic_row("t"), [])
    generation = store.generation
    survivor = etcd_cluster.leader_index()
    for i in range(3):
        if i != survivor:
            etcd_cluster.stop_member(i)
    started = time.monotonic()
    with pytest.raises(MetadataUnavailable):
        store.add_topic(topic_row("u"), [])
    assert time.monotonic() - started < 1.5
    assert store.topic("u") is None
    assert store.generation == generation
    for i in range(3):
        if i != survivor:
            etcd_cluster.start_member(i, wait=False)
    etcd_cluster.wait_healthy()
    # A write that timed out has an unknown outcome: the survivor may still commit its
    # proposal once quorum is back. The next write finds out (a conflict, a reload).
    store.add_topic(topic_row("v"), [])
    names = [t.name for t in meta(etcd_cluster, etcd_prefix).topics()]
    assert names in (["t", "v"], ["t", "u", "v"])
    assert [t.name for t in store.topics()] == names


def test_a_paused_member_is_passed_over(etcd_cluster: EtcdCluster, etcd_prefix: str) -> None:
    victim = (etcd_cluster.leader_index() + 1) % 3
    order = [etcd_cluster.members[victim].endpoint,
             *(m.endpoint for i, m in enumerate(etcd_cluster.members) if i != victim)]
    store = EtcdMetadataStore(etcd_cluster.client(endpoints=order), prefix=etcd_prefix,
                              fence=None)
    etcd_cluster.pause_member(victim)
    try:
        started = time.monotonic()
        assert store.allocate_producer_ids() == 1
        assert time.monotonic() - started < 2.0
    finally:
        etcd_cluster.resume_member(victim)


def populate(path: Path) -> tuple[MetadataStore, GroupStore]:
    store = MetadataStore(path)
    store.add_topic(topic_row("t", 70), parts("t", 70))
    store.upsert_spu(1, "h:0", "h:1", "rack")
    store.add_site(SiteRow("s1", "d", 1))
    store.add_mirror_partition(MirrorRow("s1", "m", 0, 0, "src", "inc", 2),
                               PartitionRow("m", 0, [1], 1, 0, [1]),
                               TopicRow("m", 0, 1, {"mirror": True}, "ready", 2))
    store.add_acl("user:a", "read", "topic:t")
    store.add_token(TokenRow("ab" * 32, "alice", "user", "user:alice", 3, None))
    store.allocate_producer_ids(10)
    groups = GroupStore(path)
    groups.set_generation("g", 4)
    groups.commit("g", "t", {i: i * 10 for i in range(70)}, 4)
    return store, groups


def test_migrate_from_sqlite(etcd_cluster: EtcdCluster, etcd_prefix: str,
                             tmp_path: Path) -> None:
    path = tmp_path / "metadata.sqlite"
    store, groups = populate(path)
    client = etcd_cluster.client()
    counts = migrate_from_sqlite(path, client, etcd_prefix)
    assert counts == {"meta": 3, "topics": 2, "partitions": 71, "spus": 1, "sites": 1,
                      "mirrors": 1, "acls": 1, "tokens": 1, "groups": 1,
                      "group_offsets": 70}
    copied = EtcdMetadataStore(client, prefix=f"{etcd_prefix}/{METADATA_PREFIX}", fence=None)
    for name in ("topics", "partitions", "spus", "sites", "mirrors", "acls", "tokens"):
        assert getattr(copied, name)() == getattr(store, name)(), name
    for name in ("cluster_id", "next_producer_id", "generation"):
        assert copied.get_meta(name) == store.get_meta(name)
    assert copied.generation == store.generation
    copied_groups = EtcdGroupStore(client, prefix=f"{etcd_prefix}/{GROUPS_PREFIX}", fence=None)
    assert copied_groups.positions() == groups.positions()
    assert copied_groups.generation("g") == 4
    with pytest.raises(StorageError, match="not empty"):
        migrate_from_sqlite(path, client, etcd_prefix)


def test_write_latency(etcd_cluster: EtcdCluster, etcd_prefix: str) -> None:
    """A fenced write txn on the loopback cluster (printed with -s)."""
    client = etcd_cluster.client()
    leader_key = f"{etcd_prefix}/leader"
    revision = client.put(leader_key, "me")
    store = meta(etcd_cluster, f"{etcd_prefix}/meta",
                 lambda: Compare.create_revision(leader_key, revision))
    times: list[float] = []
    for i in range(100):
        started = time.perf_counter()
        if i:
            store.update_partition(PartitionRow("t", 0, [1], 1, i, [1]))
        else:
            store.add_topic(topic_row("t", 1), parts("t", 1))
        times.append(time.perf_counter() - started)
    print(f"fenced write txn: median {statistics.median(times) * 1000:.2f} ms, "
          f"max {max(times) * 1000:.2f} ms")
    assert store.partitions("t")[0].epoch == 99

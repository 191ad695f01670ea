"""The SC election on a real 3-member etcd: one leader, hand-over on resign and on a
lapsed lease, and the old leader's writes fenced."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from etcd_harness import EtcdCluster

from edge.sc.election import Election
from edge.sc.etcd import Fenced
from edge.sc.etcd_store import EtcdMetadataStore
from edge.sc.store import TopicRow

TTL_S = 2


class Candidate:
    """An election and a thread that campaigns for it."""

    def __init__(self, cluster: EtcdCluster, prefix: str, name: str) -> None:
        self.name = name
        self.election = Election(cluster.client(), prefix=prefix,
                                 candidate={"public": f"{name}:9003", "node": name}, ttl_s=TTL_S)
        self.stop = threading.Event()
        self.won = threading.Event()
        self.thread = threading.Thread(target=self._campaign, name=f"campaign-{name}")
        self.thread.start()

    def _campaign(self) -> None:
        self.election.campaign(self.stop)
        if self.election.is_leader:
            self.won.set()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        if self.election.is_leader:
            self.election.resign()


@pytest.fixture
def candidates(etcd_cluster: EtcdCluster, etcd_prefix: str) -> Iterator[list[Candidate]]:
    made = [Candidate(etcd_cluster, f"{etcd_prefix}/sc", name) for name in ("a", "b")]
    yield made
    for c in made:
        c.close()


def first_winner(candidates: list[Candidate], timeout_s: float = 5.0) -> Candidate:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for c in candidates:
            if c.won.is_set():
                return c
        time.sleep(0.01)
    raise AssertionError("nobody won")


def test_exactly_one_leads(candidates: list[Candidate]) -> None:
    leader = first_winner(candidates)
    for _ in range(6):  # two TTLs of renewals; the other keeps trying meanwhile, and fails
        assert leader.election.keepalive()
        time.sleep(TTL_S / 3)
    assert [c.won.is_set() for c in candidates].count(True) == 1
    for c in candidates:
        assert c.election.leader() == {"public": f"{leader.name}:9003", "node": leader.name}


def test_resign_hands_over_within_a_second(candidates: list[Candidate]) -> None:
    leader = first_winner(candidates)
    other = next(c for c in candidates if c is not leader)
    started = time.monotonic()
    leader.election.resign()
    assert other.won.wait(timeout=1.0)
    print(f"hand-over after resign: {time.monotonic() - started:.3f} s")
    assert not leader.election.is_leader
    assert not leader.election.keepalive()
    assert other.election.leader() == {"public": f"{other.name}:9003", "node": other.name}


def test_a_paused_leader_loses_and_is_fenced(candidates: list[Candidate],
                                             etcd_cluster: EtcdCluster,
                                             etcd_prefix: str) -> None:
    leader = first_winner(candidates)
    other = next(c for c in candidates if c is not leader)
    store = EtcdMetadataStore(etcd_cluster.client(), prefix=f"{etcd_prefix}/meta",
                              fence=leader.election.fence)
    store.add_topic(TopicRow("before", 1, 1, {}, "waiting", 1), [])
    started = time.monotonic()
    # The leader stops renewing (a paused SC): the other takes over within TTL + margin.
    assert other.won.wait(timeout=TTL_S + 2.0)
    print(f"take-over after the last renewal: {time.monotonic() - started:.3f} s")
    generation = store.generation
    with pytest.raises(Fenced):
        store.add_topic(TopicRow("after", 1, 1, {}, "waiting", 2), [])
    assert not leader.election.keepalive()
    assert not leader.election.is_leader
    fresh = EtcdMetadataStore(etcd_cluster.client(), prefix=f"{etcd_prefix}/meta",
                              fence=other.election.fence)
    assert [t.name for t in fresh.topics()] == ["before"]
    assert fresh.generation == generation
    fresh.add_topic(TopicRow("new", 1, 1, {}, "waiting", 3), [])
    assert other.election.keepalive()


def test_fence_before_a_win_never_holds(etcd_cluster: EtcdCluster, etcd_prefix: str) -> None:
    election = Election(etcd_cluster.client(), prefix=etcd_prefix, candidate={"n": "x"})
    assert election.leader() is None
    assert not election.keepalive()
    with pytest.raises(Fenced):
        EtcdMetadataStore(etcd_cluster.client(), prefix=f"{etcd_prefix}/meta",
                          fence=election.fence)
    election.campaign()
    assert election.is_leader
    store = EtcdMetadataStore(etcd_cluster.client(), prefix=f"{etcd_prefix}/meta",
                              fence=election.fence)
    assert store.get_meta("cluster_id") is not None
    election.resign()
    assert election.leader() is None

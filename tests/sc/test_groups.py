"""The group coordinator's rules, on a real GroupStore (SQLite in tmp_path) and a
clock the tests move: assignment, generations, fencing, expiry, reset, delete."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.protocol.errors import (
    ConsumerNotFound,
    GroupNotEmpty,
    InvalidConfig,
    StaleGeneration,
    TopicNotFound,
    UnknownMember,
)
from edge.protocol.groups import (
    Assignor,
    CommitRequest,
    HeartbeatRequest,
    JoinRequest,
    LeaveRequest,
    PartitionOffset,
    ResetRequest,
)
from edge.sc.group_store import GroupStore
from edge.sc.groups import Coordinator, assign_partitions


class Harness:
    """A coordinator over topics of a fixed size, and members that follow the protocol."""

    def __init__(self, path: Path, topics: dict[str, int]) -> None:
        self.topics = topics
        self.store = GroupStore(path)
        self.coordinator = self._coordinator()
        self.now = 100.0
        self.generation: dict[str, int] = {}

    def _coordinator(self) -> Coordinator:
        return Coordinator(self.store, partitions_of=self.topics.get,
                           high_watermarks=lambda topic: {0: 50})

    def join(self, group: str = "g", topic: str = "t", session_ms: int = 6000,
             assignor: str = "range") -> str:
        answer = self.coordinator.join(JoinRequest(group, topic, session_ms, assignor, "test"),
                                       self.now)
        self.generation[answer.member] = answer.generation
        return answer.member

    def beat(self, member: str, group: str = "g") -> tuple[int, ...] | None:
        """One heartbeat as a client sends it; the partitions if handed out."""
        req = HeartbeatRequest(group, member, self.generation[member], False, 0)
        answer = self.coordinator.heartbeat(req, self.now)
        self.generation[member] = answer.generation
        if answer.assignment is None:
            return None
        return tuple(a.partition for a in answer.assignment)

    def settle(self, members: list[str], group: str = "g") -> dict[str, tuple[int, ...]]:
        """Heartbeat every member until each has its assignment."""
        got: dict[str, tuple[int, ...]] = {}
        for _ in range(4):
            for m in members:
                parts = self.beat(m, group)
                if parts is not None:
                    got[m] = parts
            if len(got) == len(members):
                return got
        raise AssertionError(f"not settled: {got}")

    def commit(self, member: str, offsets: dict[int, int], generation: int | None = None,
               group: str = "g") -> None:
        gen = self.generation[member] if generation is None else generation
        rows = tuple(PartitionOffset(p, o) for p, o in offsets.items())
        self.coordinator.commit(CommitRequest(group, member, gen, rows), self.now)


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path / "metadata.sqlite", {"t": 6, "u": 2})


def disjoint_and_complete(assignment: dict[str, tuple[int, ...]], partitions: int) -> bool:
    every = [p for parts in assignment.values() for p in parts]
    return sorted(every) == list(range(partitions))


@pytest.mark.parametrize("assignor", list(Assignor))
@pytest.mark.parametrize(("members", "partitions"), [(1, 6), (2, 6), (4, 6), (7, 6), (3, 0)])
def test_assignment_covers_every_partition_once(assignor: Assignor, members: int,
                                                partitions: int) -> None:
    ids = [f"m{i}" for i in range(members)]
    out = assign_partitions(ids, partitions, assignor)
    assert set(out) == set(ids)
    assert disjoint_and_complete(out, partitions)
    assert out == assign_partitions(list(reversed(ids)), partitions, assignor)
    sizes = [len(p) for p in out.values()]
    assert max(sizes) - min(sizes) <= 1


def test_range_and_roundrobin_split() -> None:
    assert assign_partitions(["a", "b"], 5, Assignor.RANGE) == {"a": (0, 1, 2), "b": (3, 4)}
    assert assign_partitions(["b", "a"], 5, Assignor.ROUNDROBIN) == {"a": (0, 2, 4),
                                                                     "b": (1, 3)}


def test_single_member_gets_everything_at_once(h: Harness) -> None:
    a = h.join()
    assert h.settle([a]) == {a: (0, 1, 2, 3, 4, 5)}


def test_join_moves_partitions_only_after_the_old_owner_lets_go(h: Harness) -> None:
    a = h.join()
    h.settle([a])
    b = h.join()
    # b waits: a still holds every partition at the old generation ...
    assert h.beat(b) is None
    h.commit(a, {0: 7})  # ... and may still commit them
    assert h.beat(a) is None  # a learns of the new generation
    mine = h.beat(a)  # a acknowledges it: everything is handed out now
    theirs = h.beat(b)
    assert mine
    assert theirs
    assert disjoint_and_complete({a: mine, b: theirs}, 6)


def test_new_owner_gets_the_committed_positions(h: Harness) -> None:
    a = h.join()
    h.settle([a])
    h.commit(a, {0: 10, 1: 11, 2: 12, 3: 13, 4: 14})  # 5 never committed
    b = h.join()
    h.settle([a, b])
    answer = h.coordinator.heartbeat(HeartbeatRequest("g", b, h.generation[b], False, 0),
                                     h.now)
    assert answer.assignment
    for x in answer.assignment:
        assert x.offset == (None if x.partition == 5 else 10 + x.partition)


def test_commit_from_a_stale_generation_is_refused(h: Harness) -> None:
    a = h.join()
    h.settle([a])
    old = h.generation[a]
    b = h.join()
    h.settle([a, b])
    with pytest.raises(StaleGeneration) as caught:
        h.commit(a, {0: 3}, generation=old)
    assert caught.value.data["generation"] == h.generation[a]


def test_commit_of_a_partition_the_member_does_not_hold_is_refused(h: Harness) -> None:
    a = h.join()
    b = h.join()
    got = h.settle([a, b])
    theirs = got[b][0]
    with pytest.raises(StaleGeneration, match=rf"partition\(s\) {theirs} of t"):
        h.commit(a, {theirs: 3})
    assert h.store.positions("g") == []


def test_leave_rebalances_the_rest(h: Harness) -> None:
    a, b, c = h.join(), h.join(), h.join()
    assert disjoint_and_complete(h.settle([a, b, c]), 6)
    h.coordinator.leave(LeaveRequest("g", b), h.now)
    got = h.settle([a, c])
    assert disjoint_and_complete(got, 6)
    with pytest.raises(UnknownMember):
        h.beat(b)


def test_silent_member_expires_after_its_session(h: Harness) -> None:
    a = h.join(session_ms=2000)
    b = h.join(session_ms=2000)
    h.settle([a, b])
    h.now += 1.5
    h.beat(a)
    h.coordinator.expire(h.now)
    assert set(h.coordinator.groups["g"].members) == {a, b}
    h.now += 0.6  # b silent 2.1 s
    h.coordinator.expire(h.now)
    assert set(h.coordinator.groups["g"].members) == {a}
    assert h.settle([a]) == {a: (0, 1, 2, 3, 4, 5)}


def test_member_that_never_acknowledges_is_dropped(h: Harness) -> None:
    a = h.join(session_ms=2000)
    h.settle([a])
    b = h.join(session_ms=2000)
    for _ in range(5):  # a keeps heartbeating with its old generation, never moving on
        h.now += 0.5
        h.coordinator.heartbeat(HeartbeatRequest("g", a, h.generation[a] - 1 if
                                                 h.generation[a] > 1 else 1, True, 0), h.now)
        h.beat(b)
    h.coordinator.expire(h.now)
    assert set(h.coordinator.groups["g"].members) == {b}


def test_partition_count_change_rebalances(h: Harness) -> None:
    a = h.join()
    b = h.join()
    h.settle([a, b])
    h.topics["t"] = 8
    h.coordinator.topics_changed(h.now)
    assert disjoint_and_complete(h.settle([a, b]), 8)


def test_join_is_checked(h: Harness) -> None:
    with pytest.raises(TopicNotFound):
        h.join(topic="nope")
    with pytest.raises(InvalidConfig, match="invalid group name"):
        h.join(group="bad name")
    h.join()
    with pytest.raises(InvalidConfig, match="reads topic 't'"):
        h.join(topic="u")
    with pytest.raises(InvalidConfig, match="assignor"):
        h.join(assignor="roundrobin")


def test_reset_and_delete_are_refused_while_members_live(h: Harness) -> None:
    a = h.join()
    h.settle([a])
    h.commit(a, {0: 4})
    reset = ResetRequest("g", "t", (PartitionOffset(0, 1),))
    with pytest.raises(GroupNotEmpty, match="1 live member"):
        h.coordinator.reset(reset)
    with pytest.raises(GroupNotEmpty):
        h.coordinator.delete("g")
    h.coordinator.leave(LeaveRequest("g", a), h.now)
    h.coordinator.reset(reset)
    assert [(p.partition, p.offset) for p in h.store.positions("g")] == [(0, 1)]
    with pytest.raises(InvalidConfig, match="no 6"):
        h.coordinator.reset(ResetRequest("g", "t", (PartitionOffset(6, 0),)))
    assert h.coordinator.delete("g") == 1
    assert h.store.positions("g") == []
    with pytest.raises(ConsumerNotFound):
        h.coordinator.delete("g")


def test_generations_and_positions_survive_a_restart(h: Harness, tmp_path: Path) -> None:
    a = h.join()
    h.settle([a])
    h.commit(a, {2: 11})
    generation = h.generation[a]
    h.store.close()
    store = GroupStore(tmp_path / "metadata.sqlite")
    h.store = store
    h.coordinator = h._coordinator()
    b = h.join()
    assert h.generation[b] > generation
    h.settle([b])
    answer = h.coordinator.heartbeat(HeartbeatRequest("g", b, h.generation[b], False, 0),
                                     h.now)
    assert answer.assignment is not None
    assert {x.partition: x.offset for x in answer.assignment}[2] == 11


def test_listing_shows_members_positions_and_lag(h: Harness) -> None:
    a = h.join()
    h.settle([a])
    h.commit(a, {0: 20})
    (row,) = h.coordinator.describe(h.now, "g")
    assert row.state == "stable"
    assert row.members[0].member == a
    first = row.partitions[0]
    assert (first.partition, first.offset, first.member, first.hw, first.lag) == (0, 20, a,
                                                                                   50, 30)
    assert row.partitions[1].offset is None


def test_positions_of_a_deleted_topic_are_forgotten(h: Harness) -> None:
    a = h.join()
    h.settle([a])
    h.commit(a, {0: 4})
    h.coordinator.reset(ResetRequest("other", "u", (PartitionOffset(1, 2),)))
    assert h.store.forget_topics_except(["t", "u"]) == 0
    assert h.store.forget_topics_except(["u"]) == 1
    assert [(p.group, p.topic) for p in h.store.positions()] == [("other", "u")]

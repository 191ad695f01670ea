"""Leader elections and ISR fencing on a real Controller over SQLite in tmp_path,
driven as the SC's handlers drive it: register, heartbeat, UPDATE_ISR, disconnect."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.protocol.errors import InvalidConfig, StaleEpoch, TopicNotFound
from edge.sc.controller import ROUND_LINES, Controller
from edge.sc.store import MetadataStore, PartitionRow

# What an SPU's registration stream hands the controller: it sends each new assignment.
Push = Callable[[list[dict[str, Any]], int], None]


class Sc:
    """A controller and the SPUs registered with it; ``pushed`` holds what each got."""

    def __init__(self, path: Path, *, timeout_s: float) -> None:
        self.store = MetadataStore(path)
        self.controller = Controller(self.store, heartbeat_timeout_s=timeout_s)
        self.pushed: dict[int, list[list[dict[str, Any]]]] = {}
        self.streams: dict[int, Push] = {}

    def join(self, *spus: int) -> None:
        for spu in spus:

            def push(replicas: list[dict[str, Any]], version: int, spu: int = spu) -> None:
                self.pushed.setdefault(spu, []).append(replicas)

            self.streams[spu] = push
            self.controller.register_spu(
                spu, f"127.0.0.1:{9000 + spu}", f"127.0.0.1:{9100 + spu}", None, push
            )

    def lose(self, spu: int) -> None:
        """The SPU's registration stream closed."""
        self.controller.spu_disconnected(spu, self.streams[spu])

    def beat(self, *spus: int) -> None:
        for spu in spus:
            self.controller.heartbeat(spu, {}, [], {})

    def topic(
        self, name: str = "t", partitions: int = 1, replication: int = 3, **config: Any
    ) -> None:
        self.controller.create_topic(name, partitions, replication, config)

    def row(self, idx: int = 0, topic: str = "t") -> PartitionRow:
        return self.store.partitions(topic)[idx]

    def shrink_isr(self, isr: list[int], idx: int = 0) -> None:
        """The leader's UPDATE_ISR at its current epoch."""
        p = self.row(idx)
        assert p.leader is not None
        self.controller.update_isr(p.leader, p.topic, p.idx, p.epoch, isr)

    def last_seen(self, spu: int, idx: int = 0, topic: str = "t") -> dict[str, Any]:
        """The partition as the SPU's latest assignment describes it."""
        return next(r for r in self.pushed[spu][-1] if (r["topic"], r["partition"]) == (topic, idx))


@pytest.fixture
def new_sc(tmp_path: Path) -> Iterator[Callable[[float], Sc]]:
    """An SC over tmp_path's database (a second one is the same SC restarted)."""
    made: list[Sc] = []

    def make(timeout_s: float) -> Sc:
        made.append(Sc(tmp_path / "metadata.sqlite", timeout_s=timeout_s))
        return made[-1]

    yield make
    for sc in made:
        sc.store.close()


@pytest.fixture
def sc(new_sc: Callable[[float], Sc]) -> Sc:
    sc = new_sc(30.0)
    sc.join(1, 2, 3)
    return sc


# clean elections ------------------------------------------------------------------


def test_a_lost_leader_is_replaced_by_the_next_isr_member(sc: Sc) -> None:
    sc.topic()
    assert sc.row() == PartitionRow("t", 0, [1, 2, 3], 1, 0, [1, 2, 3])
    sc.lose(1)
    assert sc.row() == PartitionRow("t", 0, [1, 2, 3], 2, 1, [2, 3])
    seen = sc.last_seen(2)
    assert (seen["leader"], seen["epoch"], seen["isr"]) == (2, 1, [2, 3])


def test_an_election_round_is_one_write_and_one_log_line(
        sc: Sc, caplog: pytest.LogCaptureFixture) -> None:
    # An SPU that led many partitions (a cloud SPU of many sites) is lost: one
    # commit for the round, not one fsync per partition while heartbeats wait, and
    # one line in the log instead of one per partition.
    for n in range(45):
        sc.topic(f"t{n}", partitions=1, replication=2)
    led = [p for p in sc.store.partitions() if p.leader == 1]
    assert len(led) > ROUND_LINES
    before = sc.store.generation
    with caplog.at_level(logging.INFO, logger="edge.sc.controller"):
        sc.lose(1)
    assert sc.store.generation == before + 1
    moved = {(p.topic, p.idx): p for p in sc.store.partitions()}
    assert all(moved[p.topic, p.idx].leader not in (1, None) for p in led)
    assert all(moved[p.topic, p.idx].epoch == p.epoch + 1 for p in led)
    lines = [r.getMessage() for r in caplog.records if "leads, epoch" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].startswith(f"{len(led)} partitions in one round: ")


def test_the_successor_comes_from_the_isr_not_the_replica_order(sc: Sc) -> None:
    sc.topic()
    sc.shrink_isr([1, 3])
    sc.lose(1)
    assert (sc.row().leader, sc.row().epoch, sc.row().isr) == (3, 1, [3])


def test_offline_isr_members_are_passed_over(sc: Sc) -> None:
    sc.topic()
    sc.lose(2)
    assert sc.row() == PartitionRow("t", 0, [1, 2, 3], 1, 0, [1, 2, 3])  # a follower: no vote
    sc.lose(1)
    assert (sc.row().leader, sc.row().epoch) == (3, 1)


def test_only_the_partitions_the_lost_spu_led_move(sc: Sc) -> None:
    sc.topic(partitions=3, replication=2)
    before = sc.store.partitions("t")
    assert [p.leader for p in before] == [1, 2, 3]
    sc.lose(2)
    after = sc.store.partitions("t")
    assert (after[1].leader, after[1].epoch) == (3, 1)
    assert [after[0], after[2]] == [before[0], before[2]]


def test_a_leader_that_stops_heartbeating_is_replaced(new_sc: Callable[[float], Sc]) -> None:
    sc = new_sc(0.05)
    sc.join(1, 2, 3)
    sc.topic()
    time.sleep(0.1)
    sc.beat(2, 3)
    sc.controller.check_liveness()
    assert not sc.controller.spus[1].online
    assert (sc.row().leader, sc.row().epoch, sc.row().isr) == (2, 1, [2, 3])


def test_an_old_connection_closing_does_not_depose_the_spu(sc: Sc) -> None:
    sc.topic()
    old = sc.streams[1]
    sc.join(1)  # the SPU reconnected; then the old stream's close arrives
    sc.controller.spu_disconnected(1, old)
    assert sc.controller.spus[1].online
    assert (sc.row().leader, sc.row().epoch) == (1, 0)


def test_a_restarted_sc_waits_one_timeout_for_spus_to_dial_in(
    new_sc: Callable[[float], Sc],
) -> None:
    first = new_sc(30.0)
    first.join(1, 2, 3)
    first.topic()
    first.store.close()
    sc = new_sc(0.05)
    sc.join(2, 3)
    sc.controller.check_liveness()
    assert (sc.row().leader, sc.row().epoch) == (1, 0)
    time.sleep(0.1)
    sc.beat(2, 3)
    sc.controller.check_liveness()
    assert (sc.row().leader, sc.row().epoch) == (2, 1)


# no live ISR member ---------------------------------------------------------------


def test_without_a_live_isr_member_the_partition_stays_offline(sc: Sc) -> None:
    sc.topic()
    sc.shrink_isr([1])
    sc.lose(1)
    assert sc.row() == PartitionRow("t", 0, [1, 2, 3], None, 1, [1])
    assert sc.controller.metadata()["topics"]["t"][0]["leader"] is None
    sc.join(2)  # an out-of-sync replica reconnecting changes nothing
    sc.beat(2, 3)
    assert (sc.row().leader, sc.row().epoch) == (None, 1)


def test_the_last_isr_member_leads_again_when_it_returns(sc: Sc) -> None:
    sc.topic()
    sc.shrink_isr([1])
    sc.lose(1)
    sc.join(1)
    assert sc.row() == PartitionRow("t", 0, [1, 2, 3], 1, 2, [1])
    assert sc.last_seen(1)["leader"] == 1


def test_a_single_replica_leads_again_when_its_heartbeat_returns(
    new_sc: Callable[[float], Sc],
) -> None:
    sc = new_sc(0.05)
    sc.join(1)
    sc.topic(replication=1)
    time.sleep(0.1)
    sc.controller.check_liveness()
    assert (sc.row().leader, sc.row().epoch) == (None, 1)
    sc.beat(1)
    assert (sc.row().leader, sc.row().epoch) == (1, 2)


def test_unclean_election_picks_a_live_out_of_sync_replica(sc: Sc) -> None:
    sc.topic(unclean_election=True)
    sc.shrink_isr([1])
    sc.lose(2)
    sc.lose(1)
    assert (sc.row().leader, sc.row().epoch) == (3, 1)


def test_an_unclean_leader_is_in_its_own_isr(sc: Sc) -> None:
    sc.topic(unclean_election=True)
    sc.shrink_isr([1])
    sc.lose(1)
    assert sc.row().leader == 2
    assert sc.row().isr == [2]


def test_unclean_election_when_a_replica_returns_to_an_offline_partition(sc: Sc) -> None:
    sc.topic(unclean_election=True)
    sc.shrink_isr([1])
    for spu in (2, 3, 1):
        sc.lose(spu)
    assert sc.row().leader is None
    sc.join(3)
    assert (sc.row().leader, sc.row().isr) == (3, [3])


# ISR updates and fencing ------------------------------------------------------------


def test_the_leader_records_an_isr_change_and_replicas_learn_it(sc: Sc) -> None:
    sc.topic()
    version = sc.controller.version
    sc.controller.update_isr(1, "t", 0, 0, [1, 3])
    assert sc.row().isr == [1, 3]
    assert sc.controller.version == version + 1
    assert sc.last_seen(3)["isr"] == [1, 3]


def test_a_deposed_leader_cannot_change_the_isr(sc: Sc) -> None:
    sc.topic()
    sc.lose(1)
    sc.join(1)  # back, as a follower, still believing in epoch 0
    with pytest.raises(StaleEpoch) as info:
        sc.controller.update_isr(1, "t", 0, 0, [1])
    assert info.value.data["epoch"] == 1
    assert info.value.retriable
    assert sc.row().isr == [2, 3]


def test_the_new_leader_must_use_the_new_epoch(sc: Sc) -> None:
    sc.topic()
    sc.lose(1)
    with pytest.raises(StaleEpoch):
        sc.controller.update_isr(2, "t", 0, 0, [2])
    with pytest.raises(StaleEpoch):
        sc.controller.update_isr(2, "t", 0, 2, [2])
    sc.controller.update_isr(2, "t", 0, 1, [2])
    assert sc.row().isr == [2]


def test_a_follower_cannot_change_the_isr_at_the_current_epoch(sc: Sc) -> None:
    sc.topic()
    with pytest.raises(StaleEpoch):
        sc.controller.update_isr(2, "t", 0, 0, [2, 3])
    assert sc.row().isr == [1, 2, 3]


@pytest.mark.parametrize("isr", [[1, 9], [2, 3], []])
def test_an_isr_must_be_replicas_including_the_leader(sc: Sc, isr: list[int]) -> None:
    sc.topic()
    with pytest.raises(InvalidConfig):
        sc.controller.update_isr(1, "t", 0, 0, isr)
    assert sc.row().isr == [1, 2, 3]


def test_an_isr_change_for_an_unknown_partition_is_refused(sc: Sc) -> None:
    sc.topic()
    with pytest.raises(TopicNotFound):
        sc.controller.update_isr(1, "t", 5, 0, [1])
    with pytest.raises(TopicNotFound):
        sc.controller.update_isr(1, "nope", 0, 0, [1])


def test_rebalance_returns_leadership_to_a_preferred_replica_back_in_the_isr(sc: Sc) -> None:
    sc.topic()
    sc.lose(1)
    sc.join(1)
    assert sc.controller.rebalance() == 0  # SPU 1 is not in the ISR yet
    sc.controller.update_isr(2, "t", 0, 1, [2, 3, 1])
    assert sc.controller.rebalance() == 1
    assert (sc.row().leader, sc.row().epoch) == (1, 2)

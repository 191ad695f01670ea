"""An SC whose stored epochs are behind what the SPUs report (its database is an older
copy) moves past them: a real Controller over SQLite in tmp_path, driven with the
replica status that REGISTER_SPU and HEARTBEAT carry. The pure decisions of
``edge/sc/registration.py`` are tested on their own at the end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.protocol.sc_api import ReplicaStatus
from edge.sc.controller import Controller
from edge.sc.registration import epoch_behind, reported_leader
from edge.sc.store import MetadataStore, PartitionRow


def status(epoch: int, *, leader: bool = False, isr: tuple[int, ...] | None = None,
           partition: int = 0, failed: bool = False) -> ReplicaStatus:
    return ReplicaStatus("t", partition, leader, epoch, 5, 5, 0, 100, failed,
                         isr if leader else None, None)


class Sc:
    """A controller over a database whose partition row says what an older copy said."""

    def __init__(self, path: Path, row: PartitionRow, *, spus: tuple[int, ...] = (1, 2, 3)
                 ) -> None:
        first = Controller(MetadataStore(path), heartbeat_timeout_s=30.0)
        for spu in spus:
            first.register_spu(spu, f"127.0.0.1:{9000 + spu}", f"127.0.0.1:{9100 + spu}",
                               None, lambda replicas, version: None)
        first.create_topic("t", 1, len(row.replicas), {})
        first.store.update_partition(row)
        first.store.close()
        # Restarted over that database: every known SPU is online for a grace period.
        self.store = MetadataStore(path)
        self.controller = Controller(self.store, heartbeat_timeout_s=30.0)
        self.pushed: dict[int, list[dict[str, Any]]] = {}

    def join(self, spu: int, *reports: ReplicaStatus) -> None:
        def push(replicas: list[dict[str, Any]], version: int) -> None:
            self.pushed[spu] = replicas

        self.controller.register_spu(spu, f"127.0.0.1:{9000 + spu}",
                                     f"127.0.0.1:{9100 + spu}", None, push,
                                     partitions=reports)

    def row(self) -> PartitionRow:
        return self.store.partitions("t")[0]


@pytest.fixture
def restored(tmp_path: Path) -> Iterator[list[Sc]]:
    made: list[Sc] = []
    yield made
    for sc in made:
        sc.store.close()


def make(restored: list[Sc], tmp_path: Path, row: PartitionRow,
         spus: tuple[int, ...] = (1, 2, 3)) -> Sc:
    restored.append(Sc(tmp_path / "metadata.sqlite", row, spus=spus))
    return restored[-1]


def test_the_replica_leading_the_highest_epoch_keeps_leading_past_it(
        restored: list[Sc], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sc = make(restored, tmp_path, PartitionRow("t", 0, [1, 2, 3], 1, 5, [1, 2, 3]))
    sc.join(1, status(7))
    sc.join(2, status(7, leader=True, isr=(2, 3)))
    assert sc.row() == PartitionRow("t", 0, [1, 2, 3], 2, 8, [2, 3])
    seen = next(r for r in sc.pushed[1] if r["topic"] == "t")
    assert (seen["leader"], seen["epoch"], seen["isr"]) == (2, 8, [2, 3])
    sc.join(3, status(7))
    sc.controller.heartbeat(1, {}, [status(8)], {})
    assert sc.row().epoch == 8  # once: the SC is ahead now
    warnings = [r.getMessage() for r in caplog.records if "was behind" in r.getMessage()]
    assert warnings == ["SC's epoch for t/0 was behind the SPUs' (5 < 7): metadata restored "
                        "from an older copy? moving to epoch 8"]


def test_without_a_claimant_it_waits_for_replicas_still_dialling_in(
        restored: list[Sc], tmp_path: Path) -> None:
    sc = make(restored, tmp_path, PartitionRow("t", 0, [1, 2], 1, 0, [1, 2]), spus=(1, 2))
    sc.join(1, status(1))  # a follower at epoch 1; SPU 2 has not registered yet
    assert sc.row() == PartitionRow("t", 0, [1, 2], 1, 0, [1, 2])
    sc.join(2, status(1, leader=True, isr=(2, 1)))
    assert sc.row() == PartitionRow("t", 0, [1, 2], 2, 2, [2, 1])


def test_without_a_claimant_it_elects_as_usual_past_the_reported_epoch(
        restored: list[Sc], tmp_path: Path) -> None:
    sc = make(restored, tmp_path, PartitionRow("t", 0, [1, 2], 1, 0, [1, 2]), spus=(1, 2))
    sc.join(1, status(3))
    sc.join(2, status(3))  # nobody leads epoch 3 any more (the leader stepped down)
    assert sc.row() == PartitionRow("t", 0, [1, 2], 1, 4, [1, 2])


def test_an_spu_that_never_dials_in_ends_the_wait(tmp_path: Path,
                                                  restored: list[Sc]) -> None:
    sc = make(restored, tmp_path, PartitionRow("t", 0, [1, 2], 2, 0, [1, 2]), spus=(1, 2))
    sc.join(1, status(2))
    assert sc.row().epoch == 0
    sc.controller.spus[2].last_heartbeat -= 60.0
    sc.controller.check_liveness()  # SPU 2's grace is over
    assert sc.row() == PartitionRow("t", 0, [1, 2], 1, 3, [1, 2])


def test_one_epoch_claimed_by_another_leader_is_moved_past(
        restored: list[Sc], tmp_path: Path) -> None:
    sc = make(restored, tmp_path, PartitionRow("t", 0, [1, 2], 1, 4, [1, 2]), spus=(1, 2))
    sc.join(2, status(4, leader=True, isr=(2,)))
    assert sc.row() == PartitionRow("t", 0, [1, 2], 2, 5, [2])


def test_an_sc_in_step_with_its_spus_changes_nothing(
        restored: list[Sc], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    row = PartitionRow("t", 0, [1, 2, 3], 1, 3, [1, 2, 3])
    sc = make(restored, tmp_path, row)
    sc.join(1, status(3, leader=True, isr=(1, 2, 3)))
    sc.join(2, status(3))
    sc.join(3, status(2))  # behind: it learns epoch 3 from this SC's push
    sc.controller.heartbeat(2, {}, [status(3)], {})
    assert sc.row() == row
    assert not [r for r in caplog.records if "was behind" in r.getMessage()]


def test_later_elections_stay_above_every_reported_epoch(
        restored: list[Sc], tmp_path: Path) -> None:
    sc = make(restored, tmp_path, PartitionRow("t", 0, [1, 2, 3], 1, 0, [1, 2, 3]))
    sc.join(3, status(6))  # a follower at 6; no claimant yet, SPUs 1 and 2 still to come
    assert sc.row().epoch == 0
    sc.join(2, status(6))
    push = sc.controller.spus[2].push
    sc.controller.spu_disconnected(2, push)
    sc.join(1, status(6))
    # No one claims epoch 6: the usual election, at 7.
    assert (sc.row().leader, sc.row().epoch) == (1, 7)


def test_a_stopping_sc_elects_nobody_as_its_links_close(
        restored: list[Sc], tmp_path: Path) -> None:
    row = PartitionRow("t", 0, [1, 2], 1, 0, [1, 2])
    sc = make(restored, tmp_path, row, spus=(1, 2))
    sc.join(1, status(0, leader=True, isr=(1, 2)))
    sc.join(2, status(0))
    sc.controller.stopping = True
    for spu in (1, 2):
        sc.controller.spu_disconnected(spu, sc.controller.spus[spu].push)
    assert sc.row() == row


# the pure decisions -------------------------------------------------------------------


def test_behind_means_lower_or_the_same_epoch_with_another_leader() -> None:
    assert epoch_behind(5, 1, {2: status(7)}, -1) == 7
    assert epoch_behind(5, 1, {}, 6) == 6  # reported earlier, by an SPU gone since
    assert epoch_behind(5, 1, {1: status(5, leader=True), 2: status(5)}, 5) is None
    assert epoch_behind(5, 1, {2: status(5, leader=True)}, -1) == 5
    assert epoch_behind(5, None, {2: status(4, leader=True)}, 4) is None


def test_the_claimant_is_a_healthy_replica_leading_that_epoch() -> None:
    reports = {1: status(7), 2: status(7, leader=True, isr=(9, 1, 2)), 3: status(6)}
    assert reported_leader([1, 2, 3], reports, 7) == (2, [2, 1])
    assert reported_leader([1, 3], reports, 7) is None  # not in the replica set
    assert reported_leader([1, 2], {2: status(7, leader=True, failed=True)}, 7) is None
    assert reported_leader([1, 2], {2: status(6, leader=True)}, 7) is None
    assert reported_leader([1, 2], {2: status(7, leader=True, isr=None)}, 7) == (2, [2])

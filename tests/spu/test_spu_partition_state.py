"""A partition replica's replication state on real storage, without processes or
sockets: the high watermark, ISR proposals, min ISR and when an ack is released.

Followers are driven the way the leader sees them, through ``follower_fetched``
(what a REPLICA_FETCH reports: the follower's log end and its durable offset).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge.protocol.batch import encode_batch
from edge.protocol.errors import NotEnoughReplicas, NotLeader
from edge.protocol.messages import Acks
from edge.spu.partition import Partition
from edge.storage.config import LogConfig
from edge.storage.log import PartitionLog

# How long a follower may lag in the ISR tests; the tests sleep twice as long.
LAG_S = 0.05
RECORDS = 3  # records per test batch: each append moves the log end by 3

Opener = Callable[..., Partition]


def batch() -> bytearray:
    return bytearray(
        encode_batch([[i, None, b"reading!"] for i in range(RECORDS)], first_timestamp=1_000)
    )


@pytest.fixture
def open_partition(tmp_path: Path) -> Iterator[Opener]:
    """Partition t/0 on SPU 1, led by SPU 1 with replicas 1-3 unless told otherwise."""
    opened: list[Partition] = []

    def open_(
        *,
        spu_id: int = 1,
        leader: int | None = 1,
        replicas: tuple[int, ...] = (1, 2, 3),
        isr: tuple[int, ...] | None = None,
        durability: str = "always",
        min_isr: int = 1,
        epoch: int = 0,
        guard: Callable[[], bool] | None = None,
    ) -> Partition:
        plog = PartitionLog.open(tmp_path / f"t-{len(opened)}", LogConfig(durability=durability))
        p = Partition(
            "t",
            0,
            plog,
            spu_id=spu_id,
            durability=durability,
            leader_epoch=epoch,
            leader_id=leader,
            replicas=list(replicas),
            isr=list(replicas if isr is None else isr),
            min_isr=min_isr,
            ack_guard=guard,
        )
        opened.append(p)
        return p

    yield open_
    for p in opened:
        p.log.close()


# high watermark -------------------------------------------------------------------


def test_the_hw_is_the_smallest_durable_offset_in_the_isr(open_partition: Opener) -> None:
    p = open_partition()
    p.append(batch())
    p.append(batch())
    assert (p.log.flushed_offset, p.high_watermark) == (6, 0)
    p.follower_fetched(2, 6, 6)
    assert p.high_watermark == 0  # SPU 3 has not fetched yet
    p.follower_fetched(3, 6, 3)
    assert p.high_watermark == 3
    p.follower_fetched(3, 6, 6)
    assert p.high_watermark == 6


def test_a_follower_outside_the_isr_does_not_hold_the_hw_back(open_partition: Opener) -> None:
    p = open_partition(isr=(1, 2))
    p.append(batch())
    p.follower_fetched(3, 0, 0)
    p.follower_fetched(2, 3, 3)
    assert p.high_watermark == 3


def test_the_hw_waits_for_the_follower_fsync_not_its_log_end(open_partition: Opener) -> None:
    p = open_partition(replicas=(1, 2))
    p.append(batch())
    p.append(batch())
    p.follower_fetched(2, 6, 0)
    assert p.high_watermark == 0
    # A follower cannot have more on disk than it has: durable is capped at its offset.
    p.follower_fetched(2, 3, 6)
    assert p.high_watermark == 3


def test_without_fsync_the_hw_follows_log_ends(open_partition: Opener) -> None:
    p = open_partition(replicas=(1, 2), durability="never")
    p.append(batch())
    p.follower_fetched(2, 3, 0)
    assert p.high_watermark == 3


async def test_the_hw_waits_for_the_leaders_own_group_commit(open_partition: Opener) -> None:
    p = open_partition(replicas=(1,), durability="group")
    p.append(batch())
    assert p.high_watermark == 0  # the flush runs one tick later
    await p.wait_durable()
    assert p.high_watermark == 3


def test_shrinking_the_isr_releases_the_hw(open_partition: Opener) -> None:
    p = open_partition()
    p.append(batch())
    p.follower_fetched(2, 3, 3)
    assert p.high_watermark == 0
    p.apply_isr([1, 2])
    assert (p.isr, p.high_watermark) == ([1, 2], 3)


def test_the_hw_never_moves_back(open_partition: Opener) -> None:
    p = open_partition(isr=(1, 2))
    p.append(batch())
    p.follower_fetched(2, 3, 3)
    p.apply_isr([1, 2, 3])  # SPU 3 rejoins, reporting nothing yet
    p.follower_fetched(3, 0, 0)
    assert p.high_watermark == 3


def test_a_follower_takes_the_leader_hw_capped_at_its_log_end(open_partition: Opener) -> None:
    p = open_partition(spu_id=2, leader=1)
    p.append_replica(batch(), 0)
    p.follower_hw(10)
    assert (p.log.log_end_offset, p.high_watermark) == (3, 3)
    p.append_replica(batch(), 0)
    p.follower_hw(4)
    assert p.high_watermark == 4
    p.follower_hw(2)  # a new leader whose own HW still lags: this one does not move back
    assert p.high_watermark == 4


# ISR proposals --------------------------------------------------------------------


def test_followers_that_keep_up_leave_the_isr_alone(open_partition: Opener) -> None:
    p = open_partition()
    p.append(batch())
    time.sleep(2 * LAG_S)
    p.follower_fetched(2, 3, 3)
    p.follower_fetched(3, 3, 3)
    assert p.isr_proposal(LAG_S) is None


def test_a_follower_stuck_behind_the_log_end_leaves_after_the_lag(
    open_partition: Opener,
) -> None:
    p = open_partition()
    p.append(batch())
    p.follower_fetched(2, 3, 3)
    p.follower_fetched(3, 0, 0)
    assert p.isr_proposal(LAG_S) is None  # within the grace a new leader gives
    time.sleep(2 * LAG_S)
    p.follower_fetched(2, 3, 3)
    p.follower_fetched(3, 0, 0)  # still fetching, never reaching the log end
    assert p.isr_proposal(LAG_S) == [1, 2]


def test_a_silent_follower_leaves_after_the_lag(open_partition: Opener) -> None:
    p = open_partition()
    time.sleep(2 * LAG_S)
    p.follower_fetched(3, 0, 0)
    assert p.isr_proposal(LAG_S) == [1, 3]
    assert p.isr_proposal(10.0) is None


def test_a_follower_rejoins_once_it_reaches_the_hw(open_partition: Opener) -> None:
    p = open_partition(isr=(1, 2))
    p.append(batch())
    p.follower_fetched(2, 3, 3)
    p.follower_fetched(3, 0, 0)
    assert p.isr_proposal(LAG_S) is None  # below the HW of 3
    p.follower_fetched(3, 3, 3)
    proposal = p.isr_proposal(LAG_S)
    assert proposal == [1, 2, 3]
    p.apply_isr(proposal)
    p.append(batch())
    p.follower_fetched(2, 6, 6)
    assert p.high_watermark == 3  # SPU 3 counts again


def test_only_replicas_join_the_isr(open_partition: Opener) -> None:
    p = open_partition(isr=(1, 2), replicas=(1, 2))
    p.follower_fetched(9, 0, 0)
    assert p.isr_proposal(LAG_S) is None


def test_the_leader_puts_itself_back_into_an_isr_that_lacks_it(open_partition: Opener) -> None:
    p = open_partition(replicas=(1, 2), isr=())
    assert p.isr_proposal(LAG_S) == [1]


def test_no_proposal_while_one_is_pending_or_from_a_follower(open_partition: Opener) -> None:
    leader = open_partition(isr=(1, 2))
    leader.follower_fetched(3, 0, 0)
    assert leader.isr_proposal(LAG_S) == [1, 2, 3]
    with leader.proposing_isr():
        assert leader.isr_pending
        assert leader.isr_proposal(LAG_S) is None
    assert leader.isr_proposal(LAG_S) == [1, 2, 3]
    follower = open_partition(spu_id=2, leader=1, isr=(1,))
    assert follower.isr_proposal(LAG_S) is None


def test_a_pending_proposal_keeps_the_isr_until_the_epoch_changes(open_partition: Opener) -> None:
    p = open_partition()

    def sc_says(epoch: int, isr: list[int]) -> bool:
        return p.update_role(epoch=epoch, leader_id=1, replicas=[1, 2, 3], isr=isr, min_isr=1)

    with p.proposing_isr():
        assert not sc_says(0, [1])  # the SC's view from before the proposal
        assert p.isr == [1, 2, 3]
        assert sc_says(1, [1, 2])
        assert p.isr == [1, 2]
    sc_says(1, [1])
    assert p.isr == [1]


# min ISR, the ack guard -----------------------------------------------------------


def test_min_isr_counts_the_in_sync_replicas(open_partition: Opener) -> None:
    p = open_partition(isr=(1,), min_isr=2)
    with pytest.raises(NotEnoughReplicas) as info:
        p.check_min_isr()
    assert (info.value.retriable, info.value.data) == (True, {"isr": 1, "min_isr": 2})
    p.apply_isr([1, 3])
    p.check_min_isr()


def test_a_replicated_leader_acknowledges_only_when_the_guard_allows(
    open_partition: Opener,
) -> None:
    allowed = [False]
    p = open_partition(guard=lambda: allowed[0])
    assert not p.may_acknowledge()
    allowed[0] = True
    assert p.may_acknowledge()


def test_a_single_replica_never_waits_for_the_guard(open_partition: Opener) -> None:
    assert open_partition(replicas=(1,), guard=lambda: False).may_acknowledge()


def test_a_follower_never_acknowledges(open_partition: Opener) -> None:
    assert not open_partition(spu_id=2, leader=1, guard=lambda: True).may_acknowledge()


# when an ack is released ----------------------------------------------------------


async def test_acks_leader_waits_for_the_fsync_that_covers_the_batch(
    open_partition: Opener,
) -> None:
    p = open_partition(durability="group")
    end = p.append(batch()).last_offset + 1
    pending = p.ack_future(end, Acks.LEADER)
    assert pending is not None
    assert not pending.done()
    await asyncio.wait_for(pending, 2.0)
    assert p.log.flushed_offset == end
    assert p.ack_future(end, Acks.LEADER) is None
    assert p.high_watermark == 0  # acks=leader does not wait for the followers


def test_acks_leader_without_fsync_is_answered_at_once(open_partition: Opener) -> None:
    p = open_partition(durability="never")
    end = p.append(batch()).last_offset + 1
    assert p.ack_future(end, Acks.LEADER) is None


async def test_acks_all_waits_for_the_hw_in_offset_order(open_partition: Opener) -> None:
    p = open_partition(replicas=(1, 2))
    first = p.ack_future(p.append(batch()).last_offset + 1, Acks.ALL)
    second = p.ack_future(p.append(batch()).last_offset + 1, Acks.ALL)
    assert first is not None
    assert second is not None
    assert p.log.flushed_offset == 6  # on the leader's disk, not yet acknowledged
    p.follower_fetched(2, 6, 3)
    assert first.done()
    assert first.result() is None
    assert not second.done()
    p.follower_fetched(2, 6, 6)
    assert second.done()
    assert second.result() is None
    assert p.ack_future(6, Acks.ALL) is None


async def test_acks_all_from_a_leader_alone_in_the_isr_is_answered_at_once(
    open_partition: Opener,
) -> None:
    p = open_partition(isr=(1,))
    assert p.ack_future(p.append(batch()).last_offset + 1, Acks.ALL) is None


async def test_acks_all_fails_retriably_when_the_isr_shrinks_below_min_isr(
    open_partition: Opener,
) -> None:
    p = open_partition(replicas=(1, 2), min_isr=2)
    p.check_min_isr()
    pending = p.ack_future(p.append(batch()).last_offset + 1, Acks.ALL)
    assert pending is not None
    p.apply_isr([1])  # the HW now covers the batch, on one replica only
    assert p.high_watermark == 3
    assert pending.done()
    with pytest.raises(NotEnoughReplicas) as info:
        pending.result()
    assert info.value.retriable


async def test_losing_leadership_fails_the_waiting_acks(open_partition: Opener) -> None:
    p = open_partition(replicas=(1, 2), durability="group")
    end = p.append(batch()).last_offset + 1
    on_all = p.ack_future(end, Acks.ALL)
    on_leader = p.ack_future(end, Acks.LEADER)
    assert p.update_role(epoch=1, leader_id=2, replicas=[1, 2], isr=[2], min_isr=1)
    assert not p.is_leader
    for pending in (on_all, on_leader):
        assert pending is not None
        with pytest.raises(NotLeader):
            await pending
    await p.wait_durable()


def test_an_older_epoch_does_not_change_the_leader(open_partition: Opener) -> None:
    p = open_partition(epoch=3)
    assert not p.update_role(epoch=2, leader_id=2, replicas=[1, 2, 3], isr=[2], min_isr=1)
    assert (p.is_leader, p.leader_epoch, p.isr) == (True, 3, [1, 2, 3])

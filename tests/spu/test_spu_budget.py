"""The SPU's disk budget over real partition logs, without processes: which
segments make room for a write, and when a write is refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.protocol.batch import encode_batch
from edge.protocol.errors import BudgetExceeded
from edge.spu.budget import NodeBudget
from edge.spu.partition import Partition
from edge.storage.budget import Policy, TopicBudget
from edge.storage.config import LogConfig
from edge.storage.log import PartitionLog

SEGMENT = 4096


def _batch() -> bytearray:
    return bytearray(encode_batch([[0, None, b"v" * 900]], first_timestamp=1_000))


BATCH = len(_batch())


class Node:
    def __init__(self, tmp: Path, limit: int | None) -> None:
        self.tmp = tmp
        self.partitions: dict[tuple[str, int], Partition] = {}
        self.budget = NodeBudget(limit, self.partitions)

    def partition(self, topic: str, *, batches: int, cloud: int | None = None,
                  budget: TopicBudget | None = None) -> Partition:
        plog = PartitionLog.open(self.tmp / f"{topic}-0",
                                 LogConfig(durability="never", segment_bytes=SEGMENT))
        # A follower: no flush task, the log is driven directly.
        p = Partition(topic, 0, plog, spu_id=1, durability="never", leader_epoch=0,
                      leader_id=2, replicas=[1, 2], isr=[1, 2])
        p.budget = budget or TopicBudget()
        p.cloud_acked = cloud
        for _ in range(batches):
            plog.append(_batch(), leader_epoch=0)
        plog.set_high_watermark(plog.log_end_offset)
        self.partitions[(topic, 0)] = p
        return p

    def used(self) -> int:
        return sum(p.log.size_bytes for p in self.partitions.values())


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    n = Node(tmp_path, None)
    yield n
    for p in n.partitions.values():
        p.log.close()


def test_what_the_cloud_has_goes_first_from_any_topic(node: Node) -> None:
    sent = node.partition("sent", batches=20, cloud=8)  # the first 8 offsets are in the cloud
    own = node.partition("own", batches=20, budget=TopicBudget(None, Policy.DROP_OLDEST))
    node.budget.limit = node.used()
    node.budget.make_room(own, BATCH)
    assert sent.log.log_start_offset > 0  # the sent topic gave room
    assert sent.log.log_start_offset <= 8  # but only what the cloud has
    assert own.log.log_start_offset == 0
    assert own.log.dropped.records == 0
    assert node.used() + BATCH <= node.budget.limit


def test_drop_oldest_then_drops_its_own_unsent_data_and_counts_it(node: Node) -> None:
    sent = node.partition("sent", batches=20, cloud=4)
    own = node.partition("own", batches=20, budget=TopicBudget(None, Policy.DROP_OLDEST))
    node.budget.limit = node.used() - 3 * SEGMENT
    node.budget.make_room(own, BATCH)
    assert node.used() + BATCH <= node.budget.limit
    assert sent.log.log_start_offset <= 4  # never what the cloud lacks of another topic
    assert own.log.log_start_offset > 0
    assert own.log.dropped.records == own.log.log_start_offset


def test_reject_new_deletes_nothing_the_cloud_lacks(node: Node) -> None:
    other = node.partition("other", batches=20)
    mine = node.partition("mine", batches=20)
    node.budget.limit = node.used()
    with pytest.raises(BudgetExceeded, match="reject-new"):
        node.budget.make_room(mine, BATCH)
    assert (other.log.log_start_offset, mine.log.log_start_offset) == (0, 0)
    assert node.budget.refused == 1
    mine.cloud_acked = mine.log.log_end_offset  # the uplink delivered it all
    node.budget.make_room(mine, BATCH)
    assert mine.log.log_start_offset > 0
    assert mine.log.dropped.records == 0


def test_a_topic_budget_counts_only_its_topic(node: Node) -> None:
    big = node.partition("big", batches=30)
    capped = node.partition("capped", batches=10, budget=TopicBudget(
        64 * 1024, Policy.DROP_OLDEST))
    node.budget.make_room(capped, BATCH)  # 10 batches fit in 64 KiB: nothing happens
    assert capped.log.log_start_offset == 0
    capped.budget = TopicBudget(capped.log.size_bytes, Policy.DROP_OLDEST)
    node.budget.make_room(capped, BATCH)
    assert capped.log.log_start_offset > 0
    assert big.log.log_start_offset == 0


async def test_a_producers_retry_of_a_stored_batch_is_answered_even_when_full(
        tmp_path: Path) -> None:
    """The budget is asked only for batches that are written: a retried batch the log
    already has gets its offsets, not BUDGET_EXCEEDED (the producer would report a
    stored record as failed)."""
    plog = PartitionLog.open(tmp_path / "t-0", LogConfig(durability="never",
                                                        segment_bytes=SEGMENT))
    p = Partition("t", 0, plog, spu_id=1, durability="never", leader_epoch=0, leader_id=1,
                  replicas=[1], isr=[1])
    budget = NodeBudget(None, {("t", 0): p})
    p.make_room = budget.make_room
    try:
        sent = bytearray(encode_batch([[0, None, b"v" * 900]], first_timestamp=1_000,
                                      producer_id=7, producer_epoch=0, base_sequence=0))
        first = p.append(bytearray(sent))
        budget.limit = p.log.size_bytes  # full now, and nothing the cloud has
        with pytest.raises(BudgetExceeded):
            p.append(bytearray(encode_batch([[0, None, b"w" * 900]], first_timestamp=1_000,
                                            producer_id=7, producer_epoch=0,
                                            base_sequence=1)))
        retry = p.append(bytearray(sent))
        assert retry.duplicate
        assert (retry.base_offset, retry.last_offset) == (first.base_offset, first.last_offset)
    finally:
        await p.close()

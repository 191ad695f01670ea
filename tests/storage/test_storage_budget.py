"""Disk budget rules (pure planner), eviction with drop counting, gap batches in a log."""

from __future__ import annotations

from pathlib import Path

import pytest
from storage_helpers import SMALL, batch, read_everything

from edge.protocol import batch as codec
from edge.protocol.errors import CorruptBatch
from edge.storage import PartitionLog
from edge.storage.budget import Candidate, Policy, TopicBudget, plan
from edge.storage.losses import DropTally, GapLedger


def seg(topic: str, base: int, size: int, ts: int, *, sent: bool) -> Candidate:
    return Candidate((topic, 0), base, base + 10, size, ts, sent)


def test_sent_segments_go_first_across_topics_oldest_first() -> None:
    a = [seg("a", 0, 100, 5, sent=True), seg("a", 10, 100, 9, sent=False)]
    b = [seg("b", 0, 100, 1, sent=True), seg("b", 10, 100, 7, sent=True)]
    got = plan([a, b], 250, drop_from=None)
    assert got == [b[0], a[0], b[1]]


def test_unsent_data_goes_only_from_the_writing_topic_under_drop_oldest() -> None:
    a = [seg("a", 0, 100, 1, sent=False)]
    b = [seg("b", 0, 100, 2, sent=False), seg("b", 10, 100, 3, sent=False)]
    assert plan([a, b], 150, drop_from=None) is None  # reject-new: nothing deleted
    assert plan([a, b], 150, drop_from=("b", 0)) == b
    assert plan([a, b], 250, drop_from=("b", 0)) is None  # never another topic's data
    assert plan([a, b], 0) == []


def test_topic_budget_settings_are_validated() -> None:
    assert TopicBudget.from_config({}) == TopicBudget(None, Policy.REJECT_NEW)
    assert TopicBudget.from_config({"budget_bytes": 2**20, "budget_policy": "drop-oldest"}
                                   ) == TopicBudget(2**20, Policy.DROP_OLDEST)
    for bad in ({"budget_policy": "newest"}, {"budget_bytes": 10}, {"budget_bytes": "1M"}):
        with pytest.raises(ValueError, match="budget_"):
            TopicBudget.from_config(bad)


def test_eviction_counts_what_the_cloud_lacked_and_persists_it(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path / "p", SMALL)
    for _ in range(40):
        log.append(batch(2), leader_epoch=0)
    log.flush()
    log.set_high_watermark(log.log_end_offset)
    candidates = log.evictable(("t", 0), log.high_watermark, sent=4)
    assert len(candidates) >= 3
    assert candidates[0].base_offset == 0
    first, second = candidates[0], candidates[1]
    assert first.sent is (first.next_offset <= 4)
    gone = log.evict_oldest(2, covered=4)
    assert gone.segments == 2
    assert gone.bytes == first.size + second.size
    assert gone.lost_records == second.next_offset - 4
    assert log.log_start_offset == second.next_offset
    assert next(h.base_offset for h in read_everything(log)) == second.next_offset
    log.close()
    tally = DropTally(tmp_path / "p")
    assert (tally.records, tally.bytes, tally.bursts) == (gone.lost_records, gone.lost_bytes, 1)


def test_gap_batch_round_trip_and_ledger(tmp_path: Path) -> None:
    gap = codec.encode_gap(500, timestamp=7)
    h = codec.validate(gap)
    assert (h.is_gap, h.record_count, h.next_offset) == (True, 0, 500)
    assert codec.decode_records(gap) == []
    forged = bytearray(codec.encode_batch([[0, None, b"x"]], first_timestamp=1))
    forged[22] |= codec.GAP_ATTRIBUTE
    with pytest.raises(CorruptBatch):
        codec.verify(forged)
    with pytest.raises(ValueError, match="gap covers"):
        codec.encode_gap(0, timestamp=0)
    log = PartitionLog.open(tmp_path / "p", SMALL)
    log.append(batch(3), leader_epoch=0, replica=True)
    log.append(bytearray(gap), leader_epoch=0, replica=True)
    log.append(batch(1), leader_epoch=0, replica=True)
    assert log.log_end_offset == 504
    assert [h.base_offset for h in read_everything(log)] == [0, 3, 503]
    log.truncate_to(503)
    assert (log.gaps.count, log.gaps.offsets) == (1, 500)
    log.truncate_to(3)
    log.close()
    ledger = GapLedger(tmp_path / "p")
    assert (ledger.count, ledger.offsets, ledger.ranges) == (0, 0, [])

"""Idempotent producers: the sequence rules (pure) and dedup that survives restarts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from storage_helpers import SMALL, batch, crash, read_everything

from edge.protocol.errors import InvalidProducerEpoch, OutOfOrderSequence
from edge.storage import LogConfig, PartitionLog
from edge.storage.checkpoint import CHECKPOINT_NAME
from edge.storage.producer_state import (
    BATCH_CACHE,
    SEQ_MODULUS,
    BatchMeta,
    ProducerStateTable,
    last_sequence,
)

PID = 42
seqs = st.integers(0, SEQ_MODULUS - 1)
near_wrap = st.integers(SEQ_MODULUS - 40, SEQ_MODULUS - 1)
counts = st.integers(1, 20)


# -- pure rules ---------------------------------------------------------------------------


def test_sequences_wrap_after_the_largest_i32() -> None:
    assert last_sequence(SEQ_MODULUS - 1, 1) == SEQ_MODULUS - 1
    assert last_sequence(SEQ_MODULUS - 2, 5) == 2
    table = ProducerStateTable()
    table.record(PID, 0, SEQ_MODULUS - 3, 3, base_offset=0, last_offset=2)
    assert table.check(PID, 0, 0, 4) is None
    with pytest.raises(OutOfOrderSequence) as exc:
        table.check(PID, 0, 1, 1)
    assert (exc.value.data["expected"], exc.value.data["received"]) == (0, 1)


def test_non_idempotent_batches_are_never_checked() -> None:
    table = ProducerStateTable()
    table.record(-1, -1, -1, 5, base_offset=0, last_offset=4)
    assert len(table) == 0
    assert table.check(-1, -1, -1, 5) is None


@given(pid=st.integers(0, 2**63 - 1), epoch=st.integers(0, 2**15 - 1), seq=seqs, n=counts)
def test_an_unknown_producer_may_start_anywhere(pid: int, epoch: int, seq: int, n: int) -> None:
    assert ProducerStateTable().check(pid, epoch, seq, n) is None


@given(start=seqs, sizes=st.lists(counts, min_size=1, max_size=30))
def test_consecutive_batches_are_accepted_across_the_wrap(start: int, sizes: list[int]) -> None:
    table = ProducerStateTable()
    seq, offset = start, 0
    for n in sizes:
        assert table.check(PID, 3, seq, n) is None
        table.record(PID, 3, seq, n, base_offset=offset, last_offset=offset + n - 1)
        seq, offset = (seq + n) % SEQ_MODULUS, offset + n
    entry = table.get(PID)
    assert entry is not None
    assert entry.last_seq == (seq - 1) % SEQ_MODULUS


@given(start=near_wrap, gap=st.integers(1, 2**30 - 1), n=counts)
def test_a_gap_is_out_of_order_with_expected_and_received(start: int, gap: int, n: int) -> None:
    table = ProducerStateTable()
    table.record(PID, 0, start, n, base_offset=0, last_offset=n - 1)
    expected = (start + n) % SEQ_MODULUS
    received = (expected + gap) % SEQ_MODULUS
    with pytest.raises(OutOfOrderSequence) as exc:
        table.check(PID, 0, received, 1)
    assert exc.value.data["expected"] == expected
    assert exc.value.data["received"] == received
    assert "too old" not in str(exc.value)


def test_epochs_fence_and_restart_sequences() -> None:
    table = ProducerStateTable()
    table.record(PID, 5, 100, 10, base_offset=0, last_offset=9)
    with pytest.raises(InvalidProducerEpoch) as exc:
        table.check(PID, 4, 110, 1)
    assert (exc.value.data["stored"], exc.value.data["received"]) == (5, 4)
    assert table.check(PID, 6, 0, 1) is None  # a new epoch starts wherever it likes
    table.record(PID, 6, 0, 1, base_offset=10, last_offset=10)
    with pytest.raises(OutOfOrderSequence):
        table.check(PID, 6, 100, 10)  # the old epoch's batches are not duplicates any more


def test_negative_sequence_or_epoch_of_an_idempotent_producer() -> None:
    with pytest.raises(OutOfOrderSequence):
        ProducerStateTable().check(PID, 0, -1, 1)
    with pytest.raises(OutOfOrderSequence):
        ProducerStateTable().check(PID, -1, 0, 1)


def test_truncate_and_evict() -> None:
    table = ProducerStateTable()
    for i in range(4):
        table.record(PID, 0, i * 10, 10, base_offset=i * 10, last_offset=i * 10 + 9)
    table.record(7, 0, 0, 10, base_offset=40, last_offset=49)
    table.truncate(20)
    entry = table.get(PID)
    assert entry is not None
    assert entry.last_seq == 19
    assert len(entry.batches) == 2
    assert table.get(7) is None  # nothing of it is left in the log
    assert table.evict_below(20) == 1
    assert len(table) == 0


def test_snapshot_round_trip_and_bad_input() -> None:
    table = ProducerStateTable()
    for pid in range(3):
        for i in range(7):
            table.record(pid, pid, i, 2, base_offset=100 * pid + i, last_offset=100 * pid + i + 1)
    raw = table.to_bytes()
    again = ProducerStateTable.from_bytes(raw)
    assert again.to_bytes() == raw
    for bad in (raw[:-1], raw + b"\x00", b"\x02" + raw[1:], b""):
        with pytest.raises(ValueError):
            ProducerStateTable.from_bytes(bad)


class ProducerModel(RuleBasedStateMachine):
    """A producer that retries, skips, re-sends and bumps epochs, checked against the rules."""

    @initialize(start=st.one_of(near_wrap, seqs))
    def setup(self, start: int) -> None:
        self.table = ProducerStateTable()
        self.epoch = 0
        self.next_seq = start
        self.leo = 0
        self.sent: list[BatchMeta] = []  # accepted batches of the current epoch
        self.started = False

    def _append(self, n: int) -> None:
        first = self.next_seq
        assert self.table.check(PID, self.epoch, first, n) is None
        meta = BatchMeta(first, last_sequence(first, n), self.leo, self.leo + n - 1)
        self.table.record(PID, self.epoch, first, n, base_offset=meta.base_offset,
                          last_offset=meta.last_offset)
        self.sent.append(meta)
        self.leo += n
        self.next_seq = (meta.last_seq + 1) % SEQ_MODULUS
        self.started = True

    @rule(n=counts)
    def send_next(self, n: int) -> None:
        self._append(n)

    @precondition(lambda self: self.sent)
    @rule(data=st.data())
    def retry_recent(self, data: st.DataObject) -> None:
        meta = data.draw(st.sampled_from(self.sent[-BATCH_CACHE:]))
        n = (meta.last_seq - meta.first_seq) % SEQ_MODULUS + 1
        assert self.table.check(PID, self.epoch, meta.first_seq, n) == meta

    @precondition(lambda self: len(self.sent) > BATCH_CACHE)
    @rule(data=st.data())
    def retry_too_old(self, data: st.DataObject) -> None:
        meta = data.draw(st.sampled_from(self.sent[:-BATCH_CACHE]))
        n = (meta.last_seq - meta.first_seq) % SEQ_MODULUS + 1
        with pytest.raises(OutOfOrderSequence, match="too old"):
            self.table.check(PID, self.epoch, meta.first_seq, n)

    @precondition(lambda self: self.started)
    @rule(gap=st.integers(1, 1000), n=counts)
    def skip_ahead(self, gap: int, n: int) -> None:
        received = (self.next_seq + gap) % SEQ_MODULUS
        with pytest.raises(OutOfOrderSequence) as exc:
            self.table.check(PID, self.epoch, received, n)
        assert exc.value.data == {
            "producer_id": PID, "expected": self.next_seq, "received": received
        }

    @rule(start=seqs, n=counts)
    def new_epoch(self, start: int, n: int) -> None:
        self.epoch += 1
        self.next_seq = start
        self.sent = []
        self._append(n)

    @precondition(lambda self: self.started and self.epoch > 0)
    @rule(n=counts)
    def zombie(self, n: int) -> None:
        with pytest.raises(InvalidProducerEpoch):
            self.table.check(PID, self.epoch - 1, self.next_seq, n)

    @rule()
    def snapshot_and_restore(self) -> None:
        self.table = ProducerStateTable.from_bytes(self.table.to_bytes())

    @invariant()
    def cache_is_the_last_five(self) -> None:
        entry = self.table.get(PID)
        if entry is not None:
            assert list(entry.batches) == self.sent[-BATCH_CACHE:]


ProducerModel.TestCase.settings = settings(max_examples=150, stateful_step_count=40)
test_producer_model = ProducerModel.TestCase


# -- through the log ----------------------------------------------------------------------


def produce(
    log: PartitionLog, seq: int, n: int = 3, *, epoch: int = 0, tag: int = 0
) -> tuple[int, int, bool]:
    r = log.append(batch(n, tag=tag, producer=(PID, epoch, seq)), leader_epoch=1)
    return r.base_offset, r.last_offset, r.duplicate


def test_duplicates_get_the_original_offsets_and_write_nothing(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path / "p", SMALL)
    assert produce(log, 0) == (0, 2, False)
    log.append(batch(2), leader_epoch=1)  # someone else in between
    assert produce(log, 3) == (5, 7, False)
    size, leo = log.size_bytes, log.log_end_offset
    assert produce(log, 0) == (0, 2, True)
    assert produce(log, 3) == (5, 7, True)
    assert (log.size_bytes, log.log_end_offset) == (size, leo)
    with pytest.raises(OutOfOrderSequence):
        produce(log, 9)
    log.close()


def test_dedup_survives_close_and_reopen(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path / "p", SMALL)
    for i in range(20):  # spread over several segments
        produce(log, 3 * i, tag=i)
    log.close()
    log = PartitionLog.open(tmp_path / "p", SMALL)
    assert produce(log, 57) == (57, 59, True)
    assert produce(log, 45) == (45, 47, True)
    with pytest.raises(OutOfOrderSequence, match="too old"):
        produce(log, 0)
    assert produce(log, 60) == (60, 62, False)
    log.close()


@pytest.mark.parametrize("checkpointed", [0, 5, 18])
def test_dedup_survives_a_crash_after_flush(tmp_path: Path, checkpointed: int) -> None:
    """The state is rebuilt from the snapshot plus the batches scanned after it."""
    log = PartitionLog.open(tmp_path / "p", SMALL)
    for i in range(20):
        produce(log, 3 * i, tag=i)
        if i + 1 == checkpointed:
            log.flush()
            log.write_checkpoints()
    log.flush()
    crash(log)
    if not checkpointed:
        (tmp_path / "p" / CHECKPOINT_NAME).unlink(missing_ok=True)
    log = PartitionLog.open(tmp_path / "p", SMALL)
    for i in range(15, 20):
        assert produce(log, 3 * i) == (3 * i, 3 * i + 2, True)
    assert produce(log, 60) == (60, 62, False)
    assert len(read_everything(log)) == 21
    log.close()


def test_a_torn_batch_is_forgotten_so_its_retry_is_written(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path / "p", LogConfig(retention_ms=None))
    produce(log, 0)
    log.flush()
    log.write_checkpoints()
    produce(log, 3)
    log.write_checkpoints()  # the snapshot already knows the batch that will be torn
    crash(log)
    seg = tmp_path / "p" / "00000000000000000000.log"
    os.truncate(seg, seg.stat().st_size - 1)
    log = PartitionLog.open(tmp_path / "p", LogConfig(retention_ms=None))
    assert log.log_end_offset == 3
    assert produce(log, 3) == (3, 5, False)  # not a "duplicate" of data that is gone
    assert produce(log, 0) == (0, 2, True)
    log.close()


def test_truncate_to_forgets_dropped_batches(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path / "p", SMALL)
    for i in range(4):
        produce(log, 3 * i)
    log.truncate_to(6)
    assert produce(log, 6) == (6, 8, False)
    assert produce(log, 3) == (3, 5, True)
    log.close()

"""The log against a list of batches: appends, flushes, retention, truncation, crashes,
power cuts and idle closes of its files in any order (opened as the SPU opens it,
without a directory lock of its own, so every descriptor reopens on use)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from storage_helpers import batch, crash, read_everything

from edge.storage import LogConfig, PartitionLog
from edge.storage.checkpoint import CHECKPOINT_NAME

BUDGET = 6000
CFG = LogConfig(
    segment_bytes=1500, index_interval_bytes=200, retention_ms=None, retention_bytes=BUDGET
)


class LogModel(RuleBasedStateMachine):
    """Model: the (base, last, tag) of every batch that must be in the log."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp())
        self.path = self.tmp / "p"
        self.log = PartitionLog.open(self.path, CFG, exclusive=False)
        self.batches: list[tuple[int, int, int]] = []
        self.tag = 0

    def teardown(self) -> None:
        self.log.close()
        shutil.rmtree(self.tmp)

    @property
    def leo(self) -> int:
        return self.batches[-1][1] + 1 if self.batches else self.log.log_start_offset

    @rule(records=st.integers(1, 9), size=st.integers(4, 400))
    def append(self, records: int, size: int) -> None:
        self.tag += 1
        r = self.log.append(batch(records, value_size=size, tag=self.tag), leader_epoch=1)
        assert r.base_offset == self.leo
        self.batches.append((r.base_offset, r.last_offset, self.tag))

    @rule()
    def flush(self) -> None:
        assert self.log.flush() == self.leo

    @rule()
    def checkpoint(self) -> None:
        self.log.write_checkpoints()

    @rule()
    def reopen(self) -> None:
        self.log.close()
        self.log = PartitionLog.open(self.path, CFG, exclusive=False)

    @rule()
    def process_crash(self) -> None:
        crash(self.log)  # the page cache survives: nothing is lost
        self.log = PartitionLog.open(self.path, CFG, exclusive=False)

    @rule()
    def lose_the_checkpoint(self) -> None:
        crash(self.log)
        (self.path / CHECKPOINT_NAME).unlink()
        self.log = PartitionLog.open(self.path, CFG, exclusive=False)

    @precondition(lambda self: self.batches)
    @rule(data=st.data())
    def power_cut(self, data: st.DataObject) -> None:
        """Lose an arbitrary part of what was never fsynced, in any unflushed segment."""
        flushed = self.log.flushed_offset
        segs = sorted(self.path.glob("*.log"))
        candidates = [p for i, p in enumerate(segs)
                      if i + 1 == len(segs) or int(segs[i + 1].stem) > flushed]
        victim = data.draw(st.sampled_from(candidates))
        base = int(victim.stem)
        floor = sum(
            len(self.log.read_bytes(b, 1)) for b, _, _ in self.batches if base <= b < flushed
        )
        crash(self.log)
        cut = data.draw(st.integers(floor, victim.stat().st_size))
        os.truncate(victim, cut)
        self.log = PartitionLog.open(self.path, CFG, exclusive=False)
        kept = [b for b in self.batches if b[0] < self.log.log_end_offset]
        assert self.log.log_end_offset >= flushed
        assert [b[0] for b in kept] == [b[0] for b in self.batches[: len(kept)]]
        self.batches = kept

    @precondition(lambda self: self.batches)
    @rule(data=st.data())
    def truncate(self, data: st.DataObject) -> None:
        offset = data.draw(st.integers(self.batches[0][0], self.leo))
        self.log.truncate_to(offset)
        self.batches = [b for b in self.batches if b[1] < offset]
        assert self.log.log_end_offset == self.leo

    @rule()
    def idle_close(self) -> None:
        self.log.release_idle()

    @rule()
    def retention(self) -> None:
        self.log.apply_retention(now_ms=0)
        assert self.log.size_bytes <= BUDGET or self.log.segment_count == 1
        self.batches = [b for b in self.batches if b[0] >= self.log.log_start_offset]

    @invariant()
    def log_matches_model(self) -> None:
        assert self.log.log_end_offset == self.leo
        got = read_everything(self.log)
        assert [(h.base_offset, h.last_offset) for h in got] == [b[:2] for b in self.batches]
        for base, _, tag in self.batches:  # the last value of each batch ends with its tag
            assert self.log.read_bytes(base, 1)[-4:] == tag.to_bytes(4, "big")


# STORAGE_MODEL_EXAMPLES=2000 for a longer hunt; the default keeps the suite fast.
LogModel.TestCase.settings = settings(
    max_examples=int(os.environ.get("STORAGE_MODEL_EXAMPLES", "60")),
    stateful_step_count=30,
    deadline=None,
)
test_log_model = LogModel.TestCase

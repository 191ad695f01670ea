"""Leader-epoch history of a partition: which epoch wrote which offsets.

Each entry ``(epoch, start_offset)`` says that leader epoch ``epoch`` wrote its
first record at ``start_offset``; an epoch ends where the next one starts (the
last one at the log end). A follower that rejoins asks the leader where its own
last epoch ended and truncates there, so an uncommitted tail written by a
deposed leader never survives (Kafka KIP-101).

File ``leader-epochs`` in the partition directory: a CBOR array of
``[epoch, start_offset]`` pairs, rewritten atomically (temp file, fsync, rename,
directory fsync) when an epoch begins or the log is truncated — rare events.
"""

from __future__ import annotations

import bisect
import logging
import os
from pathlib import Path
from typing import NamedTuple

import cbor2

log = logging.getLogger(__name__)

FILE = "leader-epochs"
UNDEFINED = -1


class EpochEntry(NamedTuple):
    epoch: int
    start_offset: int


class EpochCache:
    """Epoch → start offset, persisted next to the log."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / FILE
        self.entries: list[EpochEntry] = []
        try:
            raw = cbor2.loads(self.path.read_bytes())
            self.entries = [EpochEntry(int(e), int(o)) for e, o in raw]
        except FileNotFoundError:
            pass
        except Exception as exc:
            # Losing the history only costs a wider truncation on the next rejoin.
            log.warning("ignoring unreadable %s: %s", self.path, exc)

    @property
    def latest_epoch(self) -> int:
        return self.entries[-1].epoch if self.entries else UNDEFINED

    def assign(self, epoch: int, start_offset: int) -> None:
        """Record that ``epoch`` starts at ``start_offset`` (no-op if already known)."""
        if self.entries and epoch <= self.entries[-1].epoch:
            return
        self.entries.append(EpochEntry(epoch, start_offset))
        self._save()

    def end_offset_for(self, epoch: int, log_end: int) -> tuple[int, int]:
        """``(epoch', end)``: the largest known epoch <= ``epoch`` and the offset where
        it ended (the next epoch's start, or ``log_end`` for the latest)."""
        if not self.entries or epoch < self.entries[0].epoch:
            return UNDEFINED, 0 if not self.entries else self.entries[0].start_offset
        epochs = [e.epoch for e in self.entries]
        i = bisect.bisect_right(epochs, epoch) - 1
        found = self.entries[i]
        end = self.entries[i + 1].start_offset if i + 1 < len(self.entries) else log_end
        return found.epoch, end

    def truncate_from(self, offset: int) -> None:
        """Forget epochs that start at or after ``offset`` (the log was cut there)."""
        keep = [e for e in self.entries if e.start_offset < offset]
        if keep != self.entries:
            self.entries = keep
            self._save()

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("wb") as f:
            f.write(cbor2.dumps([list(e) for e in self.entries]))
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path)
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

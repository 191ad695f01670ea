"""Idempotent-producer state of one partition: pure bookkeeping, no I/O.

The leader keeps, per producer id, the current epoch, the last sequence it
accepted and the last ``BATCH_CACHE`` batches (first/last sequence and the
offsets they got), so that a retried batch is answered with its original
offsets instead of being written twice (Kafka keeps the same window of 5).

Sequences are i32 counters that wrap: after ``2**31 - 1`` comes ``0``. "Ahead"
and "behind" are decided modulo ``2**31`` with half the space on each side.

Snapshot layout (big-endian), stored inside the partition checkpoint::

    offset size field
    0      1    version        u8   1
    1      4    producer_count u32
    then per producer:
           8    producer_id    i64
           2    epoch          i16
           4    last_seq       i32
           1    batch_count    u8   <= BATCH_CACHE, oldest first
           then per batch (24 bytes):
           4    first_seq      i32
           4    last_seq       i32
           8    base_offset    i64
           8    last_offset    i64
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Iterator
from typing import Final, NamedTuple

from edge.protocol.errors import InvalidProducerEpoch, OutOfOrderSequence

BATCH_CACHE: Final = 5
SEQ_MODULUS: Final = 2**31
NO_PRODUCER: Final = -1
SNAPSHOT_VERSION: Final = 1
_HEAD: Final = struct.Struct(">BI")
_PRODUCER: Final = struct.Struct(">qhiB")
_BATCH: Final = struct.Struct(">iiqq")


class BatchMeta(NamedTuple):
    """Sequences and offsets of one appended batch of a producer."""

    first_seq: int
    last_seq: int
    base_offset: int
    last_offset: int


class ProducerEntry:
    """What the partition remembers of one producer id."""

    __slots__ = ("batches", "epoch", "last_seq")

    def __init__(self, epoch: int, last_seq: int, batches: deque[BatchMeta] | None = None) -> None:
        self.epoch = epoch
        self.last_seq = last_seq
        self.batches: deque[BatchMeta] = batches if batches is not None else deque(
            maxlen=BATCH_CACHE
        )

    def cached(self, first_seq: int, last_seq: int) -> BatchMeta | None:
        for meta in self.batches:
            if meta.first_seq == first_seq and meta.last_seq == last_seq:
                return meta
        return None


def last_sequence(base_sequence: int, record_count: int) -> int:
    """Sequence of the last record of a batch, wrapping at ``2**31``."""
    return (base_sequence + record_count - 1) % SEQ_MODULUS


def next_sequence(seq: int) -> int:
    return (seq + 1) % SEQ_MODULUS


def is_behind(received: int, expected: int) -> bool:
    """True when ``received`` lies in the half of the sequence space before ``expected``."""
    return (received - expected) % SEQ_MODULUS >= SEQ_MODULUS // 2


class ProducerStateTable:
    """Per-producer epochs, sequences and the last batches of one partition."""

    def __init__(self) -> None:
        self._producers: dict[int, ProducerEntry] = {}

    def __len__(self) -> int:
        return len(self._producers)

    def get(self, producer_id: int) -> ProducerEntry | None:
        return self._producers.get(producer_id)

    def check(
        self, producer_id: int, epoch: int, base_sequence: int, record_count: int
    ) -> BatchMeta | None:
        """Decide on a batch before it is written.

        Returns ``None`` when the batch may be appended, or the cached
        ``BatchMeta`` of the original when it is a retried duplicate. Raises
        ``InvalidProducerEpoch`` for a fenced (older) epoch and
        ``OutOfOrderSequence`` for a gap or an unverifiable old sequence.
        """
        if producer_id == NO_PRODUCER:
            return None
        if epoch < 0 or not 0 <= base_sequence < SEQ_MODULUS:
            raise OutOfOrderSequence(
                f"producer {producer_id}: epoch {epoch} and base sequence {base_sequence} "
                "must be non-negative",
                producer_id=producer_id, epoch=epoch, received=base_sequence,
            )
        entry = self._producers.get(producer_id)
        if entry is None or epoch > entry.epoch:
            return None
        if epoch < entry.epoch:
            raise InvalidProducerEpoch(
                f"producer {producer_id}: epoch {epoch} is older than {entry.epoch}",
                producer_id=producer_id, stored=entry.epoch, received=epoch,
            )
        expected = next_sequence(entry.last_seq)
        if base_sequence == expected:
            return None
        meta = entry.cached(base_sequence, last_sequence(base_sequence, record_count))
        if meta is not None:
            return meta
        if is_behind(base_sequence, expected):
            raise OutOfOrderSequence(
                f"producer {producer_id}: sequence {base_sequence} is a duplicate too old "
                f"to verify (expected {expected})",
                producer_id=producer_id, expected=expected, received=base_sequence,
            )
        raise OutOfOrderSequence(
            f"producer {producer_id}: sequence gap, expected {expected}, received {base_sequence}",
            producer_id=producer_id, expected=expected, received=base_sequence,
        )

    def record(
        self,
        producer_id: int,
        epoch: int,
        base_sequence: int,
        record_count: int,
        *,
        base_offset: int,
        last_offset: int,
    ) -> None:
        """Remember a batch that was appended (or found during recovery)."""
        if producer_id == NO_PRODUCER:
            return
        last_seq = last_sequence(base_sequence, record_count)
        entry = self._producers.get(producer_id)
        if entry is None or epoch > entry.epoch:
            entry = ProducerEntry(epoch, last_seq)
            self._producers[producer_id] = entry
        elif epoch < entry.epoch:
            return  # a fenced epoch never reaches the log; ignore it during replay
        entry.last_seq = last_seq
        entry.batches.append(BatchMeta(base_sequence, last_seq, base_offset, last_offset))

    def truncate(self, offset: int) -> None:
        """Forget batches at or beyond ``offset`` (the log was cut there)."""
        for pid in list(self._producers):
            entry = self._producers[pid]
            kept = [m for m in entry.batches if m.base_offset < offset]
            if len(kept) == len(entry.batches):
                continue
            if not kept:
                # Nothing of this producer is known any more: it starts afresh.
                del self._producers[pid]
                continue
            entry.batches = deque(kept, maxlen=BATCH_CACHE)
            entry.last_seq = kept[-1].last_seq

    def evict_below(self, offset: int) -> int:
        """Drop producers whose newest batch lies before ``offset``; returns how many."""
        stale = [
            pid for pid, e in self._producers.items()
            if e.batches and e.batches[-1].last_offset < offset
        ]
        for pid in stale:
            del self._producers[pid]
        return len(stale)

    def items(self) -> Iterator[tuple[int, ProducerEntry]]:
        return iter(self._producers.items())

    def to_bytes(self) -> bytes:
        """Snapshot in the layout documented at the top of this module."""
        parts = [_HEAD.pack(SNAPSHOT_VERSION, len(self._producers))]
        for pid, entry in self._producers.items():
            parts.append(_PRODUCER.pack(pid, entry.epoch, entry.last_seq, len(entry.batches)))
            parts.extend(_BATCH.pack(*meta) for meta in entry.batches)
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes | memoryview) -> ProducerStateTable:
        """Rebuild from ``to_bytes`` output; raises ValueError on malformed input."""
        table = cls()
        try:
            version, count = _HEAD.unpack_from(data, 0)
            if version != SNAPSHOT_VERSION:
                raise ValueError(f"unknown producer snapshot version {version}")
            pos = _HEAD.size
            for _ in range(count):
                pid, epoch, last_seq, n = _PRODUCER.unpack_from(data, pos)
                pos += _PRODUCER.size
                if n > BATCH_CACHE:
                    raise ValueError(f"producer {pid} has {n} cached batches")
                batches = deque(
                    (BatchMeta._make(_BATCH.unpack_from(data, pos + i * _BATCH.size))
                     for i in range(n)),
                    maxlen=BATCH_CACHE,
                )
                pos += n * _BATCH.size
                table._producers[pid] = ProducerEntry(epoch, last_seq, batches)
        except struct.error as exc:
            raise ValueError(f"truncated producer snapshot: {exc}") from None
        if pos != len(data):
            raise ValueError(f"{len(data) - pos} trailing bytes after producer snapshot")
        return table

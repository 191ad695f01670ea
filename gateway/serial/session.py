"""Per-port link state of the gateway, sans-IO: frames in, frames and produce jobs out.

One serial port is one device. The session admits RECORDS frames strictly in
sequence order per stream, turns each into one produce job (one SPU batch with
the device's idempotent identity), and answers:

* ACK ``(epoch, next_seq)`` once the job's batch is durable on the SPU
  (cumulative: everything before ``next_seq`` is safe);
* a retransmitted frame that is already durable is acknowledged again;
* NAK BUSY while a frame is still being produced or the SPU is unavailable;
* NAK OUT_OF_ORDER with the sequence it expects after a gap;
* NAK HELLO_REQUIRED for records from a device that has not said HELLO.

Repeated NAKs for the same gap are suppressed for ``nak_repeat_s``, so a
window of frames behind one lost frame costs one NAK, not four.
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass
from typing import Final, NamedTuple

from gateway.serial.frames import (
    MAX_FRAME,
    NO_SEQ,
    Ack,
    DeviceRecord,
    Frame,
    Hello,
    Nak,
    NakReason,
    Records,
    Welcome,
    seq_add,
    seq_diff,
)

_HALF: Final = 1 << 30  # sequence distances below this count as "forward"
_EPOCH_BITS: Final = 15  # producer_epoch is an i16 on the SPU


@dataclass(frozen=True, kw_only=True)
class LinkTiming:
    """Timing and bounds of the link; tests shrink them."""

    window: int = 4  # frames in flight per stream; below the SPU's 5-batch dedup window
    max_queued_frames: int = 8  # accepted frames waiting for the SPU, per port
    busy_retry_ms: int = 500  # how long a device waits after NAK BUSY
    reject_retry_ms: int = 10_000  # after a permanent SPU error: retry rarely, keep the data
    nak_repeat_s: float = 0.5  # one NAK per gap within this time

    def __post_init__(self) -> None:
        if not 1 <= self.window <= 4:
            raise ValueError("window must be 1..4 (the SPU dedups the last 5 batches)")
        if self.max_queued_frames < 1 or not 0 <= self.busy_retry_ms <= 0xFFFF:
            raise ValueError("max_queued_frames >= 1 and busy_retry_ms fits u16")
        if not 0 <= self.reject_retry_ms <= 0xFFFF:
            raise ValueError("reject_retry_ms must fit u16")


def producer_identity(device_id: str, stream: str, boot_epoch: int) -> tuple[int, int]:
    """``(producer_id, producer_epoch)`` of a device stream in a boot epoch.

    The SPU's producer epoch is an i16, the boot epoch a u32: the low 15 bits
    become the producer epoch and the rest is hashed into the producer id, so
    every 32768 boots a device starts as a new producer (allowed to start at any
    sequence) instead of presenting a lower epoch.
    """
    generation = boot_epoch >> _EPOCH_BITS
    digest = hashlib.sha256(
        b"headwater/serial\x00"
        + device_id.encode("ascii")
        + b"\x00"
        + stream.encode("ascii")
        + b"\x00"
        + generation.to_bytes(4, "big")
    ).digest()
    return int.from_bytes(digest[:8], "big") >> 1, boot_epoch & ((1 << _EPOCH_BITS) - 1)


class ProduceJob(NamedTuple):
    gen: int
    device_id: str
    stream: str
    epoch: int
    base_seq: int
    records: tuple[DeviceRecord, ...]
    producer_id: int
    producer_epoch: int

    @property
    def end_seq(self) -> int:
        return seq_add(self.base_seq, len(self.records))


@dataclass
class _Stream:
    gen: int
    epoch: int
    expected: int  # next sequence to admit
    acked: int  # everything before this is durable
    acked_epoch: int
    nak_key: tuple[int, int] | None = None
    nak_at: float = 0.0


def _forward(a: int, b: int) -> bool:
    """True when ``a`` is at or after ``b``."""
    return seq_diff(a, b) < _HALF


class DeviceSession:
    """Link state of one port. Every method returns the frames to send, in order."""

    def __init__(self, *, timing: LinkTiming | None = None) -> None:
        self.timing = timing or LinkTiming()
        self.device: Hello | None = None
        self._streams: dict[str, _Stream] = {}
        self._queue: deque[ProduceJob] = deque()
        self._gen = 0
        self._last_hello_nak = float("-inf")
        self._last_bad_nak = float("-inf")
        self.stats: dict[str, int] = dict.fromkeys(
            ("frames_in", "hellos", "received", "produced", "duplicates", "bad_frames", "naks"), 0
        )

    def reset(self) -> None:
        """Forget the device (port reopened); counters survive."""
        self._gen += 1
        self.device = None
        self._streams.clear()
        self._queue.clear()

    # -- input -----------------------------------------------------------------

    def on_frame(self, frame: Frame, now: float) -> list[Frame]:
        self.stats["frames_in"] += 1
        if isinstance(frame, Hello):
            return self._on_hello(frame)
        if isinstance(frame, Records):
            return self._on_records(frame, now)
        # WELCOME/ACK/NAK travel the other way: a device echoing them is confused.
        self.stats["bad_frames"] += 1
        return []

    def on_bad_frame(self, now: float) -> list[Frame]:
        """Count a block that was not a frame; answer with an informational NAK.

        The sender of a damaged frame cannot be known, so the NAK names no
        stream; the device recovers by OUT_OF_ORDER on its next frame or by
        its retransmission timeout. A burst of line noise gets one NAK per
        ``nak_repeat_s``, not one per garbage block.
        """
        self.stats["bad_frames"] += 1
        if now - self._last_bad_nak < self.timing.nak_repeat_s:
            return []
        self._last_bad_nak = now
        return [self._count_nak(Nak(NakReason.BAD_CRC, 0, NO_SEQ, ""))]

    def next_job(self) -> ProduceJob | None:
        return self._queue.popleft() if self._queue else None

    def on_produced(self, job: ProduceJob, *, duplicate: bool) -> list[Frame]:
        st = self._streams.get(job.stream)
        if st is None or st.gen != job.gen:
            return []  # the device said HELLO again since: its sequence space changed
        st.acked, st.acked_epoch = job.end_seq, job.epoch
        self.stats["duplicates" if duplicate else "produced"] += len(job.records)
        return [Ack(job.epoch, job.end_seq, job.stream)]

    def on_produce_failed(self, job: ProduceJob, *, retriable: bool) -> list[Frame]:
        st = self._streams.get(job.stream)
        if st is None or st.gen != job.gen:
            return []
        st.expected, st.epoch = job.base_seq, job.epoch
        self._queue = deque(j for j in self._queue if j.stream != job.stream)
        st.nak_key = None
        if retriable:
            nak = Nak(NakReason.BUSY, self.timing.busy_retry_ms, job.base_seq, job.stream)
        else:
            nak = Nak(NakReason.REJECTED, self.timing.reject_retry_ms, job.base_seq, job.stream)
        return [self._count_nak(nak)]

    # -- frames ------------------------------------------------------------------

    def _on_hello(self, hello: Hello) -> list[Frame]:
        self.stats["hellos"] += 1
        old = self.device
        if old is None or (old.device_id, old.boot_epoch) != (hello.device_id, hello.boot_epoch):
            self._gen += 1
            self._streams.clear()
            self._queue.clear()
        self.device = hello
        return [Welcome(hello.boot_epoch, MAX_FRAME, self.timing.window)]

    def _on_records(self, fr: Records, now: float) -> list[Frame]:
        n = len(fr.records)
        self.stats["received"] += n
        if self.device is None:
            if now - self._last_hello_nak < self.timing.nak_repeat_s:
                return []
            self._last_hello_nak = now
            return [self._count_nak(Nak(NakReason.HELLO_REQUIRED, 0, NO_SEQ, fr.stream))]
        st = self._streams.get(fr.stream)
        end = seq_add(fr.base_seq, n)
        if st is None or (fr.base_seq == fr.resume_seq and fr.epoch > st.epoch):
            if fr.base_seq != fr.resume_seq:
                return self._nak(None, NakReason.OUT_OF_ORDER, fr.stream, fr.resume_seq, now)
            self._gen += 1
            self._queue = deque(j for j in self._queue if j.stream != fr.stream)
            st = _Stream(self._gen, fr.epoch, fr.base_seq, fr.base_seq, fr.epoch)
            self._streams[fr.stream] = st
        if fr.base_seq == st.expected and fr.epoch >= st.epoch:
            return self._admit(self.device.device_id, st, fr, now)
        if _forward(st.acked, end):
            self.stats["duplicates"] += n
            return [Ack(st.acked_epoch, st.acked, fr.stream)]
        if _forward(fr.base_seq, st.acked) and _forward(st.expected, end):
            self.stats["duplicates"] += n  # admitted before, still being produced
            return self._nak(st, NakReason.BUSY, fr.stream, st.expected, now)
        return self._nak(st, NakReason.OUT_OF_ORDER, fr.stream, st.expected, now)

    def _admit(self, device_id: str, st: _Stream, fr: Records, now: float) -> list[Frame]:
        if len(self._queue) >= self.timing.max_queued_frames:
            return self._nak(st, NakReason.BUSY, fr.stream, st.expected, now)
        pid, pepoch = producer_identity(device_id, fr.stream, fr.epoch)
        self._queue.append(
            ProduceJob(st.gen, device_id, fr.stream, fr.epoch, fr.base_seq, fr.records, pid, pepoch)
        )
        st.expected, st.epoch, st.nak_key = seq_add(fr.base_seq, len(fr.records)), fr.epoch, None
        return []

    def _nak(
        self, st: _Stream | None, reason: NakReason, stream: str, next_seq: int, now: float
    ) -> list[Frame]:
        retry_ms = self.timing.busy_retry_ms if reason is NakReason.BUSY else 0
        if st is not None:
            key = (int(reason), next_seq)
            if st.nak_key == key and now - st.nak_at < self.timing.nak_repeat_s:
                return []
            st.nak_key, st.nak_at = key, now
        return [self._count_nak(Nak(reason, retry_ms, next_seq, stream))]

    def _count_nak(self, nak: Nak) -> Nak:
        self.stats["naks"] += 1
        return nak

"""The gateway's per-port link state, driven frame by frame (no I/O)."""

from __future__ import annotations

from gateway.serial.frames import (
    NO_SEQ,
    SEQ_MASK,
    Ack,
    DeviceRecord,
    Hello,
    Nak,
    NakReason,
    Records,
    Welcome,
)
from gateway.serial.session import DeviceSession, LinkTiming, ProduceJob, producer_identity

HELLO = Hello(7, "dev-1", "0.1.0")


def recs(epoch: int, base: int, n: int, resume: int | None = None, stream: str = "env") -> Records:
    values = tuple(DeviceRecord(0, bytes([i % 256])) for i in range(n))
    return Records(epoch, base & SEQ_MASK, (base if resume is None else resume) & SEQ_MASK,
                   stream, values)  # fmt: skip


def session(**timing: int | float) -> DeviceSession:
    s = DeviceSession(timing=LinkTiming(**timing))  # type: ignore[arg-type]
    assert s.on_frame(HELLO, 0.0) == [Welcome(7, 1024, 4)]
    return s


def produce_all(s: DeviceSession, *, duplicate: bool = False) -> list[object]:
    out: list[object] = []
    while (job := s.next_job()) is not None:
        out += s.on_produced(job, duplicate=duplicate)
    return out


def test_records_before_hello_ask_for_hello_once_per_interval() -> None:
    s = DeviceSession()
    assert s.on_frame(recs(7, 0, 1), 0.0) == [Nak(NakReason.HELLO_REQUIRED, 0, NO_SEQ, "env")]
    assert s.on_frame(recs(7, 1, 1), 0.1) == []
    assert s.on_frame(recs(7, 0, 1), 1.0) != []


def test_in_order_frames_become_jobs_and_cumulative_acks() -> None:
    s = session()
    assert s.on_frame(recs(7, 10, 3), 0.0) == []
    assert s.on_frame(recs(7, 13, 2, resume=10), 0.0) == []
    job = s.next_job()
    assert isinstance(job, ProduceJob)
    assert (job.base_seq, job.end_seq, job.device_id, job.stream) == (10, 13, "dev-1", "env")
    assert (job.producer_id, job.producer_epoch) == producer_identity("dev-1", "env", 7)
    assert s.on_produced(job, duplicate=False) == [Ack(7, 13, "env")]
    assert produce_all(s) == [Ack(7, 15, "env")]
    assert s.stats["produced"] == 5


def test_retransmit_of_durable_frame_is_acked_again_not_produced() -> None:
    s = session()
    s.on_frame(recs(7, 0, 4), 0.0)
    produce_all(s)
    assert s.on_frame(recs(7, 0, 4), 1.0) == [Ack(7, 4, "env")]
    assert s.next_job() is None
    assert s.stats["duplicates"] == 4


def test_retransmit_while_producing_gets_one_busy_nak() -> None:
    s = session(busy_retry_ms=300)
    s.on_frame(recs(7, 0, 2), 0.0)
    busy = [Nak(NakReason.BUSY, 300, 2, "env")]
    assert s.on_frame(recs(7, 0, 2), 0.1) == busy
    assert s.on_frame(recs(7, 0, 2), 0.2) == []  # suppressed
    assert s.on_frame(recs(7, 0, 2), 0.7) == busy


def test_gap_is_nakked_with_the_expected_sequence_once() -> None:
    s = session()
    s.on_frame(recs(7, 0, 2), 0.0)
    ooo = [Nak(NakReason.OUT_OF_ORDER, 0, 2, "env")]
    assert s.on_frame(recs(7, 5, 1, resume=0), 0.1) == ooo
    assert s.on_frame(recs(7, 6, 1, resume=0), 0.2) == []
    assert s.on_frame(recs(7, 2, 3, resume=0), 0.3) == []  # the missing frame: admitted
    assert s.on_frame(recs(7, 5, 1, resume=0), 0.3) == []
    assert [j.base_seq for j in iter(s.next_job, None)] == [0, 2, 5]


def test_unknown_stream_must_start_at_the_devices_resume_point() -> None:
    s = session()
    assert s.on_frame(recs(7, 8, 1, resume=4), 0.0) == [Nak(NakReason.OUT_OF_ORDER, 0, 4, "env")]
    assert s.on_frame(recs(7, 4, 4, resume=4), 0.0) == []


def test_produce_failure_rewinds_and_drops_later_frames() -> None:
    s = session(busy_retry_ms=250)
    for base in (0, 2, 4):
        s.on_frame(recs(7, base, 2, resume=0), 0.0)
    job = s.next_job()
    assert job is not None
    assert s.on_produce_failed(job, retriable=True) == [Nak(NakReason.BUSY, 250, 0, "env")]
    assert s.next_job() is None
    assert s.on_frame(recs(7, 0, 2), 1.0) == []  # admitted again
    job = s.next_job()
    assert job is not None
    nak = s.on_produce_failed(job, retriable=False)
    assert nak == [Nak(NakReason.REJECTED, 10_000, 0, "env")]


def test_new_boot_epoch_resets_and_ignores_stale_results() -> None:
    s = session()
    s.on_frame(recs(7, 0, 2), 0.0)
    job = s.next_job()
    assert job is not None
    assert s.on_frame(Hello(8, "dev-1", "0.1.0"), 0.0) == [Welcome(8, 1024, 4)]
    assert s.on_produced(job, duplicate=False) == []
    assert s.on_frame(recs(8, 0, 1), 0.0) == []  # a device without a spool restarts at 0


def test_repeated_hello_keeps_the_stream_state() -> None:
    s = session()
    s.on_frame(recs(7, 0, 2), 0.0)
    produce_all(s)
    s.on_frame(HELLO, 0.0)
    assert s.on_frame(recs(7, 0, 2), 0.0) == [Ack(7, 2, "env")]


def test_higher_epoch_at_resume_point_restarts_the_stream() -> None:
    s = session()
    s.on_frame(recs(7, 0, 2), 0.0)
    produce_all(s)
    assert s.on_frame(recs(9, 50, 1), 0.0) == []
    job = s.next_job()
    assert job is not None
    assert (job.epoch, job.base_seq) == (9, 50)


def test_spooled_records_continue_across_epochs() -> None:
    s = session()
    s.on_frame(recs(7, 0, 2), 0.0)
    s.on_frame(recs(8, 2, 2, resume=0), 0.0)
    assert produce_all(s) == [Ack(7, 2, "env"), Ack(8, 4, "env")]


def test_queue_is_bounded() -> None:
    s = session(max_queued_frames=2, busy_retry_ms=100)
    assert s.on_frame(recs(7, 0, 1), 0.0) == []
    assert s.on_frame(recs(7, 1, 1, resume=0), 0.0) == []
    assert s.on_frame(recs(7, 2, 1, resume=0), 0.0) == [Nak(NakReason.BUSY, 100, 2, "env")]


def test_sequence_wraps() -> None:
    s = session()
    s.on_frame(recs(7, SEQ_MASK, 2), 0.0)
    assert produce_all(s) == [Ack(7, 1, "env")]
    assert s.on_frame(recs(7, 1, 1, resume=1), 0.0) == []
    assert s.on_frame(recs(7, SEQ_MASK, 2, resume=1), 0.0) == [Ack(7, 1, "env")]


def test_bad_frame_is_counted_and_nakked() -> None:
    s = session()
    assert s.on_bad_frame(0.0) == [Nak(NakReason.BAD_CRC, 0, NO_SEQ, "")]
    assert s.on_bad_frame(0.1) == []  # a burst of noise: one NAK
    assert s.on_bad_frame(0.6) == [Nak(NakReason.BAD_CRC, 0, NO_SEQ, "")]
    assert s.stats["bad_frames"] == 3
    assert s.stats["naks"] == 2


def test_streams_are_independent() -> None:
    s = session()
    s.on_frame(recs(7, 0, 1, stream="a"), 0.0)
    s.on_frame(recs(7, 100, 1, stream="b"), 0.0)
    jobs = list(iter(s.next_job, None))
    assert [(j.stream, j.base_seq) for j in jobs] == [("a", 0), ("b", 100)]
    assert jobs[0].producer_id != jobs[1].producer_id


def test_identity_folds_high_epoch_bits_into_the_producer_id() -> None:
    a = producer_identity("dev-1", "env", 32767)
    b = producer_identity("dev-1", "env", 32768)
    assert a[1] == 32767
    assert b[1] == 0
    assert a[0] != b[0]
    assert producer_identity("dev-1", "env", 5)[0] == a[0]

"""The in-flight FIFO (PUBACK order), redelivery recognition, round planning, and the
round writer against the SPU's real idempotence rules (``gateway_memlog``)."""

from __future__ import annotations

import cbor2
import pytest
from gateway_memlog import MemoryLog

from edge.protocol.errors import LeaderNotAvailable, MessageTooLarge, TopicNotFound
from gateway.config import MqttRule
from gateway.mqtt.decode import Reading, Rejected, decode
from gateway.mqtt.pipeline import (
    Entry,
    InFlight,
    Redeliveries,
    first_run,
    plan_round,
    seq_behind,
)
from gateway.mqtt.writer import Counts, RoundWriter

RULES = (MqttRule(filter="headwater/+/+", topic="readings"),)
DLQ = "dead-letters"


def entry(mid: int, payload: bytes, topic: str = "headwater/dev1/t") -> Entry:
    return Entry(mid=mid, qos=1, topic=topic, payload=payload,
                 outcome=decode(RULES, topic, payload, max_payload_bytes=4096), received_ms=1)


def reading(seq: int, epoch: int = 1, device: str = "dev1", **extra: object) -> bytes:
    return cbor2.dumps({"e": epoch, "s": seq, "v": seq, **extra})


def writer(log: MemoryLog, *, max_batch_bytes: int = 64 * 1024) -> RoundWriter:
    return RoundWriter(log, dead_letter_topic=DLQ, max_batch_bytes=max_batch_bytes,
                       timeout_s=1.0, max_payload_bytes=4096)


async def write(log: MemoryLog, entries: list[Entry], w: RoundWriter | None = None) -> Counts:
    counts = Counts()
    await (w or writer(log)).write(plan_round(entries), counts)
    return counts


def values(log: MemoryLog, topic: str = "readings") -> list[int]:
    return [cbor2.loads(r.value)["v"] for r in log.records(topic)]


# --- FIFO and PUBACK order ----------------------------------------------------------


def test_acks_leave_in_arrival_order_only() -> None:
    fifo = InFlight()
    a, b, c = entry(1, b"\x01"), entry(2, b"\x02"), entry(3, b"\x03")
    for e in (a, b, c):
        fifo.add(e)
    c.done = True
    b.done = True
    acked: list[int] = []

    def ack(e: Entry) -> bool:
        acked.append(e.mid)
        return True

    assert fifo.release(ack) == 0
    assert acked == []  # the head is not durable yet: nothing may be acknowledged
    a.done = True
    assert fifo.release(ack) == 3
    assert acked == [1, 2, 3]
    assert len(fifo) == 0


def test_failed_ack_keeps_the_entry_for_redelivery() -> None:
    fifo = InFlight()
    for mid in (1, 2):
        e = entry(mid, b"x")
        e.done = True
        fifo.add(e)
    assert fifo.release(lambda e: e.mid == 1) == 1
    assert [e.mid for e in fifo.written_unacked()] == [2]


def test_take_round_respects_bounds_and_takes_at_least_one() -> None:
    fifo = InFlight()
    for i in range(5):
        fifo.add(entry(i, b"x" * 100))
    assert [e.mid for e in fifo.take_round(max_records=2, max_bytes=10_000)] == [0, 1]
    assert [e.mid for e in fifo.take_round(max_records=10, max_bytes=1)] == [2]
    assert [e.mid for e in fifo.take_round(max_records=10, max_bytes=10_000)] == [3, 4]
    assert fifo.take_round(max_records=10, max_bytes=10_000) == []


def test_redeliveries_recognised_by_dup_mid_topic_payload() -> None:
    written = [entry(7, b"same"), entry(8, b"same")]
    for e in written:
        e.done = True
    seen = Redeliveries()
    seen.remember(written)
    assert not seen.seen_before(entry(7, b"other"), dup=True)  # payload differs
    assert not seen.seen_before(entry(9, b"same"), dup=True)  # packet id differs
    assert seen.seen_before(entry(7, b"same"), dup=True)
    assert not seen.seen_before(entry(7, b"same"), dup=True)  # each only once
    # The first fresh message ends the redeliveries; later look-alikes are new data.
    assert not seen.seen_before(entry(1, b"x"), dup=False)
    assert not seen.seen_before(entry(8, b"same"), dup=True)
    assert len(seen) == 0


def test_sequence_arithmetic_wraps() -> None:
    assert seq_behind(5, 6)
    assert not seq_behind(6, 6)
    assert seq_behind(2**31 - 1, 0)
    assert not seq_behind(0, 2**31 - 1)


def test_plan_and_runs() -> None:
    entries = [
        entry(1, reading(1)), entry(2, reading(2)), entry(3, reading(4)),
        entry(4, reading(0, device="dev2"), topic="headwater/dev2/t"),
        entry(5, cbor2.dumps(21.5)), entry(6, b"\xff"),
    ]
    plan = plan_round(entries)
    assert [len(items) for items in plan.streams.values()] == [3, 1]
    assert [p.entry.mid for p in plan.plain] == [5]
    assert [e.mid for e, _ in plan.dead] == [6]
    stream = next(iter(plan.streams.values()))
    assert [i.sequence.seq for i in first_run(stream, max_bytes=10**6)] == [1, 2]
    assert [i.sequence.seq for i in first_run(stream[2:], max_bytes=10**6)] == [4]
    assert len(first_run(stream, max_bytes=1)) == 1


# --- writer: exactly once against the SPU's rules ----------------------------------


async def test_redelivery_in_different_batches_ends_as_one_copy() -> None:
    log = MemoryLog()
    w = writer(log)
    await write(log, [entry(i, reading(i)) for i in range(10)], w)
    # After a crash the broker sends 5..14 again; the batch boundaries differ.
    counts = await write(log, [entry(i, reading(i)) for i in range(5, 15)], writer(log))
    assert counts.duplicates == 5
    assert counts.produced == 5
    assert values(log) == list(range(15))


async def test_exact_retry_is_a_duplicate_with_its_offsets() -> None:
    log = MemoryLog()
    await write(log, [entry(i, reading(i)) for i in range(3)])
    counts = await write(log, [entry(i, reading(i)) for i in range(3)])
    assert (counts.duplicates, counts.produced) == (3, 0)
    assert values(log) == [0, 1, 2]


async def test_gap_moves_to_next_epoch_and_stays_exactly_once() -> None:
    log = MemoryLog()
    w = writer(log)
    counts = await write(log, [entry(i, reading(s)) for i, s in enumerate([0, 1, 5, 6])], w)
    assert counts.gaps == 1
    assert values(log) == [0, 1, 5, 6]
    # A restarted gateway (fresh writer) learns the epoch and recognises the copies.
    counts = await write(log, [entry(i, reading(s)) for i, s in enumerate([5, 6, 7])],
                         writer(log))
    assert (counts.duplicates, counts.produced) == (2, 1)
    assert values(log) == [0, 1, 5, 6, 7]


async def test_device_retransmit_inside_one_round() -> None:
    log = MemoryLog()
    counts = await write(log, [entry(i, reading(s)) for i, s in enumerate([0, 1, 1, 2])])
    assert values(log) == [0, 1, 2]
    assert counts.duplicates == 1


async def test_new_boot_epoch_starts_a_new_stream() -> None:
    log = MemoryLog()
    await write(log, [entry(i, reading(i, epoch=1)) for i in range(3)])
    await write(log, [entry(10 + i, reading(i, epoch=2)) for i in range(3)])
    assert len(log.records("readings")) == 6


async def test_retriable_failure_leaves_undone_entries_for_the_retry() -> None:
    log = MemoryLog(fail_next=[LeaderNotAvailable("spu restarting")])
    entries = [entry(i, reading(i)) for i in range(4)]
    with pytest.raises(LeaderNotAvailable):
        await write(log, entries)
    assert not any(e.done for e in entries)
    await write(log, entries)
    assert all(e.done for e in entries)
    assert values(log) == [0, 1, 2, 3]


async def test_config_errors_propagate_for_backoff() -> None:
    log = MemoryLog(fail_next=[TopicNotFound("no such topic")])
    with pytest.raises(TopicNotFound):
        await write(log, [entry(1, reading(0))])


async def test_refused_records_go_to_the_dead_letter_topic() -> None:
    log = MemoryLog(fail_next=[MessageTooLarge("too big")])
    e = entry(1, reading(0))
    counts = await write(log, [e])
    assert e.done
    assert counts.dead_lettered == 1
    (dead,) = log.records(DLQ)
    assert dead.headers is not None
    assert dead.headers["dead-letter-reason"] == b"spu_rejected"
    assert b"MessageTooLarge" in dead.headers["dead-letter-detail"]


async def test_undecodable_and_plain_messages() -> None:
    log = MemoryLog()
    bad, plain = entry(1, b"\xff\xfe"), entry(2, cbor2.dumps({"v": 1}))
    counts = await write(log, [bad, plain])
    assert (counts.dead_lettered, counts.produced) == (1, 1)
    (dead,) = log.records(DLQ)
    assert dead.value == b"\xff\xfe"
    assert dead.key == b"headwater/dev1/t"
    assert isinstance(bad.outcome, Rejected)
    assert isinstance(plain.outcome, Reading)


# --- several readings in one message ------------------------------------------------


def packed(first: int, count: int, epoch: int = 1) -> bytes:
    return cbor2.dumps({"e": epoch, "s": first, "r": [{"v": first + i} for i in range(count)]})


def test_plan_has_one_part_per_reading() -> None:
    plan = plan_round([entry(1, packed(0, 4)), entry(2, reading(4))])
    (stream,) = plan.streams.values()
    assert [(i.entry.mid, i.sequence.seq) for i in stream] == [(1, 0), (1, 1), (1, 2), (1, 3),
                                                               (2, 4)]
    assert [i.sequence.seq for i in first_run(stream, max_bytes=10**6)] == [0, 1, 2, 3, 4]


async def test_packed_message_is_one_record_per_reading() -> None:
    log = MemoryLog()
    e = entry(1, packed(0, 10))
    counts = await write(log, [e, entry(2, reading(10)), entry(3, packed(11, 2))])
    assert e.done
    assert counts.produced == 13
    assert values(log) == list(range(13))
    assert log.calls == 1  # consecutive readings of one stream: one batch


async def test_packed_message_waits_for_its_last_reading() -> None:
    # Its readings fall into several batches; the second one fails (the SPU restarts).
    log = MemoryLog(fail_calls={2: LeaderNotAvailable("spu restarting")})
    w = writer(log, max_batch_bytes=30)
    e = entry(1, packed(0, 10))
    fifo = InFlight()
    fifo.add(e)
    plan = plan_round([e])  # the bridge retries a round with its plan
    with pytest.raises(LeaderNotAvailable):
        await w.write(plan, Counts())
    assert not e.done
    assert 0 < len(values(log)) < 10
    assert fifo.release(lambda _: True) == 0  # no PUBACK while a reading is missing
    counts = Counts()
    await w.write(plan, counts)
    assert fifo.release(lambda _: True) == 1  # done now, and acknowledged
    assert values(log) == list(range(10))
    assert counts.duplicates == 0


async def test_repacked_redelivery_ends_as_one_copy_per_reading() -> None:
    log = MemoryLog()
    await write(log, [entry(1, packed(0, 10))])
    # The device did not get the PUBACK, packed its buffer again with more readings;
    # the broker had the first message too, and the gateway restarted meanwhile.
    counts = await write(log, [entry(1, packed(0, 10)), entry(2, packed(5, 10)),
                               entry(3, packed(15, 3))], writer(log))
    assert values(log) == list(range(18))
    assert (counts.duplicates, counts.produced) == (15, 8)


async def test_a_refused_reading_is_dead_lettered_alone() -> None:
    log = MemoryLog(fail_calls={1: MessageTooLarge("too big")})
    e = entry(1, packed(40, 6, epoch=9))
    counts = await write(log, [e], writer(log, max_batch_bytes=20))
    assert e.done
    dead = log.records(DLQ)
    refused = [cbor2.loads(d.value)["v"] for d in dead]
    assert refused
    assert refused == list(range(40, 40 + len(refused)))
    assert values(log) == list(range(40 + len(refused), 46))
    assert counts.dead_lettered + counts.produced == 6
    for record, seq in zip(dead, refused, strict=True):
        assert record.headers is not None
        assert record.headers["dead-letter-reason"] == b"spu_rejected"
        assert (record.headers["device-epoch"], record.headers["device-seq"]) == (
            b"9", str(seq).encode())


async def test_gap_inside_a_packed_stream_keeps_exactly_once() -> None:
    log = MemoryLog()
    w = writer(log)
    await write(log, [entry(1, packed(0, 3))], w)
    counts = await write(log, [entry(2, packed(5, 3))], w)  # 3 and 4 never came
    assert counts.gaps == 1
    counts = await write(log, [entry(2, packed(5, 3)), entry(3, packed(8, 2))], writer(log))
    assert (counts.duplicates, counts.produced) == (3, 2)
    assert values(log) == [0, 1, 2, 5, 6, 7, 8, 9]

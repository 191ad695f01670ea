# ruff: noqa: UP031 -- MicroPython dialect: no contextlib, no pairwise, %-format is smallest
import gc
import struct

from headwater.buffer import Buffer
from headwater.serial_link import SerialLink
from support import FakeUart, check, eq, frame_vector, unhex, vectors

T0 = 1000


def _link(stream="temp", epoch=7, first=0, window=4, delivered=None):
    uart = FakeUart()
    link = SerialLink(
        uart, "pi-sensor-01", epoch, fw_version="0.1.0", window=window, on_delivered=delivered
    )
    buf = Buffer(max_count=64, max_bytes=4096)
    buf.first_seq = buf.next_seq = first
    link.add_stream(stream, buf)
    return uart, link, buf


def _welcome(uart, link, now=T0):
    uart.rx.extend(unhex(frame_vector("welcome")["wire"]))
    link.poll(now)
    check(link.welcomed, "not welcomed")
    uart.take()


def test_hello_is_byte_exact_and_retried_with_backoff():
    uart, link, _ = _link()
    link.poll(T0)
    eq(uart.take().hex(), frame_vector("hello")["wire"])
    link.poll(T0 + 50)
    eq(uart.take(), b"")
    link.poll(T0 + 100)
    eq(uart.take().hex(), frame_vector("hello")["wire"])
    link.poll(T0 + 250)
    eq(uart.take(), b"")  # backoff doubled to 200 ms
    link.poll(T0 + 300)
    check(uart.take() != b"")


def test_records_frame_is_byte_exact():
    v = frame_vector("records_one")["fields"]
    uart, link, _ = _link()
    _welcome(uart, link)
    link.push("temp", unhex(v["records"][0]["value"]), v["records"][0]["ts_ms"])
    link.poll(T0)
    eq(uart.take().hex(), frame_vector("records_one")["wire"])


def test_records_frame_with_resume_point_is_byte_exact():
    v = frame_vector("records_three")["fields"]
    uart, link, _buf = _link(stream="env", first=37)
    _welcome(uart, link)
    for i in range(4):
        link.push("env", b"old%d" % i)
    link.poll(T0)
    uart.take()
    for r in v["records"]:
        link.push("env", unhex(r["value"]), r["ts_ms"])
    link.poll(T0)
    eq(uart.take().hex(), frame_vector("records_three")["wire"])


def test_wrapping_sequence_frame_is_byte_exact():
    v = frame_vector("records_wrap")["fields"]
    uart = FakeUart()
    link = SerialLink(uart, "pi-sensor-01", 3)
    buf = Buffer()
    buf.first_seq = buf.next_seq = 0x7FFFFFFE
    link.add_stream("temp", buf)
    uart.rx.extend(unhex(frame_vector("welcome")["wire"]).replace(b"\x07", b"\x03", 1))
    # WELCOME for epoch 3 rebuilt: the vector is for epoch 7
    link.welcomed = True
    buf.append(b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01" + b"\xaa", 3)
    link.poll(T0)
    uart.take()
    link.push("temp", unhex(v["records"][0]["value"]))
    link.poll(T0)
    eq(uart.take().hex(), frame_vector("records_wrap")["wire"])


def test_ack_vector_confirms_records():
    got = []
    uart, link, buf = _link(first=40, delivered=lambda s, first, n: got.append((s, first, n)))
    _welcome(uart, link)
    for i in range(4):
        link.push("temp", b"v%d" % i)
    link.poll(T0)
    uart.rx.extend(unhex(frame_vector("ack")["wire"]))  # epoch 7, next 42
    link.poll(T0 + 1)
    eq((buf.first_seq, len(buf)), (42, 2))
    eq(got, [(b"temp", 40, 2)])


def test_nak_vectors_rewind_hold_and_rehello():
    uart, link, _buf = _link(first=37)
    _welcome(uart, link)
    for i in range(6):
        link.push("temp", b"v%d" % i)
        link.poll(T0)  # one frame per record: 37..40 in flight (window 4)
    eq(len(link.streams[b"temp"].inflight), 4)
    uart.take()
    uart.rx.extend(unhex(frame_vector("nak_out_of_order")["wire"]))  # next 40
    link.poll(T0 + 1)
    sent = uart.take()
    # 37..39 stay in flight (the gateway has them), so the window allows 40 only
    eq(sent.count(b"\x00"), 1)
    eq(struct.unpack(">I", _decode(sent)[6:10])[0], 40)
    uart.rx.extend(unhex(frame_vector("nak_bad_crc")["wire"]))
    link.poll(T0 + 2)
    eq(uart.take(), b"")  # informational: no stream, no rewind
    uart.rx.extend(unhex(frame_vector("nak_hello_required")["wire"]))
    link.poll(T0 + 3)
    check(not link.welcomed)
    eq(uart.take().hex(), frame_vector("hello")["wire"])


def test_busy_nak_holds_the_stream():
    uart, link, _buf = _link(stream="env", first=41)
    _welcome(uart, link)
    link.push("env", b"a")
    link.poll(T0)
    uart.take()
    uart.rx.extend(unhex(frame_vector("nak_busy")["wire"]))  # retry after 500 ms, next 41
    link.poll(T0 + 10)
    link.poll(T0 + 400)
    eq(uart.take(), b"")
    link.poll(T0 + 520)
    check(uart.take() != b"", "not resent after the hold")


def test_retransmit_after_timeout_is_identical():
    uart, link, _buf = _link()
    _welcome(uart, link)
    link.push("temp", b"a")
    link.push("temp", b"b")
    link.poll(T0)
    first = uart.take()
    link.push("temp", b"c")
    link.poll(T0 + 500)
    uart.take()
    link.poll(T0 + 1001)
    again = uart.take()
    check(again.startswith(first), "first frame not resent identically")
    eq(link.stats["retransmits"], 1)


def test_window_limits_frames_in_flight():
    uart, link, _buf = _link(window=2)
    _welcome(uart, link)
    for _ in range(5):
        link.push("temp", b"x")
        link.poll(T0)
    eq(uart.take().count(b"\x00"), 2)


def _decode(wire):
    from headwater import cobs

    out = bytearray(len(wire))
    n = cobs.decode_into(bytearray(wire), len(wire) - 1, out)
    return bytes(out[:n])


def test_stream_vectors_resync_on_the_device():
    uart, link, _buf = _link()
    link.welcomed = True
    for v in vectors("streams"):
        link.stats["bad_frames"] = 0
        uart.rx.extend(unhex(v["wire"]))
        for _ in range(40):
            link.poll(T0)
        bad = sum(1 for e in v["events"] if e.startswith("bad:") or e == "hello")
        eq(link.stats["bad_frames"], bad)


def test_many_records_within_a_64k_heap():
    uart, link, buf = _link()
    _welcome(uart, link)
    gc.collect()
    before = gc.mem_free()
    now = T0
    acked = 0
    for i in range(3000):
        if link.push("temp", b"0123456789abcdef0123456789abcdef") < 0:
            raise AssertionError("buffer full")
        now += 1
        link.poll(now)
        if i % 20 == 19:
            uart.take()
            nxt = buf.next_seq
            ack = bytearray(b"\x04\x01" + struct.pack(">II", 7, nxt) + b"\x04temp")
            from binascii import crc32

            from headwater import cobs

            ack += struct.pack(">I", crc32(ack) & 0xFFFFFFFF)
            enc = bytearray(64)
            n = cobs.encode_into(ack, len(ack), enc)
            uart.rx.extend(enc[:n] + b"\x00")
            link.poll(now)
            acked = link.stats["delivered"]
    eq(acked, 3000)
    gc.collect()
    check(before - gc.mem_free() < 4096, "heap grew by %d" % (before - gc.mem_free()))

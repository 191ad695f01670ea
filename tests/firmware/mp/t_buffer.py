# ruff: noqa: UP031, SIM105 -- MicroPython dialect: no contextlib, no pairwise, %-format is smallest
import os

from headwater.buffer import SEQ_MASK, Buffer
from support import check, eq

TMP = "/tmp"


def _spool(name):
    path = "%s/hw-spool-%s-%d" % (TMP, name, os.getpid() if hasattr(os, "getpid") else 0)
    try:
        os.remove(path)
    except OSError:
        pass
    return path


def test_bounds_by_count_and_bytes():
    b = Buffer(max_count=4, max_bytes=64)
    for i in range(4):
        eq(b.append(b"x" * 10, 1), i)
    eq(b.append(b"y", 1), -1)
    eq(b.refused, 1)
    b = Buffer(max_count=16, max_bytes=32)
    eq(b.append(b"a" * 20, 1), 0)
    eq(b.append(b"b" * 13, 1), -1)
    eq(b.append(b"b" * 12, 1), 1)
    eq(len(b), 2)


def test_ring_wraps_bytes_and_slots():
    b = Buffer(max_count=3, max_bytes=20)
    for round_ in range(20):
        v = bytes([65 + round_ % 26]) * (5 + round_ % 4)
        seq = b.append(v, 1)
        check(seq >= 0, "append refused")
        eq(b.record(len(b) - 1), v)
        if len(b) == 3:
            eq(b.confirm(1, (b.first_seq + 2) & SEQ_MASK), 2)


def test_confirm_is_cumulative_and_ignores_stale_or_future():
    b = Buffer()
    for i in range(5):
        b.append(bytes([i]), 3)
    eq(b.confirm(3, 2), 2)
    eq(b.first_seq, 2)
    eq(b.record(0), b"\x02")
    eq(b.confirm(3, 1), 0)  # already confirmed
    eq(b.confirm(3, 9), 0)  # beyond what exists
    eq(b.confirm(2, 4), 0)  # from an older boot epoch: stale
    eq(b.confirm(3, 5), 3)
    eq(len(b), 0)


def test_sequence_wraps_at_2_pow_31():
    b = Buffer()
    b.first_seq = b.next_seq = SEQ_MASK - 1
    eq(b.append(b"a", 1), SEQ_MASK - 1)
    eq(b.append(b"b", 1), SEQ_MASK)
    eq(b.append(b"c", 1), 0)
    eq(b.confirm(1, 0), 2)
    eq(b.record(0), b"c")
    eq(b.confirm(1, 1), 1)


def test_spool_survives_reboot_with_cuts():
    path = _spool("reboot")
    b = Buffer(max_count=8, max_bytes=256, spool=path)
    for i in range(6):
        b.append(b"rec%d" % i, 7)
    b.cut(0, 2)
    b.cut(2, 3)
    b.confirm(7, 2)
    b.close()
    b = Buffer(max_count=8, max_bytes=256, spool=path)
    eq(len(b), 4)
    eq(b.first_seq, 2)
    eq(b.next_seq, 6)
    eq(b.record(0), b"rec2")
    eq(b.epoch_at(0), 7)
    eq(b.cuts, {2: 3})
    eq(b.append(b"new", 8), 6)
    b.close()


def test_spool_overflow_beyond_ram_is_kept_and_refilled():
    path = _spool("overflow")
    b = Buffer(max_count=2, max_bytes=64, spool=path, spool_max=4096)
    for i in range(5):
        eq(b.append(b"r%d" % i, 1), i)
    eq(len(b), 5)
    eq(b.in_ram(), 2)
    b.confirm(1, 2)
    eq(b.in_ram(), 2)
    eq(b.record(0), b"r2")
    b.close()
    b = Buffer(max_count=2, max_bytes=64, spool=path, spool_max=4096)
    eq((len(b), b.in_ram(), b.record(0), b.record(1)), (3, 2, b"r2", b"r3"))
    b.confirm(1, 5)
    eq(len(b), 0)
    b.close()


def test_spool_torn_tail_is_ignored():
    path = _spool("torn")
    b = Buffer(spool=path)
    b.append(b"kept", 1)
    b.append(b"torn", 1)
    b.close()
    size = os.stat(path)[6]
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: size - 3])
    b = Buffer(spool=path)
    eq(len(b), 1)
    eq(b.record(0), b"kept")
    eq(b.append(b"again", 2), 1)
    b.close()
    b = Buffer(spool=path)
    eq(len(b), 2)
    b.close()


def test_spool_restarts_when_everything_is_confirmed():
    path = _spool("restart")
    b = Buffer(spool=path, spool_max=2048)
    for i in range(40):
        b.append(b"0123456789", 1)
        b.confirm(1, (i + 1) & SEQ_MASK)
    check(os.stat(path)[6] < 1024, "spool never restarted")
    b.close()
    b = Buffer(spool=path, spool_max=2048)
    eq((len(b), b.next_seq), (0, 40))
    b.close()


def test_spool_full_refuses():
    path = _spool("full")
    b = Buffer(spool=path, spool_max=200)
    n = 0
    while b.append(b"x" * 20, 1) >= 0:
        n += 1
    check(0 < n < 10, "spool bound")
    check(b.refused == 1)
    b.close()

# Device side of the Headwater serial link (docs/SERIAL-PROTOCOL.md).
#
# Frames are COBS-encoded and end with 0x00; each carries a CRC-32. The device
# introduces itself with HELLO (device id, firmware version, boot epoch), then
# sends RECORDS frames per stream, at most `window` unacknowledged frames per
# stream. The gateway answers with cumulative ACKs, sent only after the SPU
# holds the records durably, and with NAKs (bad CRC, busy, out of order, ...)
# that say which sequence it expects next. Records leave the buffer only on an
# ACK. Without an answer a frame is sent again after `rto_ms`, identical in
# its records, so the SPU recognises the retry.
#
# poll() never blocks: call it from the main loop as often as possible.

import struct
import time
from binascii import crc32

from headwater import cobs
from headwater.buffer import SEQ_MASK, seq_add, seq_diff

VERSION = 1
HELLO = 1
WELCOME = 2
RECORDS = 3
ACK = 4
NAK = 5

NAK_BAD_CRC = 1
NAK_BUSY = 2
NAK_OUT_OF_ORDER = 3
NAK_HELLO_REQUIRED = 4
NAK_MALFORMED = 5
NAK_REJECTED = 6
NAK_TOO_LARGE = 7

NO_SEQ = 0xFFFFFFFF
MAX_FRAME = 1024  # decoded frame incl. CRC: fixed by protocol version 1
MAX_NAME = 32
RECORD_HEAD = 10  # ts_ms u64 | length u16
_RX_MAX = 64  # gateway frames are at most 47 bytes decoded
_HELLO_MAX_BACKOFF = 5000


def encode_record(ts_ms, value):
    """Wire form of one record: ts_ms u64 (0 = unknown) | length u16 | value."""
    out = bytearray(RECORD_HEAD + len(value))
    struct.pack_into(">QH", out, 0, ts_ms, len(value))
    out[RECORD_HEAD:] = value
    return out


def boot_epoch(path):
    """Read, increment and durably store the boot counter kept in path."""
    n = 0
    try:
        with open(path, "rb") as f:
            b = f.read(4)
            if len(b) == 4:
                n = struct.unpack(">I", b)[0]
    except OSError:
        pass
    n = (n + 1) & 0xFFFFFFFF
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack(">I", n))
    import os

    os.rename(tmp, path)
    return n


class _Stream:
    def __init__(self, name, buf):
        self.name = name  # bytes
        self.buf = buf
        self.send_seq = buf.first_seq
        self.inflight = []  # [base, count] of frames sent and not yet acknowledged
        self.hold_until = 0
        self.deadline = 0
        self.backoff = 1


class SerialLink:
    """Sends buffered records over a UART-like object (write, readinto)."""

    def __init__(self, uart, device_id, boot_epoch, fw_version="0.1.0", window=4,
                 max_frame=MAX_FRAME, rto_ms=1000, on_delivered=None):
        did = device_id.encode() if isinstance(device_id, str) else bytes(device_id)
        fw = fw_version.encode() if isinstance(fw_version, str) else bytes(fw_version)
        if not 0 < len(did) <= MAX_NAME or len(fw) > 16:
            raise ValueError("device id or firmware version length")
        if not 1 <= window <= 4 or not 64 <= max_frame <= MAX_FRAME:
            raise ValueError("window or max_frame")
        self.uart = uart
        self.device_id = did
        self.fw_version = fw
        self.boot_epoch = boot_epoch
        self.window = window
        self.max_frame = max_frame
        self.rto_ms = rto_ms
        self.on_delivered = on_delivered
        self.streams = {}
        self.welcomed = False
        self._next_hello = 0
        self._hello_backoff = 100
        self._tx = bytearray(MAX_FRAME)
        self._enc = bytearray(cobs.max_encoded(MAX_FRAME) + 1)
        self._chunk = bytearray(64)
        self._acc = bytearray(cobs.max_encoded(_RX_MAX))
        self._acc_n = 0
        self._acc_over = False
        self._rx = bytearray(_RX_MAX)
        self.stats = {"frames_out": 0, "retransmits": 0, "acks": 0, "naks": 0,
                      "bad_frames": 0, "delivered": 0, "hellos": 0}

    # -- application side ----------------------------------------------------

    def add_stream(self, name, buf):
        n = name.encode() if isinstance(name, str) else bytes(name)
        if not 0 < len(n) <= MAX_NAME:
            raise ValueError("stream name length")
        self.streams[n] = _Stream(n, buf)

    def push(self, stream, value, ts_ms=0):
        """Buffer one reading (bytes, e.g. CBOR); return its seq, or -1 if the buffer is full."""
        st = self.streams[stream.encode() if isinstance(stream, str) else stream]
        if RECORD_HEAD + len(value) > self.max_frame - 20 - len(st.name):
            raise ValueError("record larger than a frame")
        return st.buf.append(encode_record(ts_ms, value), self.boot_epoch)

    def pending(self):
        n = 0
        for st in self.streams.values():
            n += len(st.buf)
        return n

    def poll(self, now=None):
        if now is None:
            now = time.ticks_ms()
        self._receive(now)
        if not self.welcomed:
            if time.ticks_diff(now, self._next_hello) >= 0:
                self._send_hello()
                self._next_hello = time.ticks_add(now, self._hello_backoff)
                self._hello_backoff = min(self._hello_backoff * 2, _HELLO_MAX_BACKOFF)
            return
        for st in self.streams.values():
            self._pump(st, now)

    # -- sending -------------------------------------------------------------

    def _pump(self, st, now):
        if time.ticks_diff(now, st.hold_until) < 0:
            return
        if st.inflight and time.ticks_diff(now, st.deadline) >= 0:
            self.stats["retransmits"] += 1
            self._rewind(st, st.buf.first_seq)
            st.backoff = min(st.backoff * 2, 8)
        buf = st.buf
        while len(st.inflight) < self.window and st.send_seq != buf.next_seq:
            n = self._send_records(st)
            if n == 0:
                return
            if not st.inflight:
                st.deadline = time.ticks_add(now, self.rto_ms * st.backoff)
            st.inflight.append([st.send_seq, n])
            st.send_seq = seq_add(st.send_seq, n)

    def _send_records(self, st):
        buf = st.buf
        idx = seq_diff(st.send_seq, buf.first_seq)
        avail = buf.in_ram() - idx
        if avail <= 0:
            return 0
        tx = self._tx
        head = 16 + len(st.name)
        limit = self.max_frame - 4
        n = buf.cuts.get(st.send_seq, 0)
        if n > avail:
            return 0
        if n == 0:
            epoch = buf.epoch_at(idx)
            size = head
            while n < avail and n < 255 and buf.epoch_at(idx + n) == epoch:
                size += buf.size_at(idx + n)
                if size > limit:
                    break
                n += 1
            if n == 0:
                return 0
            buf.cut(st.send_seq, n)
        struct.pack_into(">BBIIIB", tx, 0, RECORDS, VERSION, buf.epoch_at(idx),
                         st.send_seq, buf.first_seq, len(st.name))
        tx[15:15 + len(st.name)] = st.name
        off = 15 + len(st.name)
        tx[off] = n
        off += 1
        for i in range(idx, idx + n):
            off += buf.copy_into(i, tx, off)
        self._write_frame(off)
        return n

    def _send_hello(self):
        tx = self._tx
        struct.pack_into(">BBIB", tx, 0, HELLO, VERSION, self.boot_epoch, len(self.device_id))
        off = 7
        tx[off:off + len(self.device_id)] = self.device_id
        off += len(self.device_id)
        tx[off] = len(self.fw_version)
        off += 1
        tx[off:off + len(self.fw_version)] = self.fw_version
        off += len(self.fw_version)
        self.stats["hellos"] += 1
        self._write_frame(off)

    def _write_frame(self, n):
        tx = self._tx
        c = crc32(memoryview(tx)[:n]) & 0xFFFFFFFF
        struct.pack_into(">I", tx, n, c)
        m = cobs.encode_into(tx, n + 4, self._enc)
        self._enc[m] = 0
        mv = memoryview(self._enc)[:m + 1]
        while mv:
            w = self.uart.write(mv)
            if w is None:
                w = 0
            mv = mv[w:]
        self.stats["frames_out"] += 1

    def _rewind(self, st, target):
        buf = st.buf
        if seq_diff(target, buf.first_seq) > seq_diff(st.send_seq, buf.first_seq):
            return  # the gateway cannot expect what was never sent
        if target != buf.first_seq and target not in buf.cuts:
            target = buf.first_seq
        keep = []
        for f in st.inflight:
            if seq_diff(target, f[0]) >= f[1] and seq_diff(target, f[0]) < 0x40000000:
                keep.append(f)
        st.inflight = keep
        st.send_seq = target

    # -- receiving -----------------------------------------------------------

    def _receive(self, now):
        chunk = self._chunk
        for _ in range(8):
            n = self.uart.readinto(chunk)
            if not n:
                return
            start = 0
            while start < n:
                z = chunk.find(b"\x00", start, n)
                end = n if z < 0 else z
                run = end - start
                if run:
                    if self._acc_n + run > len(self._acc):
                        self._acc_over = True
                    else:
                        self._acc[self._acc_n:self._acc_n + run] = memoryview(chunk)[start:end]
                        self._acc_n += run
                if z < 0:
                    break
                if self._acc_over:
                    self.stats["bad_frames"] += 1
                elif self._acc_n:
                    self._frame(now)
                self._acc_n = 0
                self._acc_over = False
                start = z + 1

    def _frame(self, now):
        rx = self._rx
        n = cobs.decode_into(self._acc, self._acc_n, rx)
        if n < 6 or rx[1] != VERSION:
            self.stats["bad_frames"] += 1
            return
        if crc32(memoryview(rx)[:n - 4]) & 0xFFFFFFFF != struct.unpack_from(">I", rx, n - 4)[0]:
            self.stats["bad_frames"] += 1
            return
        t = rx[0]
        if t == WELCOME and n == 13:
            epoch, mf, w = struct.unpack_from(">IHB", rx, 2)
            if epoch == self.boot_epoch and not self.welcomed:
                self.welcomed = True
                self._hello_backoff = 100
                if 64 <= mf < self.max_frame:
                    self.max_frame = mf
                if 1 <= w < self.window:
                    self.window = w
                for st in self.streams.values():
                    self._rewind(st, st.buf.first_seq)
                    st.inflight = []
                    st.hold_until = now
        elif t == ACK and n >= 15 and n == 15 + rx[10]:
            epoch, nxt = struct.unpack_from(">II", rx, 2)
            st = self.streams.get(bytes(rx[11:11 + rx[10]]))
            if st is not None:
                self._ack(st, epoch, nxt, now)
        elif t == NAK and n >= 14 and n == 14 + rx[9]:
            reason, retry, nxt = struct.unpack_from(">BHI", rx, 2)
            self.stats["naks"] += 1
            if reason == NAK_HELLO_REQUIRED:
                self.welcomed = False
                self._next_hello = now
                return
            st = self.streams.get(bytes(rx[10:10 + rx[9]]))
            if st is None:
                return
            if retry:
                st.hold_until = time.ticks_add(now, retry)
                st.deadline = time.ticks_add(st.hold_until, self.rto_ms)
            if nxt != NO_SEQ:
                self._rewind(st, nxt & SEQ_MASK)
        else:
            self.stats["bad_frames"] += 1

    def _ack(self, st, epoch, nxt, now):
        buf = st.buf
        first = buf.first_seq
        d = buf.confirm(epoch, nxt)
        if d == 0:
            return
        self.stats["acks"] += 1
        self.stats["delivered"] += d
        st.backoff = 1
        keep = []
        for f in st.inflight:
            if seq_diff(seq_add(f[0], f[1]), nxt) > 0 and seq_diff(seq_add(f[0], f[1]), nxt) < 0x40000000:
                keep.append(f)
        st.inflight = keep
        if seq_diff(st.send_seq, buf.first_seq) >= 0x40000000:
            st.send_seq = buf.first_seq
        st.deadline = time.ticks_add(now, self.rto_ms)
        if self.on_delivered is not None:
            self.on_delivered(st.name, first, d)

# Device-side record buffer: a bounded RAM ring (by count and by bytes) with an
# optional append-only flash spool. A record stays until the gateway confirms
# it (cumulative, by sequence number); nothing is ever dropped silently: when
# the buffer is full, append() refuses the new record and counts it.
#
# Every record gets a sequence number (31 bits, wrapping to 0 after 2**31-1 as
# the SPU's producer sequences do) and carries the boot epoch it was made in.
# The buffer also remembers where the link cut frames ("cuts"), so that a frame
# that is sent again after a reboot has exactly the same records as the first
# time: the SPU recognises a retried batch only by its exact sequence range.
#
# Spool file format: a sequence of entries
#     kind u8 | length u16 | payload | crc32 u32   (big-endian; crc over kind..payload)
#   kind "R": epoch u32 | seq u32 | record bytes
#   kind "C": base seq u32 | count u8            (a frame cut)
#   kind "A": epoch u32 | next seq u32           (confirmed up to next, exclusive)
# Entries after the first damaged one (a write torn by power loss) are ignored.
# The file is only appended to; once everything in it is confirmed it is
# started afresh with one "A" entry, so flash sees mostly sequential writes.

import struct
from array import array
from binascii import crc32

SEQ_MASK = 0x7FFFFFFF
_ENTRY = ">BH"
_R = 0x52
_C = 0x43
_A = 0x41


def seq_add(a, n):
    return (a + n) & SEQ_MASK


def seq_diff(a, b):
    """Distance from b forward to a, modulo 2**31."""
    return (a - b) & SEQ_MASK


class Buffer:
    """Unconfirmed records of one stream, oldest first."""

    def __init__(self, max_count=64, max_bytes=4096, spool=None, spool_max=65536):
        if max_count < 1 or max_count > 4096 or max_bytes < 16 or max_bytes > 0xFFFF:
            raise ValueError("buffer bounds")
        self.max_count = max_count
        self.max_bytes = max_bytes
        self._data = bytearray(max_bytes)
        self._mv = memoryview(self._data)
        self._offs = array("H", bytes(2 * max_count))
        self._lens = array("H", bytes(2 * max_count))
        self._epochs = array("I", bytes(4 * max_count))
        self._head = 0  # slot of the oldest record in RAM
        self._count = 0  # records in RAM
        self._used = 0  # bytes in RAM
        self._tail = 0  # byte offset where the next record goes
        self.first_seq = 0  # seq of the oldest unconfirmed record
        self.next_seq = 0  # seq the next appended record gets
        self.cuts = {}  # frame base seq -> record count
        self.refused = 0
        self._spool = None
        self._path = None
        self._spool_max = spool_max
        self._spool_size = 0
        self._overflow = 0  # records in the spool but not in RAM
        self._read_pos = 0  # spool position of the first record not in RAM
        self._hdr = bytearray(3)
        self._ebuf = bytearray(13)
        if spool is not None:
            self._open_spool(spool)

    # -- queries -----------------------------------------------------------

    def __len__(self):
        return self._count + self._overflow

    def in_ram(self):
        return self._count

    def epoch_at(self, i):
        return self._epochs[(self._head + i) % self.max_count]

    def size_at(self, i):
        return self._lens[(self._head + i) % self.max_count]

    def copy_into(self, i, dst, off):
        """Copy record i (0 = oldest, must be in RAM) into dst at off; return its length."""
        slot = (self._head + i) % self.max_count
        start = self._offs[slot]
        n = self._lens[slot]
        end = start + n
        d = memoryview(dst)
        if end <= self.max_bytes:
            d[off:off + n] = self._mv[start:end]
        else:
            first = self.max_bytes - start
            d[off:off + first] = self._mv[start:self.max_bytes]
            d[off + first:off + n] = self._mv[0:n - first]
        return n

    def record(self, i):
        """Record i as bytes (allocates; for tests and tools)."""
        out = bytearray(self.size_at(i))
        self.copy_into(i, out, 0)
        return bytes(out)

    # -- changes -----------------------------------------------------------

    def append(self, rec, epoch):
        """Keep rec (bytes-like) made in boot epoch; return its seq, or -1 when full."""
        n = len(rec)
        if n > self.max_bytes:
            self.refused += 1
            return -1
        fits_ram = self._overflow == 0 and self._count < self.max_count and self._used + n <= self.max_bytes
        if self._spool is not None:
            if self._spool_size + n + 20 > self._spool_max:
                self.refused += 1
                return -1
            pos = self._write_entry(_R, epoch, self.next_seq, rec)
            if not fits_ram:
                if self._overflow == 0:
                    self._read_pos = pos
                self._overflow += 1
        elif not fits_ram:
            self.refused += 1
            return -1
        if fits_ram:
            self._put(rec, epoch)
        seq = self.next_seq
        self.next_seq = seq_add(seq, 1)
        return seq

    def cut(self, base, n):
        """Remember that a frame holds records base .. base+n-1."""
        if self.cuts.get(base) == n:
            return
        self.cuts[base] = n
        if self._spool is not None:
            struct.pack_into(">IB", self._ebuf, 0, base, n)
            self._write_raw(_C, memoryview(self._ebuf)[:5])

    def confirm(self, epoch, next_seq):
        """Drop records before next_seq (cumulative ACK); return how many were dropped.

        An ACK from an older epoch than the oldest record is stale (it was
        meant for records that a reboot without a spool lost) and is ignored.
        """
        total = len(self)
        if total == 0:
            return 0
        if self._count and epoch < self.epoch_at(0):
            return 0
        d = seq_diff(next_seq, self.first_seq)
        if d == 0 or d > total:
            return 0
        if self._spool is not None:
            struct.pack_into(">II", self._ebuf, 0, epoch, next_seq)
            self._write_raw(_A, memoryview(self._ebuf)[:8])
        in_ram = d if d <= self._count else self._count
        self._drop(in_ram)
        if d > in_ram:
            self._skip_overflow(d - in_ram)
        self.first_seq = next_seq
        for b in list(self.cuts):
            if seq_diff(b, self.first_seq) >= 0x40000000:
                del self.cuts[b]
        if self._spool is not None:
            self._refill()
            if len(self) == 0 and self._spool_size > self._spool_max // 4:
                self._restart_spool(epoch)
        return d

    def _put(self, rec, epoch):
        if self._count == 0:
            self._head = 0
            self._tail = 0
        slot = (self._head + self._count) % self.max_count
        start = self._tail
        n = len(rec)
        end = start + n
        src = memoryview(rec)
        if end <= self.max_bytes:
            self._mv[start:end] = src
        else:
            first = self.max_bytes - start
            self._mv[start:self.max_bytes] = src[:first]
            self._mv[0:n - first] = src[first:]
        self._offs[slot] = start
        self._lens[slot] = n
        self._epochs[slot] = epoch
        self._tail = end % self.max_bytes
        self._count += 1
        self._used += n

    def _drop(self, n):
        for _ in range(n):
            self._used -= self._lens[self._head]
            self._head = (self._head + 1) % self.max_count
            self._count -= 1

    # -- spool -------------------------------------------------------------

    def _open_spool(self, path):
        self._path = path
        try:
            f = open(path, "r+b")
        except OSError:
            f = open(path, "w+b")
        self._spool = f
        self._load()

    def _entries(self, pos):
        # Yields (kind, payload memoryview, position, next position); stops at damage.
        f = self._spool
        f.seek(pos)
        while True:
            hdr = f.read(3)
            if len(hdr) < 3:
                return
            kind, n = struct.unpack(_ENTRY, hdr)
            body = f.read(n + 4)
            if len(body) < n + 4:
                return
            c = crc32(hdr)
            c = crc32(memoryview(body)[:n], c) & 0xFFFFFFFF
            if c != struct.unpack_from(">I", body, n)[0]:
                return
            yield kind, memoryview(body)[:n], pos, pos + 3 + n + 4
            pos += 3 + n + 4

    def _load(self):
        # Pass 1: which records are still unconfirmed, and where the valid data ends.
        first = -1
        count = 0
        confirmed = 0
        end = 0
        next_after = -1
        for kind, p, pos, nxt in self._entries(0):
            end = nxt
            if kind == _R:
                seq = struct.unpack_from(">I", p, 4)[0]
                if first < 0:
                    first = (seq - count) & SEQ_MASK
                count += 1
            elif kind == _A:
                nseq = struct.unpack_from(">I", p, 4)[0]
                if first < 0:
                    next_after = nseq
                else:
                    d = seq_diff(nseq, first)
                    if confirmed < d <= count:
                        confirmed = d
        self._spool_size = end
        self._spool.seek(end)
        if first < 0:
            s = next_after if next_after >= 0 else 0
            self.first_seq = self.next_seq = s
        else:
            self.first_seq = seq_add(first, confirmed)
            self.next_seq = seq_add(first, count)
        # Pass 2: reload the unconfirmed tail and the cuts that still matter.
        skip = confirmed
        self._overflow = count - confirmed
        self._read_pos = end
        for kind, p, pos, nxt in self._entries(0):
            if kind == _C:
                base, n = struct.unpack_from(">IB", p, 0)
                if seq_diff(base, self.first_seq) < 0x40000000:
                    self.cuts[base] = n
            elif kind == _R:
                if skip:
                    skip -= 1
                elif self._read_pos == end:
                    self._read_pos = pos
        self._refill()

    def _refill(self):
        if self._overflow == 0:
            return
        pos = self._read_pos
        for kind, p, epos, nxt in self._entries(pos):
            if kind != _R:
                continue
            rec = p[8:]
            if self._count >= self.max_count or self._used + len(rec) > self.max_bytes:
                self._read_pos = epos
                break
            self._put(rec, struct.unpack_from(">I", p, 0)[0])
            self._overflow -= 1
            self._read_pos = nxt
            if self._overflow == 0:
                break
        self._spool.seek(self._spool_size)

    def _skip_overflow(self, n):
        for kind, p, epos, nxt in self._entries(self._read_pos):
            if kind != _R:
                continue
            n -= 1
            self._overflow -= 1
            self._read_pos = nxt
            if n == 0 or self._overflow == 0:
                break
        self._spool.seek(self._spool_size)

    def _write_entry(self, kind, epoch, seq, rec):
        pos = self._spool_size
        struct.pack_into(">BHII", self._ebuf, 0, kind, 8 + len(rec), epoch, seq)
        c = crc32(memoryview(self._ebuf)[:11])
        c = crc32(rec, c) & 0xFFFFFFFF
        f = self._spool
        f.seek(pos)
        f.write(memoryview(self._ebuf)[:11])
        f.write(rec)
        f.write(struct.pack(">I", c))
        f.flush()
        self._spool_size = pos + 11 + len(rec) + 4
        return pos

    def _write_raw(self, kind, payload):
        struct.pack_into(_ENTRY, self._hdr, 0, kind, len(payload))
        c = crc32(self._hdr)
        c = crc32(payload, c) & 0xFFFFFFFF
        f = self._spool
        f.seek(self._spool_size)
        f.write(self._hdr)
        f.write(payload)
        f.write(struct.pack(">I", c))
        f.flush()
        self._spool_size += 3 + len(payload) + 4

    def _restart_spool(self, epoch):
        f = self._spool
        # Truncation is not portable on MicroPython: reopen for writing instead.
        f.close()
        f = open(self._path, "w+b")
        self._spool = f
        self._spool_size = 0
        self.cuts = {}
        struct.pack_into(">II", self._ebuf, 0, epoch, self.next_seq)
        self._write_raw(_A, memoryview(self._ebuf)[:8])

    def close(self):
        if self._spool is not None:
            self._spool.close()
            self._spool = None

# Consistent Overhead Byte Stuffing, written for MicroPython.
#
# Encoding removes every 0x00 from a frame, so 0x00 can delimit frames on the
# line and a receiver resynchronises at the next 0x00 after any garbage.
# Overhead is fixed: at most one byte per 254 bytes plus one, which lets both
# sides preallocate their buffers (no heap churn on a 64 KB device).
# Runs of non-zero bytes are found with bytearray.find, so the copying happens
# in C, not byte by byte in Python.

_ZERO = b"\x00"


def max_encoded(n):
    """Largest encoding of n bytes (delimiter not included)."""
    return n + n // 254 + 1


def encode_into(src, n, dst):
    """COBS-encode src[:n] into dst; return the encoded length (no delimiter)."""
    s = memoryview(src)
    d = memoryview(dst)
    i = 0
    o = 0
    while True:
        end = i + 254
        if end > n:
            end = n
        z = src.find(_ZERO, i, end)
        if z < 0:
            z = end
        run = z - i
        if run == 254:
            d[o] = 0xFF
            d[o + 1:o + 255] = s[i:z]
            o += 255
            i = z
            if i >= n:
                return o
            continue
        d[o] = run + 1
        if run:
            d[o + 1:o + 1 + run] = s[i:z]
        o += run + 1
        i = z + 1
        if i > n:
            return o


def decode_into(src, n, dst):
    """COBS-decode src[:n] into dst; return the length, or -1 if malformed or too long."""
    s = memoryview(src)
    d = memoryview(dst)
    cap = len(dst)
    i = 0
    o = 0
    while i < n:
        c = src[i]
        if c == 0:
            return -1
        i += 1
        run = c - 1
        if i + run > n or o + run > cap:
            return -1
        if run:
            d[o:o + run] = s[i:i + run]
        o += run
        i += run
        if c != 0xFF and i < n:
            if o >= cap:
                return -1
            d[o] = 0
            o += 1
    return o

# A compact CBOR (RFC 8949) subset for MicroPython devices.
#
# Encodes and decodes: int (up to 64 bits), bytes, str, list/tuple, dict, bool,
# None and float (float32 when the value survives the round trip, otherwise
# float64). Deliberately absent, because the MicroPython decoders in the field
# lack them: tags, NaN/Inf, float16, indefinite lengths, undefined and other
# simple values. Anything outside the subset raises ValueError, never anything
# else, so a device can log and drop a bad payload.

import struct

MAX_DEPTH = 16  # nesting bound: recursion on a 64 KB heap is not free


def _head(out, major, n):
    m = major << 5
    if n < 24:
        out.append(m | n)
    elif n < 0x100:
        out.append(m | 24)
        out.append(n)
    elif n < 0x10000:
        out.append(m | 25)
        out.extend(struct.pack(">H", n))
    elif n < 0x100000000:
        out.append(m | 26)
        out.extend(struct.pack(">I", n))
    elif n < 0x10000000000000000:
        out.append(m | 27)
        out.extend(struct.pack(">Q", n))
    else:
        raise ValueError("int too large")


def head_into(dst, off, major, n):
    """Write the head of an item (major type, argument n < 2**32) into dst at off;
    return the offset after it. For building messages in a preallocated buffer."""
    m = major << 5
    if n < 24:
        dst[off] = m | n
        return off + 1
    if n < 0x100:
        dst[off] = m | 24
        dst[off + 1] = n
        return off + 2
    if n < 0x10000:
        dst[off] = m | 25
        struct.pack_into(">H", dst, off + 1, n)
        return off + 3
    if n < 0x100000000:
        dst[off] = m | 26
        struct.pack_into(">I", dst, off + 1, n)
        return off + 5
    raise ValueError("argument too large")


def _float(out, x):
    if x != x or x in (float("inf"), float("-inf")):
        raise ValueError("NaN/Inf not allowed")
    b = struct.pack(">f", x)
    if struct.unpack(">f", b)[0] == x:
        out.append(0xFA)
        out.extend(b)
    else:
        out.append(0xFB)
        out.extend(struct.pack(">d", x))


def _enc(out, v, depth):
    if depth > MAX_DEPTH:
        raise ValueError("too deep")
    if v is None:
        out.append(0xF6)
    elif v is True:
        out.append(0xF5)
    elif v is False:
        out.append(0xF4)
    elif isinstance(v, int):
        if v >= 0:
            _head(out, 0, v)
        else:
            _head(out, 1, -1 - v)
    elif isinstance(v, float):
        _float(out, v)
    elif isinstance(v, (bytes, bytearray, memoryview)):
        _head(out, 2, len(v))
        out.extend(v)
    elif isinstance(v, str):
        b = v.encode()
        _head(out, 3, len(b))
        out.extend(b)
    elif isinstance(v, (list, tuple)):
        _head(out, 4, len(v))
        for x in v:
            _enc(out, x, depth + 1)
    elif isinstance(v, dict):
        _head(out, 5, len(v))
        for k in v:
            _enc(out, k, depth + 1)
            _enc(out, v[k], depth + 1)
    else:
        raise ValueError("unsupported type")


def dumps(v):
    """Encode v; raise ValueError for anything outside the subset."""
    out = bytearray()
    _enc(out, v, 0)
    return bytes(out)


def _need(buf, i, n):
    if i + n > len(buf):
        raise ValueError("truncated")


def _arg(buf, i, info):
    # -> (value, next index)
    if info < 24:
        return info, i
    if info == 24:
        _need(buf, i, 1)
        return buf[i], i + 1
    if info == 25:
        _need(buf, i, 2)
        return struct.unpack_from(">H", buf, i)[0], i + 2
    if info == 26:
        _need(buf, i, 4)
        return struct.unpack_from(">I", buf, i)[0], i + 4
    if info == 27:
        _need(buf, i, 8)
        return struct.unpack_from(">Q", buf, i)[0], i + 8
    raise ValueError("indefinite or reserved length")


def _dec(buf, i, depth):
    if depth > MAX_DEPTH:
        raise ValueError("too deep")
    _need(buf, i, 1)
    ib = buf[i]
    i += 1
    major = ib >> 5
    info = ib & 31
    if major == 7:
        if info == 20:
            return False, i
        if info == 21:
            return True, i
        if info == 22:
            return None, i
        if info == 26:
            _need(buf, i, 4)
            x = struct.unpack_from(">f", buf, i)[0]
            i += 4
        elif info == 27:
            _need(buf, i, 8)
            x = struct.unpack_from(">d", buf, i)[0]
            i += 8
        else:
            raise ValueError("unsupported simple/float16")
        if x != x or x in (float("inf"), float("-inf")):
            raise ValueError("NaN/Inf not allowed")
        return x, i
    n, i = _arg(buf, i, info)
    if major == 0:
        return n, i
    if major == 1:
        return -1 - n, i
    if major == 2 or major == 3:
        _need(buf, i, n)
        b = bytes(buf[i:i + n])
        i += n
        if major == 3:
            try:
                return b.decode(), i
            except UnicodeError:
                raise ValueError("bad utf-8")
        return b, i
    if major == 4:
        if n > len(buf) - i:
            raise ValueError("truncated")
        items = []
        for _ in range(n):
            x, i = _dec(buf, i, depth + 1)
            items.append(x)
        return items, i
    if major == 5:
        if 2 * n > len(buf) - i:
            raise ValueError("truncated")
        d = {}
        for _ in range(n):
            k, i = _dec(buf, i, depth + 1)
            if isinstance(k, (list, dict)):
                raise ValueError("unhashable key")
            d[k], i = _dec(buf, i, depth + 1)
        return d, i
    raise ValueError("tags not allowed")


def loads(buf):
    """Decode one item that fills buf exactly; raise ValueError otherwise."""
    v, i = _dec(buf, 0, 0)
    if i != len(buf):
        raise ValueError("trailing bytes")
    return v

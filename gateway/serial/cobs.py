"""Consistent Overhead Byte Stuffing (Cheshire & Baker, 1999), canonical form.

The encoding contains no 0x00, so 0x00 delimits frames on the serial line.
Overhead is at most one byte per 254 bytes plus one (see ``max_encoded``).
"""

from __future__ import annotations

from typing import Final

from gateway.serial.errors import SerialProtocolError

_RUN: Final = 254


def max_encoded(n: int) -> int:
    """Largest encoding of ``n`` bytes, delimiter not included."""
    return n + n // _RUN + 1


def encode(data: bytes | bytearray | memoryview) -> bytes:
    """COBS-encode ``data`` (no trailing delimiter)."""
    src = bytes(data)
    out = bytearray()
    i = 0
    n = len(src)
    while True:
        end = min(i + _RUN, n)
        z = src.find(0, i, end)
        if z < 0:
            z = end
        run = z - i
        if run == _RUN:
            out.append(0xFF)
            out += src[i:z]
            i = z
            if i >= n:
                return bytes(out)
            continue
        out.append(run + 1)
        out += src[i:z]
        i = z + 1
        if i > n:
            return bytes(out)


def decode(data: bytes | bytearray | memoryview) -> bytes:
    """Decode one COBS block (delimiter stripped); raise SerialProtocolError if malformed."""
    src = bytes(data)
    out = bytearray()
    i = 0
    n = len(src)
    while i < n:
        code = src[i]
        if code == 0:
            raise SerialProtocolError("zero byte inside a COBS block", reason="cobs", at=i)
        i += 1
        end = i + code - 1
        if end > n:
            raise SerialProtocolError("COBS block overruns its frame", reason="cobs", at=i)
        out += src[i:end]
        i = end
        if code != 0xFF and i < n:
            out.append(0)
    return bytes(out)

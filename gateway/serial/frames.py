"""Frames of the Headwater serial link, version 1 (docs/SERIAL-PROTOCOL.md).

A decoded frame is ``type u8 | version u8 | body | crc32 u32``, big-endian,
the CRC (zlib/binascii CRC-32) covering type..body. On the line each frame is
COBS-encoded and followed by one 0x00.

Bodies::

    HELLO   (1, device->gateway)  boot_epoch u32 | id_len u8 | device_id | fw_len u8 | fw_version
    WELCOME (2, gateway->device)  boot_epoch u32 | max_frame u16 | window u8
    RECORDS (3, device->gateway)  epoch u32 | base_seq u32 | resume_seq u32 | name_len u8 | stream
                                  | count u8 | count x (ts_ms u64 | value_len u16 | value)
    ACK     (4, gateway->device)  epoch u32 | next_seq u32 | name_len u8 | stream
    NAK     (5, gateway->device)  reason u8 | retry_after_ms u16 | next_seq u32 | name_len u8
                                  | stream

Sequence numbers are 31-bit and wrap to 0 after 2**31-1; ``next_seq`` in a NAK
may be NO_SEQ (0xFFFFFFFF). Device ids and stream names are 1..32 bytes of
``[A-Za-z0-9._-]`` (an empty stream in a NAK means "no stream").
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Callable
from enum import IntEnum
from typing import Final, NamedTuple

from gateway.serial import cobs
from gateway.serial.errors import SerialProtocolError

VERSION: Final = 1
MAX_FRAME: Final = 1024  # decoded bytes incl. CRC; fixed for version 1
MAX_ENCODED: Final = cobs.max_encoded(MAX_FRAME)
MAX_NAME: Final = 32
MAX_FW: Final = 16
MAX_RECORDS: Final = 255
SEQ_BITS: Final = 31
SEQ_MASK: Final = (1 << SEQ_BITS) - 1
NO_SEQ: Final = 0xFFFFFFFF
MIN_FRAME: Final = 6  # type, version, CRC

_HEAD: Final = struct.Struct(">BB")
_CRC: Final = struct.Struct(">I")
_HELLO: Final = struct.Struct(">IB")
_WELCOME: Final = struct.Struct(">IHB")
_RECORDS: Final = struct.Struct(">IIIB")
_RECORD: Final = struct.Struct(">QH")
_ACK: Final = struct.Struct(">IIB")
_NAK: Final = struct.Struct(">BHIB")
_NAME_RE: Final = re.compile(rb"[A-Za-z0-9._-]{1,32}")


class FrameType(IntEnum):
    HELLO = 1
    WELCOME = 2
    RECORDS = 3
    ACK = 4
    NAK = 5


class NakReason(IntEnum):
    BAD_CRC = 1
    BUSY = 2
    OUT_OF_ORDER = 3
    HELLO_REQUIRED = 4
    MALFORMED = 5
    REJECTED = 6
    TOO_LARGE = 7


class Hello(NamedTuple):
    boot_epoch: int
    device_id: str
    fw_version: str


class Welcome(NamedTuple):
    boot_epoch: int
    max_frame: int
    window: int


class DeviceRecord(NamedTuple):
    ts_ms: int  # ms since the Unix epoch, 0 when the device has no clock
    value: bytes


class Records(NamedTuple):
    epoch: int
    base_seq: int
    resume_seq: int  # oldest sequence the device still holds unacknowledged
    stream: str
    records: tuple[DeviceRecord, ...]


class Ack(NamedTuple):
    epoch: int
    next_seq: int
    stream: str


class Nak(NamedTuple):
    reason: NakReason
    retry_after_ms: int
    next_seq: int
    stream: str


Frame = Hello | Welcome | Records | Ack | Nak


def seq_add(a: int, n: int) -> int:
    return (a + n) & SEQ_MASK


def seq_diff(a: int, b: int) -> int:
    """Distance from ``b`` forward to ``a`` in the 31-bit sequence space."""
    return (a - b) & SEQ_MASK


def _name(raw: bytes, *, empty_ok: bool = False) -> str:
    if not raw and empty_ok:
        return ""
    if _NAME_RE.fullmatch(raw) is None:
        raise SerialProtocolError("invalid device id or stream name", reason="layout", name=raw)
    return raw.decode("ascii")


def _seq(value: int) -> int:
    if value > SEQ_MASK:
        raise SerialProtocolError("sequence number out of range", reason="layout", seq=value)
    return value


def encode_body(frame: Frame) -> bytes:
    """Type, version and body of ``frame`` (no CRC); raise ValueError on bad fields."""
    match frame:
        case Hello(epoch, device_id, fw):
            did, fwb = device_id.encode("ascii"), fw.encode("ascii")
            if _NAME_RE.fullmatch(did) is None or len(fwb) > MAX_FW:
                raise ValueError("device id or firmware version")
            body = _HELLO.pack(epoch, len(did)) + did + bytes([len(fwb)]) + fwb
        case Welcome(epoch, max_frame, window):
            body = _WELCOME.pack(epoch, max_frame, window)
        case Records(epoch, base, resume, stream, records):
            name = stream.encode("ascii")
            if not 0 < len(records) <= MAX_RECORDS or _NAME_RE.fullmatch(name) is None:
                raise ValueError("record count or stream name")
            parts = [_RECORDS.pack(epoch, base, resume, len(name)), name, bytes([len(records)])]
            for rec in records:
                parts += [_RECORD.pack(rec.ts_ms, len(rec.value)), rec.value]
            body = b"".join(parts)
        case Ack(epoch, next_seq, stream):
            name = stream.encode("ascii")
            body = _ACK.pack(epoch, next_seq, len(name)) + name
        case Nak(reason, retry, next_seq, stream):
            name = stream.encode("ascii")
            body = _NAK.pack(reason, retry, next_seq, len(name)) + name
    return _HEAD.pack(_TYPE_OF[type(frame)], VERSION) + body


_TYPE_OF: Final[dict[type, int]] = {
    Hello: FrameType.HELLO,
    Welcome: FrameType.WELCOME,
    Records: FrameType.RECORDS,
    Ack: FrameType.ACK,
    Nak: FrameType.NAK,
}


def encode_frame(frame: Frame) -> bytes:
    """Decoded frame bytes: body plus CRC-32."""
    raw = encode_body(frame)
    if len(raw) + _CRC.size > MAX_FRAME:
        raise ValueError(f"frame of {len(raw) + 4} bytes exceeds {MAX_FRAME}")
    return raw + _CRC.pack(zlib.crc32(raw))


def wire(frame: Frame) -> bytes:
    """Bytes on the line: COBS(frame) followed by 0x00."""
    return cobs.encode(encode_frame(frame)) + b"\x00"


def decode_frame(raw: bytes) -> Frame:
    """Parse one decoded frame; raise SerialProtocolError for anything else."""
    if len(raw) < MIN_FRAME:
        raise SerialProtocolError("frame too short", reason="short", size=len(raw))
    if len(raw) > MAX_FRAME:
        raise SerialProtocolError("frame too large", reason="too_large", size=len(raw))
    (crc,) = _CRC.unpack_from(raw, len(raw) - 4)
    if zlib.crc32(raw[:-4]) != crc:
        raise SerialProtocolError("CRC mismatch", reason="crc", size=len(raw))
    kind, version = _HEAD.unpack_from(raw)
    if version != VERSION:
        raise SerialProtocolError("unsupported version", reason="version", version=version)
    body = raw[2:-4]
    try:
        return _PARSERS[kind](body)
    except KeyError:
        raise SerialProtocolError("unknown frame type", reason="type", type=kind) from None
    except (struct.error, IndexError, ValueError):
        raise SerialProtocolError(
            "frame body does not match its type", reason="layout", type=kind
        ) from None


def _exact(body: bytes, end: int) -> None:
    if end != len(body):
        raise SerialProtocolError("frame length mismatch", reason="layout", size=len(body))


def _parse_hello(body: bytes) -> Hello:
    epoch, id_len = _HELLO.unpack_from(body)
    off = _HELLO.size
    device_id = _name(body[off : off + id_len])
    off += id_len
    fw_len = body[off]
    off += 1
    fw = body[off : off + fw_len]
    if fw_len > MAX_FW or len(fw) != fw_len or not fw.isascii():
        raise SerialProtocolError("bad firmware version", reason="layout")
    _exact(body, off + fw_len)
    return Hello(epoch, device_id, fw.decode("ascii"))


def _parse_welcome(body: bytes) -> Welcome:
    _exact(body, _WELCOME.size)
    return Welcome(*_WELCOME.unpack(body))


def _parse_records(body: bytes) -> Records:
    epoch, base, resume, name_len = _RECORDS.unpack_from(body)
    off = _RECORDS.size
    stream = _name(body[off : off + name_len])
    off += name_len
    count = body[off]
    off += 1
    if count == 0:
        raise SerialProtocolError("RECORDS frame without records", reason="layout")
    records = []
    for _ in range(count):
        ts, size = _RECORD.unpack_from(body, off)
        off += _RECORD.size
        value = body[off : off + size]
        if len(value) != size:
            raise SerialProtocolError("record overruns its frame", reason="layout")
        off += size
        records.append(DeviceRecord(ts, value))
    _exact(body, off)
    return Records(epoch, _seq(base), _seq(resume), stream, tuple(records))


def _parse_ack(body: bytes) -> Ack:
    epoch, next_seq, name_len = _ACK.unpack_from(body)
    stream = _name(body[_ACK.size : _ACK.size + name_len])
    _exact(body, _ACK.size + name_len)
    return Ack(epoch, _seq(next_seq), stream)


def _parse_nak(body: bytes) -> Nak:
    reason, retry, next_seq, name_len = _NAK.unpack_from(body)
    stream = _name(body[_NAK.size : _NAK.size + name_len], empty_ok=True)
    _exact(body, _NAK.size + name_len)
    if next_seq != NO_SEQ:
        _seq(next_seq)
    return Nak(NakReason(reason), retry, next_seq, stream)


_PARSERS: Final[dict[int, Callable[[bytes], Frame]]] = {
    FrameType.HELLO: _parse_hello,
    FrameType.WELCOME: _parse_welcome,
    FrameType.RECORDS: _parse_records,
    FrameType.ACK: _parse_ack,
    FrameType.NAK: _parse_nak,
}

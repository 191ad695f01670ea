"""Writes tests/vectors/serial.json, the golden vectors of the serial link.

Run ``python tests/gateway/serial/make_serial_vectors.py`` after a deliberate
change of the protocol; test_serial_vectors.py fails while the file and this
script disagree. The MicroPython tests read the same file.
"""

from __future__ import annotations

import json
import sys
import zlib
from pathlib import Path
from typing import Any

from gateway.serial import cobs
from gateway.serial.frames import (
    NO_SEQ,
    Ack,
    DeviceRecord,
    Frame,
    Hello,
    Nak,
    NakReason,
    Records,
    Welcome,
    encode_frame,
    wire,
)
from gateway.serial.session import producer_identity

PATH = Path(__file__).resolve().parents[2] / "vectors" / "serial.json"

COBS_CASES = {
    "empty": b"",
    "one_zero": b"\x00",
    "two_zeros": b"\x00\x00",
    "mixed": b"\x11\x22\x00\x33",
    "trailing_zeros": b"\x11\x00\x00\x00",
    "run_254": bytes(range(1, 255)),
    "zero_then_254": bytes(range(255)),
    "run_255": bytes(range(1, 256)),
    "run_253_zero": bytes(range(2, 256)) + b"\x00",
    "run_252_zero_one": bytes(range(3, 256)) + b"\x00\x01",
}

FRAMES: dict[str, Frame] = {
    "hello": Hello(7, "pi-sensor-01", "0.1.0"),
    "hello_max_epoch": Hello(0xFFFFFFFF, "a", ""),
    "welcome": Welcome(7, 1024, 4),
    "records_one": Records(7, 0, 0, "temp", (DeviceRecord(0, b"\xa1at\xfa\x41\xac\x00\x00"),)),
    "records_three": Records(
        7,
        41,
        37,
        "env",
        (
            DeviceRecord(1_700_000_000_000, b"\x01"),
            DeviceRecord(1_700_000_000_500, b""),
            DeviceRecord(1_700_000_001_000, b"\x00\x00\xff"),
        ),
    ),
    "records_wrap": Records(3, 0x7FFFFFFF, 0x7FFFFFFE, "temp", (DeviceRecord(0, b"\x00"),)),
    "ack": Ack(7, 42, "temp"),
    "nak_bad_crc": Nak(NakReason.BAD_CRC, 0, NO_SEQ, ""),
    "nak_busy": Nak(NakReason.BUSY, 500, 41, "env"),
    "nak_out_of_order": Nak(NakReason.OUT_OF_ORDER, 0, 40, "temp"),
    "nak_hello_required": Nak(NakReason.HELLO_REQUIRED, 0, NO_SEQ, "temp"),
    "nak_rejected": Nak(NakReason.REJECTED, 10000, 5, "temp"),
}


def fields(frame: Frame) -> dict[str, Any]:
    out: dict[str, Any] = {"type": type(frame).__name__.upper()}
    for k, v in frame._asdict().items():
        if k == "records":
            out[k] = [{"ts_ms": r.ts_ms, "value": r.value.hex()} for r in v]
        else:
            out[k] = int(v) if isinstance(v, int) else v
    return out


def flip(data: bytes, bit: int) -> bytes:
    b = bytearray(data)
    b[bit // 8] ^= 1 << (bit % 8)
    return bytes(b)


def streams() -> list[dict[str, Any]]:
    hello, ack = wire(FRAMES["hello"]), wire(FRAMES["ack"])
    rec = wire(FRAMES["records_three"])
    good = encode_frame(FRAMES["ack"])
    bad_crc = cobs.encode(good[:-1] + bytes([good[-1] ^ 1])) + b"\x00"
    return [
        {"name": "two_frames", "wire": (hello + ack).hex(), "events": ["hello", "ack"]},
        {"name": "idle_delimiters", "wire": ("00" * 3) + ack.hex() + "0000", "events": ["ack"]},
        {
            "name": "garbage_then_frame",
            "wire": (b"\x13\x37\xff\x00" + ack).hex(),
            "events": ["bad:cobs", "ack"],
        },
        {"name": "bad_crc_then_frame", "wire": (bad_crc + ack).hex(), "events": ["bad:crc", "ack"]},
        {
            "name": "flipped_bit_then_frame",
            "wire": (flip(rec, 40) + ack).hex(),
            "events": ["bad:crc", "ack"],
        },
        {
            "name": "truncated_then_frame",
            "wire": (hello[:9] + b"\x00" + ack).hex(),
            "events": ["bad:cobs", "ack"],
        },
        {"name": "short_frame", "wire": "0201020300", "events": ["bad:short"]},
        {
            "name": "oversized_run",
            "wire": ("01" * 1100) + "00" + ack.hex(),
            "events": ["bad:too_large", "ack"],
        },
    ]


# Record payloads the devices encode (firmware/headwater/cbor.py): value in tagged
# JSON, CBOR as the device writes it (float32 where exact, never float16).
CBOR_CASES: list[tuple[str, Any, str]] = [
    ("uint_small", {"int": 23}, "17"),
    ("uint_8", {"int": 24}, "1818"),
    ("uint_16", {"int": 256}, "190100"),
    ("uint_32", {"int": 65536}, "1a00010000"),
    ("uint_64", {"int": 2**64 - 1}, "1bffffffffffffffff"),
    ("nint", {"int": -25}, "3818"),
    ("nint_64", {"int": -(2**64)}, "3bffffffffffffffff"),
    ("float32", {"float": 21.5}, "fa41ac0000"),
    ("float64", {"float": 1.1}, "fb3ff199999999999a"),
    ("neg_zero", {"float": -0.0}, "fa80000000"),
    ("true", {"bool": True}, "f5"),
    ("false", {"bool": False}, "f4"),
    ("null", {"null": True}, "f6"),
    ("bytes", {"bytes": "0001ff"}, "430001ff"),
    ("text", {"text": "h\u00e9llo"}, "6668c3a96c6c6f"),
    ("array", {"array": [{"int": 1}, {"array": [{"int": 2}, {"int": 3}]}]}, "8201820203"),
    ("map", {"map": [[{"text": "t"}, {"float": 21.5}]]}, "a16174fa41ac0000"),
]
CBOR_INVALID: list[tuple[str, str]] = [
    ("float16", "f93c00"),
    ("tag", "c11a514b67b0"),
    ("indefinite_array", "9f01ff"),
    ("nan32", "fa7fc00000"),
    ("inf64", "fb7ff0000000000000"),
    ("undefined", "f7"),
    ("truncated", "1a0001"),
    ("bad_utf8", "61ff"),
    ("trailing", "0000"),
]


def build() -> dict[str, Any]:
    identities = [
        ("pi-sensor-01", "temp", 7),
        ("pi-sensor-01", "temp", 32767),
        ("pi-sensor-01", "temp", 32768),
        ("pi-sensor-01", "env", 7),
    ]
    return {
        "protocol_version": 1,
        "max_frame": 1024,
        "cobs": [
            {"name": k, "decoded": v.hex(), "encoded": cobs.encode(v).hex()}
            for k, v in COBS_CASES.items()
        ],
        "crc32": [
            {"data": b"123456789".hex(), "crc": zlib.crc32(b"123456789")},
            {"data": "", "crc": 0},
        ],
        "frames": [
            {"name": k, "fields": fields(f), "frame": encode_frame(f).hex(), "wire": wire(f).hex()}
            for k, f in FRAMES.items()
        ],
        "streams": streams(),
        "cbor": [{"name": n, "value": v, "hex": h} for n, v, h in CBOR_CASES],
        "cbor_invalid": [{"name": n, "hex": h} for n, h in CBOR_INVALID],
        "producer_identity": [
            dict(zip(("device_id", "stream", "boot_epoch"), i, strict=True))
            | dict(zip(("producer_id", "producer_epoch"), producer_identity(*i), strict=True))
            for i in identities
        ],
    }


def render() -> str:
    return json.dumps(build(), indent=1) + "\n"


if __name__ == "__main__":
    PATH.write_text(render())
    sys.stdout.write(f"wrote {PATH}\n")

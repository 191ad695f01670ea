"""Writes tests/gateway/mqtt/mqtt_vectors.json, the golden vectors of multi-reading
MQTT messages (docs/GATEWAY.md, *Several readings in one message*).

Run ``python tests/gateway/mqtt/make_mqtt_vectors.py`` after a deliberate change of
the format; test_mqtt_vectors.py fails while the file and this script disagree.
The MicroPython tests (tests/firmware/mp/t_mqtt_link.py) read the same file: the
firmware must publish exactly ``payload`` for the readings, and the gateway must
turn ``payload`` into exactly ``records``.

The bytes are built here from the format's definition, not by either
implementation: readings the way the firmware's ``cbor.dumps`` encodes them
(shortest integer heads, float32 whenever it holds the value exactly, never
float16), the envelope by concatenation.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path
from typing import Any

PATH = Path(__file__).resolve().parent / "mqtt_vectors.json"
SEQ_MODULUS = 2**31


def head(major: int, n: int) -> bytes:
    if n < 24:
        return bytes([major << 5 | n])
    for info, fmt in ((24, ">B"), (25, ">H"), (26, ">I"), (27, ">Q")):
        if n < 1 << (8 * struct.calcsize(fmt)):
            return bytes([major << 5 | info]) + struct.pack(fmt, n)
    raise ValueError(n)


def encode(value: Any) -> bytes:
    """The firmware's CBOR subset (firmware/headwater/cbor.py), for the values used here."""
    if isinstance(value, bool) or value is None:
        return {True: b"\xf5", False: b"\xf4", None: b"\xf6"}[value]
    if isinstance(value, int):
        return head(0, value) if value >= 0 else head(1, -1 - value)
    if isinstance(value, float):
        single = struct.pack(">f", value)
        if struct.unpack(">f", single)[0] == value:
            return b"\xfa" + single
        return b"\xfb" + struct.pack(">d", value)
    if isinstance(value, str):
        raw = value.encode()
        return head(3, len(raw)) + raw
    if isinstance(value, dict):
        return head(5, len(value)) + b"".join(encode(k) + encode(v) for k, v in value.items())
    raise TypeError(type(value))


def envelope(device: str, epoch: int, first_seq: int, readings: list[bytes]) -> bytes:
    return (b"\xa4" + encode("d") + encode(device) + encode("e") + encode(epoch)
            + encode("s") + encode(first_seq) + encode("r") + head(4, len(readings))
            + b"".join(readings))


def tagged(value: Any) -> Any:
    """JSON for tests/firmware/mp/support.untag: maps as pairs, so keys keep their types."""
    if isinstance(value, dict):
        return {"map": [[tagged(k), tagged(v)] for k, v in value.items()]}
    return {type(value).__name__: value}


CASES: list[tuple[str, str, str, int, int, list[dict[str, Any]]]] = [
    # name, device, stream, boot epoch, first sequence, readings
    ("three_readings", "sensor-1", "env", 7, 41, [
        {"t": 1_700_000_000_000, "v": 21.5},
        {"t": 1_700_000_000_250, "v": 21.75},
        {"t": 1_700_000_000_500, "v": -3},
    ]),
    ("one_reading", "sensor-1", "env", 0, 0, [{"v": 0.1}]),
    ("sequence_wraps", "d", "t", 2**32 - 1, 2**31 - 2, [{"v": 1}, {"v": 2}, {"v": 3}]),
    ("array_head_of_two_bytes", "sensor-2", "env", 300, 70000,
     [{"v": i} for i in range(24)]),
]

JSON_CASE = ('{"d": "sensor-1", "e": 7, "s": 41,\n "r": [{"t": 1700000000000, "v": 21.5},'
             ' {"v": "caf\u00e9", "t": 1700000000250}]}')


def vector(name: str, device: str, stream: str, epoch: int, first: int,
           docs: list[dict[str, Any]]) -> dict[str, Any]:
    readings = [encode(doc) for doc in docs]
    payload = envelope(device, epoch, first, readings)
    return {
        "name": name, "device": device, "stream": stream,
        "topic": f"headwater/{device}/{stream}", "epoch": epoch, "first_seq": first,
        "readings": [{"doc": tagged(doc), "hex": raw.hex()} for doc, raw in zip(
            docs, readings, strict=True)],
        "payload": payload.hex(),
        "records": [{"seq": (first + i) % SEQ_MODULUS, "value": raw.hex()}
                    for i, raw in enumerate(readings)],
    }


def json_vector() -> dict[str, Any]:
    data = JSON_CASE.encode()
    first = data.index(b'{"t"')
    second = data.index(b'{"v"')
    return {
        "name": "json_envelope", "device": "sensor-1", "topic": "json/sensor-1/reading",
        "epoch": 7, "first_seq": 41, "payload": data.hex(),
        "records": [
            {"seq": 41, "value": data[first:data.index(b"}", first) + 1].hex()},
            {"seq": 42, "value": data[second:data.index(b"}", second) + 1].hex()},
        ],
    }


def render() -> str:
    """One vector a line: readable diffs, and small enough for a 64 KB heap to parse."""
    sections = {"cbor": [vector(*case) for case in CASES], "json": [json_vector()]}
    parts = []
    for name, vectors in sections.items():
        lines = ",\n".join(json.dumps(v, separators=(",", ":")) for v in vectors)
        parts.append(f"{json.dumps(name)}:[\n{lines}\n]")
    return "{" + ",\n".join(parts) + "}\n"


if __name__ == "__main__":
    PATH.write_text(render())
    sys.stdout.write(f"wrote {PATH}\n")

"""Golden vectors (tests/vectors/serial.json) on CPython; the firmware tests use the same file."""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import cbor2
import pytest

from gateway.serial import cobs
from gateway.serial.codec import BadFrame, FrameDecoder, FrameReceived
from gateway.serial.frames import (
    Ack,
    DeviceRecord,
    Frame,
    Hello,
    Nak,
    NakReason,
    Records,
    Welcome,
    decode_frame,
    encode_frame,
    wire,
)
from gateway.serial.session import producer_identity

VECTORS = Path(__file__).resolve().parents[2] / "vectors" / "serial.json"
DATA: dict[str, Any] = json.loads(VECTORS.read_text())
FRAMES = {v["name"]: v for v in DATA["frames"]}


def frame_from_fields(f: dict[str, Any]) -> Frame:
    kind = f["type"]
    if kind == "HELLO":
        return Hello(f["boot_epoch"], f["device_id"], f["fw_version"])
    if kind == "WELCOME":
        return Welcome(f["boot_epoch"], f["max_frame"], f["window"])
    if kind == "RECORDS":
        recs = tuple(DeviceRecord(r["ts_ms"], bytes.fromhex(r["value"])) for r in f["records"])
        return Records(f["epoch"], f["base_seq"], f["resume_seq"], f["stream"], recs)
    if kind == "ACK":
        return Ack(f["epoch"], f["next_seq"], f["stream"])
    return Nak(NakReason(f["reason"]), f["retry_after_ms"], f["next_seq"], f["stream"])


def test_vectors_file_is_current() -> None:
    from make_serial_vectors import render

    assert VECTORS.read_text() == render()


@pytest.mark.parametrize("case", DATA["cobs"], ids=lambda c: c["name"])
def test_cobs_vectors(case: dict[str, str]) -> None:
    raw, enc = bytes.fromhex(case["decoded"]), bytes.fromhex(case["encoded"])
    assert cobs.encode(raw) == enc
    assert cobs.decode(enc) == raw
    assert 0 not in enc
    assert len(enc) <= cobs.max_encoded(len(raw))


@pytest.mark.parametrize("case", DATA["crc32"], ids=str)
def test_crc_vectors(case: dict[str, Any]) -> None:
    assert zlib.crc32(bytes.fromhex(case["data"])) == case["crc"]


@pytest.mark.parametrize("case", DATA["frames"], ids=lambda c: c["name"])
def test_frame_vectors(case: dict[str, Any]) -> None:
    frame = frame_from_fields(case["fields"])
    assert encode_frame(frame).hex() == case["frame"]
    assert wire(frame).hex() == case["wire"]
    assert decode_frame(bytes.fromhex(case["frame"])) == frame


@pytest.mark.parametrize("case", DATA["streams"], ids=lambda c: c["name"])
def test_stream_vectors_whole_and_bytewise(case: dict[str, Any]) -> None:
    data = bytes.fromhex(case["wire"])
    expected = [
        e if e.startswith("bad:") else frame_from_fields(FRAMES[e]["fields"])
        for e in case["events"]
    ]

    def labels(events: list[FrameReceived | BadFrame]) -> list[object]:
        return [e.frame if isinstance(e, FrameReceived) else f"bad:{e.reason}" for e in events]

    assert labels(FrameDecoder().feed(data)) == expected
    dec = FrameDecoder()
    bytewise = [e for i in range(len(data)) for e in dec.feed(data[i : i + 1])]
    assert labels(bytewise) == expected


def untag(v: dict[str, Any]) -> Any:
    ((kind, x),) = v.items()
    if kind == "bytes":
        return bytes.fromhex(x)
    if kind == "null":
        return None
    if kind == "array":
        return [untag(i) for i in x]
    if kind == "map":
        return {untag(k): untag(val) for k, val in x}
    return x


@pytest.mark.parametrize("case", DATA["cbor"], ids=lambda c: c["name"])
def test_cbor_vectors_decode_with_cbor2(case: dict[str, Any]) -> None:
    value = untag(case["value"])
    assert cbor2.loads(bytes.fromhex(case["hex"])) == value
    if "float" not in json.dumps(case["value"]):  # cbor2 writes every float as float64
        assert cbor2.dumps(value).hex() == case["hex"]


@pytest.mark.parametrize("case", DATA["cbor_invalid"], ids=lambda c: c["name"])
def test_cbor_invalid_vectors_are_outside_the_subset(case: dict[str, Any]) -> None:
    data = bytes.fromhex(case["hex"])
    try:
        cbor2.loads(data)
    except (cbor2.CBORDecodeError, ValueError):
        return
    # cbor2 reads full CBOR (and stops after the first item); the device subset
    # refuses these on purpose, which the MicroPython tests check.
    allowed = {"float16", "tag", "indefinite_array", "nan32", "inf64", "undefined", "trailing"}
    assert case["name"] in allowed


@pytest.mark.parametrize("case", DATA["producer_identity"], ids=str)
def test_producer_identity_vectors(case: dict[str, Any]) -> None:
    pid, epoch = producer_identity(case["device_id"], case["stream"], case["boot_epoch"])
    assert (pid, epoch) == (case["producer_id"], case["producer_epoch"])
    assert 0 <= pid < 2**63
    assert 0 <= epoch < 2**15

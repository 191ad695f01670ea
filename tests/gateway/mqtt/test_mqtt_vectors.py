"""Golden vectors of multi-reading messages (mqtt_vectors.json) on CPython: the gateway
turns each payload into exactly the listed records. The firmware tests check that the
MQTT link publishes exactly these payloads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cbor2
import pytest
from make_mqtt_vectors import render

from gateway.config import MqttRule, PayloadFormat
from gateway.mqtt.decode import Readings, decode, producer_id

VECTORS = Path(__file__).resolve().parent / "mqtt_vectors.json"
DATA: dict[str, Any] = json.loads(VECTORS.read_text())
RULES = (
    MqttRule(filter="headwater/+/+", topic="readings", format=PayloadFormat.CBOR),
    MqttRule(filter="json/+/reading", topic="readings", format=PayloadFormat.JSON),
)


def untag(value: dict[str, Any]) -> Any:
    ((kind, inner),) = value.items()
    if kind == "map":
        return {untag(k): untag(v) for k, v in inner}
    return inner


def test_vectors_file_is_current() -> None:
    assert VECTORS.read_text() == render()


def test_vectors_cover_the_cases_the_firmware_tests_use() -> None:
    names = {v["name"] for v in DATA["cbor"]}
    assert {"three_readings", "sequence_wraps", "array_head_of_two_bytes"} <= names


@pytest.mark.parametrize("vector", DATA["cbor"] + DATA["json"], ids=lambda v: v["name"])
def test_payload_becomes_exactly_these_records(vector: dict[str, Any]) -> None:
    payload = bytes.fromhex(vector["payload"])
    out = decode(RULES, vector["topic"], payload, max_payload_bytes=65536)
    assert isinstance(out, Readings), out
    pid = producer_id(vector["topic"], vector["epoch"])
    assert [(r.value.hex(), r.sequence.seq if r.sequence else None) for r in out.readings] == [
        (rec["value"], rec["seq"]) for rec in vector["records"]
    ]
    for reading in out.readings:
        assert reading.key == vector["device"].encode()
        assert reading.sequence is not None
        assert (reading.sequence.producer_id, reading.sequence.epoch) == (pid, vector["epoch"])
        assert reading.value in payload  # a slice of what the device sent


@pytest.mark.parametrize("vector", DATA["cbor"], ids=lambda v: v["name"])
def test_payload_is_the_envelope_of_its_readings(vector: dict[str, Any]) -> None:
    doc = cbor2.loads(bytes.fromhex(vector["payload"]))
    assert list(doc) == ["d", "e", "s", "r"]
    assert (doc["d"], doc["e"], doc["s"]) == (vector["device"], vector["epoch"],
                                              vector["first_seq"])
    readings = [untag(r["doc"]) for r in vector["readings"]]
    assert doc["r"] == readings
    assert [cbor2.loads(bytes.fromhex(r["hex"])) for r in vector["readings"]] == readings

"""Payload decoding: exact outcomes for known payloads, and any bytes → Reading or
Rejected with a reason, never an exception."""

from __future__ import annotations

import json

import cbor2
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.config import MqttRule, PayloadFormat
from gateway.mqtt.decode import (
    MAX_SEQUENCE,
    Reading,
    Reason,
    Rejected,
    dead_letter_headers,
    decode,
    producer_id,
)

RULES = (
    MqttRule(filter="headwater/+/temperature", topic="temperature", format=PayloadFormat.CBOR),
    MqttRule(filter="json/+/reading", topic="readings", format=PayloadFormat.JSON),
    MqttRule(filter="raw/+", topic="raw", format=PayloadFormat.RAW),
    MqttRule(filter="fixed/topic", topic="fixed", format=PayloadFormat.CBOR),
)
LIMIT = 1024


def run(topic: str, payload: bytes) -> Reading | Rejected:
    return decode(RULES, topic, payload, max_payload_bytes=LIMIT)


def test_cbor_device_payload_is_idempotent_and_kept_verbatim() -> None:
    payload = cbor2.dumps({"d": "dev1", "e": 3, "s": 41, "t": 1_700_000_000_000, "v": 21.5})
    out = run("headwater/dev1/temperature", payload)
    assert isinstance(out, Reading)
    assert out.topic == "temperature"
    assert out.key == b"dev1"
    assert out.value == payload  # never re-encoded
    assert out.sequence is not None
    assert (out.sequence.epoch, out.sequence.seq) == (3, 41)
    assert out.sequence.producer_id == producer_id("headwater/dev1/temperature", 3)


def test_producer_id_is_stable_and_in_range() -> None:
    # A pinned value: a change would break dedup across a gateway upgrade (the
    # upgraded gateway would write the redeliveries of the old one again).
    assert producer_id("headwater/dev1/temperature", 3) == 1731057415145104352
    assert producer_id("headwater/dev1/temperature", 3) != producer_id(
        "headwater/dev1/temperature", 4
    )
    for stream in ("a", "headwater/x/y", "é" * 100):
        assert 0 <= producer_id(stream, 2**32 - 1) < 2**63


def test_plain_values_are_at_least_once() -> None:
    out = run("headwater/dev1/temperature", cbor2.dumps(21.5))
    assert isinstance(out, Reading)
    assert out.sequence is None
    assert out.key == b"dev1"
    out = run("json/dev2/reading", b'{"v": 1}')
    assert isinstance(out, Reading)
    assert out.sequence is None
    assert out.key == b"dev2"
    out = run("raw/dev3", b"\xff\x00anything")
    assert isinstance(out, Reading)
    assert out.value == b"\xff\x00anything"
    assert out.key == b"dev3"


def test_json_with_sequence_fields() -> None:
    out = run("json/dev2/reading", json.dumps({"e": 1, "s": 7, "v": [1, 2]}).encode())
    assert isinstance(out, Reading)
    assert out.sequence is not None
    assert out.sequence.seq == 7


def test_device_id_from_payload_when_topic_has_none() -> None:
    out = run("fixed/topic", cbor2.dumps({"d": "dev9", "e": 0, "s": 0}))
    assert isinstance(out, Reading)
    assert out.key == b"dev9"
    assert out.sequence is not None


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("nowhere/x", b"1", Reason.NO_RULE),
        ("raw/dev", b"x" * (LIMIT + 1), Reason.TOO_LARGE),
        ("headwater/d/temperature", b"\x1c", Reason.NOT_CBOR),
        ("headwater/d/temperature", b"", Reason.NOT_CBOR),
        ("headwater/d/temperature", cbor2.dumps(1) + b"\x00", Reason.TRAILING_BYTES),
        ("json/d/reading", b"\xff", Reason.NOT_UTF8),
        ("json/d/reading", b"{", Reason.NOT_JSON),
        ("json/d/reading", b"[" * 100_000 + b"]" * 100_000, Reason.TOO_LARGE),
        ("headwater/d/temperature", cbor2.dumps({"e": 1}), Reason.BAD_SEQUENCE_FIELDS),
        ("headwater/d/temperature", cbor2.dumps({"e": 1, "s": -1}), Reason.BAD_SEQUENCE_FIELDS),
        ("headwater/d/temperature", cbor2.dumps({"e": 1, "s": MAX_SEQUENCE + 1}),
         Reason.BAD_SEQUENCE_FIELDS),
        ("headwater/d/temperature", cbor2.dumps({"e": True, "s": 1}), Reason.BAD_SEQUENCE_FIELDS),
        ("headwater/d/temperature", cbor2.dumps({"e": 1.0, "s": 1}), Reason.BAD_SEQUENCE_FIELDS),
        ("headwater/d/temperature", cbor2.dumps({"d": "other", "e": 1, "s": 1}),
         Reason.DEVICE_MISMATCH),
        ("headwater/d/temperature", cbor2.dumps({"d": 5}), Reason.BAD_DEVICE_ID),
        ("fixed/topic", cbor2.dumps({"e": 1, "s": 1}), Reason.BAD_SEQUENCE_FIELDS),
    ],
)
def test_rejections(topic: str, payload: bytes, reason: Reason) -> None:
    out = run(topic, payload)
    assert isinstance(out, Rejected), out
    assert out.reason is reason
    assert out.detail


def test_deep_json_is_rejected_not_crashing() -> None:
    deep = b"[" * 400 + b"]" * 400  # within the size limit and the recursion limit
    out = decode(RULES, "json/d/reading", b"[" * 5000 + b"]" * 5000, max_payload_bytes=10**6)
    assert isinstance(out, Rejected)
    assert out.reason is Reason.NOT_JSON
    assert isinstance(run("json/d/reading", deep), Reading)


def test_dead_letter_headers() -> None:
    out = run("headwater/d/temperature", b"\x1c")
    assert isinstance(out, Rejected)
    headers = dead_letter_headers(out, "headwater/d/temperature", 1)
    assert headers["dead-letter-reason"] == b"not_cbor"
    assert headers["mqtt-topic"] == b"headwater/d/temperature"
    assert headers["mqtt-rule"] == b"headwater/+/temperature"
    assert headers["original-size"] == b"1"
    assert all(isinstance(v, bytes) for v in headers.values())


TOPICS = st.sampled_from(
    ["headwater/dev1/temperature", "json/dev1/reading", "raw/dev1", "fixed/topic", "nowhere"]
)
cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner,
                                                                 max_size=4),
    max_leaves=12,
)
device_maps = st.fixed_dictionaries(
    {},
    optional={"d": st.one_of(st.text(max_size=4), st.integers()), "e": st.integers(),
              "s": st.integers(), "v": cbor_values},
)


@settings(max_examples=2000)
@given(TOPICS, st.binary(max_size=2048))
@example("headwater/dev1/temperature", b"\xd8\x01\x1b\xff\xff\xff\xff\xff\xff\xff\xff")
@example("headwater/dev1/temperature", b"\xc1\x1b\xff\xff\xff\xff\xff\xff\xff\xff")
@example("headwater/dev1/temperature", b"\x5b\xff\xff\xff\xff\xff\xff\xff\xff")
@example("headwater/dev1/temperature", b"\x9f" * 2000)
@example("headwater/dev1/temperature", b"\xd9\x01\x02\x82\x00\x00")  # tag 258 (set)
@example("headwater/dev1/temperature", b"\xa1\x80\x00")  # array as a map key
@example("json/dev1/reading", b"1" * 2000)
def test_any_bytes_never_raise(topic: str, payload: bytes) -> None:
    out = run(topic, payload)
    assert isinstance(out, Reading | Rejected)
    if isinstance(out, Rejected):
        assert out.detail
        dead_letter_headers(out, topic, len(payload))
    else:
        assert out.value == payload


@settings(max_examples=500)
@given(device_maps)
def test_structured_payloads_never_raise(doc: dict[str, object]) -> None:
    for topic, data in (
        ("headwater/dev1/temperature", cbor2.dumps(doc)),
        ("json/dev1/reading", json.dumps(doc, default=repr).encode()),
    ):
        out = run(topic, data)
        assert isinstance(out, Reading | Rejected)
        if isinstance(out, Reading) and out.sequence is not None:
            assert 0 <= out.sequence.seq <= MAX_SEQUENCE

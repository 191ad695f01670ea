"""Payload decoding: exact outcomes for known payloads (single- and multi-reading), and
any bytes → Reading, Readings or Rejected with a reason, never an exception."""

from __future__ import annotations

import json

import cbor2
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.config import MqttRule, PayloadFormat
from gateway.mqtt.decode import (
    MAX_READINGS,
    MAX_SEQUENCE,
    Outcome,
    Reading,
    Readings,
    Reason,
    Rejected,
    dead_letter_headers,
    decode,
    producer_id,
)
from gateway.mqtt.envelope import EnvelopeError, cbor_item_end

RULES = (
    MqttRule(filter="headwater/+/temperature", topic="temperature", format=PayloadFormat.CBOR),
    MqttRule(filter="json/+/reading", topic="readings", format=PayloadFormat.JSON),
    MqttRule(filter="raw/+", topic="raw", format=PayloadFormat.RAW),
    MqttRule(filter="fixed/topic", topic="fixed", format=PayloadFormat.CBOR),
)
LIMIT = 1024


def run(topic: str, payload: bytes) -> Outcome:
    return decode(RULES, topic, payload, max_payload_bytes=LIMIT)


def assert_slices_in_order(values: list[bytes], payload: bytes) -> None:
    """Each value is a piece of the payload, the pieces in order and not overlapping."""
    pos = 0
    for value in values:
        found = payload.find(value, pos)
        assert found >= 0, (value, payload)
        pos = found + len(value)


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
@example("headwater/dev1/temperature", b"\xa3\x61e\x01\x61s\x00\x61r\x81\xa1\x61v\x01")
@example("headwater/dev1/temperature", b"\xa3\x61e\x01\x61s\x00\x61r\x9f\xa1\x61v\x01\xff")
@example("json/dev1/reading", b'{"e":1,"s":0,"r":[{"v":1}]}')
def test_any_bytes_never_raise(topic: str, payload: bytes) -> None:
    out = run(topic, payload)
    assert isinstance(out, Reading | Readings | Rejected)
    if isinstance(out, Rejected):
        assert out.detail
        dead_letter_headers(out, topic, len(payload))
    elif isinstance(out, Readings):
        assert 0 < len(out.readings) <= MAX_READINGS
        assert_slices_in_order([r.value for r in out.readings], payload)
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
        assert isinstance(out, Reading | Readings | Rejected)
        if isinstance(out, Reading) and out.sequence is not None:
            assert 0 <= out.sequence.seq <= MAX_SEQUENCE


# --- several readings in one message ------------------------------------------------


def envelope(readings: object, *, first: int = 41, epoch: int = 3,
             **extra: object) -> dict[str, object]:
    return {"d": "dev1", "e": epoch, "s": first, "r": readings, **extra}


def test_multi_reading_message_becomes_one_record_per_reading() -> None:
    readings = [{"t": 1_700_000_000_000 + i, "v": 20 + i / 4} for i in range(5)]
    payload = cbor2.dumps(envelope(readings))
    out = run("headwater/dev1/temperature", payload)
    assert isinstance(out, Readings), out
    assert [r.sequence.seq for r in out.readings if r.sequence] == [41, 42, 43, 44, 45]
    pid = producer_id("headwater/dev1/temperature", 3)
    assert {(r.sequence.producer_id, r.sequence.epoch) for r in out.readings if r.sequence} == {
        (pid, 3)
    }
    # Each value is the reading's own bytes, cut out of the payload in order.
    assert [cbor2.loads(r.value) for r in out.readings] == readings
    assert b"".join(r.value for r in out.readings) in payload
    assert {(r.topic, r.key) for r in out.readings} == {("temperature", b"dev1")}


def test_multi_reading_values_are_never_re_encoded() -> None:
    # A float64 that cbor2 would write differently, and non-minimal integer heads.
    odd = [b"\xa1\x61v\xfb\x40\x35\x80\x00\x00\x00\x00\x00", b"\xa1\x61v\x19\x00\x01"]
    payload = (b"\xa4\x61d\x64dev1\x61e\x03\x61s\x18\x29\x61r\x82" + b"".join(odd))
    out = run("headwater/dev1/temperature", payload)
    assert isinstance(out, Readings), out
    assert [r.value for r in out.readings] == odd


def test_indefinite_lengths_and_any_key_order() -> None:
    odd = [b"\xa1\x61v\x01", b"\xbf\x61v\x5f\x41a\x41b\xff\xff"]  # an indefinite map too
    payload = b"\xbf\x61r\x9f" + b"".join(odd) + b"\xff\x61s\x05\x61e\x01\xff"
    out = run("headwater/dev1/temperature", payload)
    assert isinstance(out, Readings), out
    assert [r.value for r in out.readings] == odd
    assert [r.sequence.seq for r in out.readings if r.sequence] == [5, 6]


def test_json_multi_reading_message() -> None:
    text = '{"e": 1, "s": 7, "r": [ {"v": 1.50, "u": "\u00b0C"} ,{"v": [1, 2]}\n]}'
    out = run("json/dev2/reading", text.encode())
    assert isinstance(out, Readings), out
    assert [r.value for r in out.readings] == ['{"v": 1.50, "u": "\u00b0C"}'.encode(),
                                               b'{"v": [1, 2]}']
    assert [r.sequence.seq for r in out.readings if r.sequence] == [7, 8]
    assert out.readings[0].key == b"dev2"


def test_sequence_wraps_inside_a_message() -> None:
    out = run("headwater/dev1/temperature",
              cbor2.dumps(envelope([{"v": i} for i in range(3)], first=MAX_SEQUENCE - 1)))
    assert isinstance(out, Readings)
    assert [r.sequence.seq for r in out.readings if r.sequence] == [MAX_SEQUENCE - 1,
                                                                    MAX_SEQUENCE, 0]


def test_readings_may_repeat_the_envelope_but_not_contradict_it() -> None:
    same = [{"d": "dev1", "e": 3, "s": 41 + i, "v": i} for i in range(3)]
    assert isinstance(run("headwater/dev1/temperature", cbor2.dumps(envelope(same))), Readings)


def test_most_readings_per_message() -> None:
    most = cbor2.dumps(envelope([{"v": i} for i in range(MAX_READINGS)]))
    out = decode(RULES, "headwater/dev1/temperature", most, max_payload_bytes=65536)
    assert isinstance(out, Readings)
    assert len(out.readings) == MAX_READINGS


def test_r_without_sequence_fields_is_one_plain_record() -> None:
    payload = cbor2.dumps({"r": [1, 2]})  # an application's own field named "r"
    out = run("headwater/dev1/temperature", payload)
    assert isinstance(out, Reading)
    assert (out.value, out.sequence) == (payload, None)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (envelope([]), Reason.BAD_READINGS),
        (envelope([{"v": i} for i in range(MAX_READINGS + 1)]), Reason.BAD_READINGS),
        (envelope({"v": 1}), Reason.BAD_READINGS),
        (envelope([{"v": 1}, 5]), Reason.BAD_READINGS),
        (envelope([{"v": 1}, {}]), Reason.BAD_READINGS),
        (envelope([{"v": 1, "r": []}]), Reason.BAD_READINGS),
        (envelope([{"v": 1}, {"s": 41}]), Reason.BAD_READINGS),  # reading 1 is 42
        (envelope([{"s": True}]), Reason.BAD_READINGS),
        (envelope([{"e": 4}]), Reason.BAD_READINGS),
        (envelope([{"d": "dev2"}]), Reason.BAD_READINGS),
        (envelope([{"v": 1}], t=5), Reason.BAD_READINGS),  # would be lost: no record holds it
        (envelope([{"v": 1}], first=MAX_SEQUENCE + 1), Reason.BAD_SEQUENCE_FIELDS),
        (envelope([{"v": 1}], first=-1), Reason.BAD_SEQUENCE_FIELDS),
        (envelope([{"v": 1}], epoch=2**32), Reason.BAD_SEQUENCE_FIELDS),
        ({"s": 1, "r": [{"v": 1}]}, Reason.BAD_SEQUENCE_FIELDS),
        ({"d": "dev9", "e": 1, "s": 1, "r": [{"v": 1}]}, Reason.DEVICE_MISMATCH),
    ],
)
def test_bad_multi_reading_messages(payload: dict[str, object], reason: Reason) -> None:
    for topic, data in (("headwater/dev1/temperature", cbor2.dumps(payload)),
                        ("json/dev1/reading", json.dumps(payload).encode())):
        out = decode(RULES, topic, data, max_payload_bytes=65536)
        assert isinstance(out, Rejected), (topic, out)
        assert out.reason is reason, out
        assert out.detail


def test_duplicate_keys_are_refused() -> None:
    one = b"\xa1\x61v\x01"
    cbor_twice = b"\xa5\x61e\x01\x61s\x00\x61r\x81" + one + b"\x61d\x64dev1\x61r\x81" + one
    json_twice = b'{"e": 1, "s": 0, "r": [{"v": 1}], "r": [{"v": 2}]}'
    for topic, data in (("headwater/dev1/temperature", cbor_twice),
                        ("json/dev1/reading", json_twice)):
        out = run(topic, data)
        assert isinstance(out, Rejected), out
        assert (out.reason, out.detail) == (Reason.BAD_READINGS, "duplicate keys in the message")


def test_cbor_item_end_walks_every_kind_of_item() -> None:
    items = [0, -1, 2**64 - 1, b"x" * 300, "é", [1, [2, {"a": None}]], {1: 2.5}, True,
             cbor2.CBORTag(1, 5), 1.5e300, cbor2.CBORSimpleValue(99)]
    data = b"".join(cbor2.dumps(item) for item in items) + b"\x5f\x41a\xff\xf9\x3c\x00"
    pos, ends = 0, []
    while pos < len(data):
        pos = cbor_item_end(data, pos)
        ends.append(pos)
    assert len(ends) == len(items) + 2
    assert ends[-1] == len(data)
    with pytest.raises(EnvelopeError):
        cbor_item_end(b"\x82\x01", 0)
    with pytest.raises(EnvelopeError):
        cbor_item_end(b"\x5a\x00\x00\x00\x09ab", 0)
    with pytest.raises(EnvelopeError):
        cbor_item_end(b"\xff", 0)


readings_strategy = st.lists(
    st.one_of(
        st.dictionaries(st.sampled_from(["t", "v", "u", "d", "e", "s", "r"]), cbor_values,
                        max_size=3),
        cbor_values,
    ),
    max_size=6,
)
envelopes = st.fixed_dictionaries(
    {"r": readings_strategy},
    optional={"d": st.sampled_from(["dev1", "dev2"]), "e": st.integers(-1, 2**32),
              "s": st.integers(-1, 2**31), "x": st.integers()},
)


@settings(max_examples=1000)
@given(envelopes)
def test_structured_envelopes_never_raise(doc: dict[str, object]) -> None:
    for topic, data in (
        ("headwater/dev1/temperature", cbor2.dumps(doc)),
        ("json/dev1/reading", json.dumps(doc, default=repr).encode()),
    ):
        out = run(topic, data)
        assert isinstance(out, Reading | Readings | Rejected)
        if isinstance(out, Rejected):
            assert out.detail
        elif isinstance(out, Readings):
            readings = doc["r"]
            assert isinstance(readings, list)
            assert 0 < len(out.readings) == len(readings) <= MAX_READINGS
            seqs = [r.sequence.seq for r in out.readings if r.sequence]
            first = doc["s"]
            assert isinstance(first, int)
            assert seqs == [(first + i) % (MAX_SEQUENCE + 1) for i in range(len(readings))]
            assert_slices_in_order([r.value for r in out.readings], data)
            if topic.startswith("headwater"):  # the bytes cbor2 wrote for each reading
                assert [r.value for r in out.readings] == [cbor2.dumps(r) for r in readings]

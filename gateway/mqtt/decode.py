"""From an MQTT message to the records to produce, or to the reason it cannot be any.

Pure: no sockets, no asyncio. The contract is "any bytes on any topic → a
``Reading``, ``Readings`` or a ``Rejected`` with a reason", never an exception,
whatever the payload holds (the tests check it with Hypothesis).

Device payloads (CBOR or JSON) may carry sequence fields, the shape the firmware's
MQTT link publishes::

    {"d": device_id, "e": boot_epoch, "s": seq, "t": ts_ms, "v": value, ...}

``e`` and ``s`` together make the record idempotent: the bridge produces it with a
producer id derived from (MQTT topic, boot epoch) and ``s`` as the sequence, so a
redelivery of the same message ends as one copy in the log. ``s`` counts the
records of one MQTT topic of one device (0, 1, 2, ... wrapping after 2**31 - 1). A payload without
them is produced at-least-once. The record value is always the payload bytes as
they arrived: the gateway never re-encodes what a device sent.

A device may pack several readings of one stream into one message (what the
firmware's MQTT link does by default)::

    {"d": device_id, "e": boot_epoch, "s": first_seq, "r": [reading, ...]}

Reading ``i`` has sequence ``first_seq + i`` (wrapping the same way) and becomes a
record of its own, whose value is the reading's bytes cut out of the payload
(``envelope``). docs/GATEWAY.md has the byte-exact format and its bounds.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, TypeGuard

import cbor2

from gateway.config import MqttRule, PayloadFormat
from gateway.mqtt.envelope import READINGS_KEY, EnvelopeError, cbor_spans, json_spans
from gateway.mqtt.topics import matches

# The SPU's producer sequence is an i32 that wraps to 0 after 2**31 - 1.
MAX_SEQUENCE: Final = 2**31 - 1
MAX_EPOCH: Final = 2**32 - 1
MAX_DEVICE_ID_BYTES: Final = 128
SEQ_MODULUS: Final = MAX_SEQUENCE + 1
# Readings in one message: the firmware packs 32 by default; the bound keeps one
# message's records (and the Python objects behind them) small.
MAX_READINGS: Final = 256
ENVELOPE_KEYS: Final = frozenset({"d", "e", "s", READINGS_KEY})
PRODUCER_ID_MASK: Final = 2**63 - 1
# Topics whose rule is remembered; past this the memory starts afresh.
ROUTE_CACHE: Final = 4096
_PRODUCER_ID_DOMAIN: Final = b"headwater/mqtt-device\0"


class Reason(StrEnum):
    """Why a message went to the dead-letter topic (the ``dead-letter-reason`` header)."""

    NO_RULE = "no_rule"
    TOO_LARGE = "too_large"
    NOT_CBOR = "not_cbor"
    NOT_UTF8 = "not_utf8"
    NOT_JSON = "not_json"
    TRAILING_BYTES = "trailing_bytes"
    BAD_SEQUENCE_FIELDS = "bad_sequence_fields"
    BAD_DEVICE_ID = "bad_device_id"
    DEVICE_MISMATCH = "device_mismatch"
    BAD_READINGS = "bad_readings"
    SPU_REJECTED = "spu_rejected"


@dataclass(frozen=True, slots=True)
class DeviceSequence:
    """Where a record sits in its device's stream: the key to idempotent produce."""

    producer_id: int
    epoch: int
    seq: int


@dataclass(frozen=True, slots=True)
class Reading:
    """A record to produce."""

    topic: str
    key: bytes | None
    value: bytes
    sequence: DeviceSequence | None


@dataclass(frozen=True, slots=True)
class Readings:
    """The records of a multi-reading message: one per reading, in sequence order."""

    readings: tuple[Reading, ...]


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message that goes to the dead-letter topic, and why."""

    reason: Reason
    detail: str
    rule: MqttRule | None = None


Outcome = Reading | Readings | Rejected


def producer_id(stream: str, epoch: int) -> int:
    """The SPU producer id of one device stream (its MQTT topic) in one boot epoch.

    Derived, not stored, so it is the same after a gateway restart. Per stream,
    because a device numbers each stream's records on its own (one buffer each).
    """
    digest = hashlib.blake2b(
        _PRODUCER_ID_DOMAIN + stream.encode() + b"\0" + str(epoch).encode(), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big") & PRODUCER_ID_MASK


def find_rule(rules: tuple[MqttRule, ...], topic: str) -> MqttRule | None:
    """The first rule whose filter matches the MQTT topic."""
    return next((rule for rule in rules if matches(rule.filter, topic)), None)


class Decoder:
    """``decode`` with the rules bound, remembering the rule of recent topics
    (a fleet publishes on the same few topics over and over)."""

    def __init__(self, rules: tuple[MqttRule, ...], *, max_payload_bytes: int) -> None:
        self._rules = rules
        self._max_payload_bytes = max_payload_bytes
        self._routes: dict[str, MqttRule | None] = {}

    def __call__(self, topic: str, payload: bytes) -> Outcome:
        try:
            rule = self._routes[topic]
        except KeyError:
            if len(self._routes) >= ROUTE_CACHE:
                self._routes.clear()
            rule = self._routes[topic] = find_rule(self._rules, topic)
        return _decode(rule, topic, payload, self._max_payload_bytes)


def decode(
    rules: tuple[MqttRule, ...], topic: str, payload: bytes, *, max_payload_bytes: int
) -> Outcome:
    """Route and decode one MQTT message; never raises."""
    return _decode(find_rule(rules, topic), topic, payload, max_payload_bytes)


def _decode(
    rule: MqttRule | None, topic: str, payload: bytes, max_payload_bytes: int
) -> Outcome:
    if rule is None:
        return Rejected(Reason.NO_RULE, f"no rule matches {topic!r}")
    if len(payload) > max_payload_bytes:
        return Rejected(
            Reason.TOO_LARGE, f"{len(payload)} bytes, limit {max_payload_bytes}", rule
        )
    device = _device_from_topic(rule, topic)
    if rule.format is PayloadFormat.RAW:
        key = device.encode() if device else None
        return Reading(topic=rule.topic, key=key, value=payload, sequence=None)
    parsed = _parse(rule.format, payload)
    if isinstance(parsed, Rejected):
        return Rejected(parsed.reason, parsed.detail, rule)
    return _reading(rule, topic, device, payload, parsed)


def _device_from_topic(rule: MqttRule, topic: str) -> str | None:
    level = rule.key_level
    if level is None:
        return None
    levels = topic.split("/")
    return levels[level] if level < len(levels) and levels[level] else None


def _parse(fmt: PayloadFormat, payload: bytes) -> Any | Rejected:
    if fmt is PayloadFormat.CBOR:
        return _parse_cbor(payload)
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejected(Reason.NOT_UTF8, f"invalid UTF-8 at byte {exc.start}")
    try:
        return json.loads(text)
    except RecursionError:
        return Rejected(Reason.NOT_JSON, "nested too deeply")
    except ValueError as exc:
        return Rejected(Reason.NOT_JSON, str(exc))


def _parse_cbor(payload: bytes) -> Any | Rejected:
    stream = io.BytesIO(payload)
    try:
        value = cbor2.CBORDecoder(stream).decode()
    # cbor2 raises its own errors for malformed input, but semantic tags can surface
    # ValueError, OverflowError, TypeError, ... from the constructors they call.
    except Exception as exc:
        return Rejected(Reason.NOT_CBOR, f"{type(exc).__name__}: {exc}"[:200])
    if stream.tell() != len(payload):
        return Rejected(
            Reason.TRAILING_BYTES, f"{len(payload) - stream.tell()} bytes after the CBOR item"
        )
    return value


def _reading(
    rule: MqttRule, stream: str, device: str | None, payload: bytes, doc: Any
) -> Outcome:
    fields = doc if isinstance(doc, dict) else {}
    claimed = fields.get("d")
    if claimed is not None:
        if not isinstance(claimed, str) or not 0 < len(claimed.encode()) <= MAX_DEVICE_ID_BYTES:
            return Rejected(Reason.BAD_DEVICE_ID, "'d' must be a 1-128 byte string", rule)
        if device is None:
            device = claimed
        elif claimed != device:
            return Rejected(
                Reason.DEVICE_MISMATCH, f"payload 'd' {claimed!r} but topic says {device!r}", rule
            )
    key = device.encode() if device else None
    has_epoch, has_seq = "e" in fields, "s" in fields
    if not has_epoch and not has_seq:
        return Reading(topic=rule.topic, key=key, value=payload, sequence=None)
    sequence = _sequence(stream, device, fields)
    if isinstance(sequence, str):
        return Rejected(Reason.BAD_SEQUENCE_FIELDS, sequence, rule)
    if READINGS_KEY in fields:
        return _readings(rule, key, payload, fields, sequence)
    return Reading(topic=rule.topic, key=key, value=payload, sequence=sequence)


def _readings(
    rule: MqttRule, key: bytes | None, payload: bytes, fields: dict[Any, Any],
    first: DeviceSequence,
) -> Readings | Rejected:
    """The records of a multi-reading message, each reading's bytes sliced out."""
    problem = _envelope_problem(fields, key, first)
    if problem is not None:
        return Rejected(Reason.BAD_READINGS, problem, rule)
    try:
        if rule.format is PayloadFormat.CBOR:
            spans = cbor_spans(payload)
        else:
            spans = json_spans(payload.decode("utf-8"))
    except EnvelopeError as exc:
        return Rejected(Reason.BAD_READINGS, f"cannot locate the readings: {exc}", rule)
    if spans.pairs != len(fields):
        return Rejected(Reason.BAD_READINGS, "duplicate keys in the message", rule)
    if len(spans.readings) != len(fields[READINGS_KEY]):
        return Rejected(Reason.BAD_READINGS, "cannot locate the readings", rule)
    pid, epoch = first.producer_id, first.epoch
    return Readings(tuple(
        Reading(topic=rule.topic, key=key, value=payload[start:end],
                sequence=DeviceSequence(pid, epoch, (first.seq + i) % SEQ_MODULUS))
        for i, (start, end) in enumerate(spans.readings)
    ))


def _envelope_problem(fields: dict[Any, Any], key: bytes | None,
                      first: DeviceSequence) -> str | None:
    """What is wrong with a multi-reading message's fields, if anything."""
    unknown = [k for k in fields if k not in ENVELOPE_KEYS]
    if unknown:
        return f"unknown field {unknown[0]!r} next to 'r' (allowed: d, e, s, r)"[:200]
    readings = fields[READINGS_KEY]
    if not isinstance(readings, list) or not 0 < len(readings) <= MAX_READINGS:
        return f"'r' must be an array of 1..{MAX_READINGS} readings"
    device = key.decode() if key is not None else None
    for i, reading in enumerate(readings):
        problem = _reading_problem(reading, device, first.epoch, (first.seq + i) % SEQ_MODULUS)
        if problem is not None:
            return f"reading {i}: {problem}"
    return None


def _reading_problem(reading: Any, device: str | None, epoch: int, seq: int) -> str | None:
    # A reading may repeat the message's d, e and s (readings made for single-reading
    # messages carry them), but never contradict them.
    if not isinstance(reading, dict) or not reading:
        return "must be a map with at least one field"
    if READINGS_KEY in reading:
        return "must not hold 'r'"
    for name, want in (("d", device), ("e", epoch), ("s", seq)):
        if name in reading:
            got = reading[name]
            if type(got) is not type(want) or got != want:
                return f"its {name!r} {got!r} contradicts the message ({want!r})"[:200]
    return None


def _sequence(stream: str, device: str | None, fields: dict[Any, Any]) -> DeviceSequence | str:
    epoch, seq = fields.get("e"), fields.get("s")
    if device is None:
        return "sequence fields need a device id (topic level or 'd')"
    if not _is_int(epoch) or not 0 <= epoch <= MAX_EPOCH:
        return f"'e' must be an integer 0..{MAX_EPOCH}"
    if not _is_int(seq) or not 0 <= seq <= MAX_SEQUENCE:
        return f"'s' must be an integer 0..{MAX_SEQUENCE}"
    return DeviceSequence(producer_id=producer_id(stream, epoch), epoch=epoch, seq=seq)


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def dead_letter_headers(rejected: Rejected, mqtt_topic: str, size: int) -> dict[str, bytes]:
    """Record headers that say where a dead letter came from and why."""
    headers = {
        "dead-letter-reason": rejected.reason.value.encode(),
        "dead-letter-detail": rejected.detail.encode("utf-8", "replace")[:512],
        "mqtt-topic": mqtt_topic.encode("utf-8", "replace"),
        "original-size": str(size).encode(),
    }
    if rejected.rule is not None:
        headers["mqtt-rule"] = rejected.rule.filter.encode()
    return headers

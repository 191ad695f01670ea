"""Consumer-group messages: every field checked once at decode, with its bounds;
any map decodes or raises the one protocol error, naming the field."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.protocol import groups
from edge.protocol.errors import InvalidRequest, ProtocolError
from edge.protocol.schema import Field, Kind, Message, decode_request, decode_response, to_wire

JOIN = {"group": "workers", "topic": "events"}
COMMIT = {"group": "g", "member": "m1", "generation": 3,
          "offsets": [{"partition": 0, "offset": 10}, {"partition": 5, "offset": 0}]}


def every_message() -> list[Message[Any]]:
    return [m for pair in groups.APIS.values() for m in pair]


@pytest.mark.parametrize("message", every_message(), ids=lambda m: m.cls.__name__)
def test_fields_match_the_message_type(message: Message[Any]) -> None:
    assert tuple(f.name for f in message.fields) == message.cls._fields
    for f in message.fields:
        if f.kind is Kind.ROWS:
            assert f.row is not None
            assert tuple(r.name for r in f.row_fields) == f.row._fields


def test_join_defaults() -> None:
    req = decode_request(groups.JOIN, {**JOIN, "api": 50, "id": 1})
    assert req == groups.JoinRequest("workers", "events", 6000, "range", "")


def test_commit_rows_decode_into_tuples() -> None:
    req = decode_request(groups.COMMIT, COMMIT)
    assert req.offsets == (groups.PartitionOffset(0, 10), groups.PartitionOffset(5, 0))
    assert to_wire(req) == COMMIT


@pytest.mark.parametrize(("meta", "field"), [
    ({"topic": "events"}, "group"),
    ({**JOIN, "group": ""}, "group"),
    ({**JOIN, "group": "g" * 201}, "group"),
    ({**JOIN, "topic": 7}, "topic"),
    ({**JOIN, "session_timeout_ms": 999}, "session_timeout_ms"),
    ({**JOIN, "session_timeout_ms": 300_001}, "session_timeout_ms"),
    ({**JOIN, "session_timeout_ms": True}, "session_timeout_ms"),
    ({**JOIN, "session_timeout_ms": 2**70}, "session_timeout_ms"),
    ({**JOIN, "assignor": "sticky"}, "assignor"),
    ({**JOIN, "client": "c" * 201}, "client"),
])
def test_bad_join_names_the_field(meta: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        decode_request(groups.JOIN, meta)
    assert caught.value.data == {"field": field}


@pytest.mark.parametrize(("change", "field"), [
    ({"generation": -1}, "generation"),
    ({"generation": 2**53 + 1}, "generation"),
    ({"member": "m" * 65}, "member"),
    ({"offsets": "all"}, "offsets"),
    ({"offsets": [7]}, "offsets"),
    ({"offsets": [{"partition": 0}]}, "offset"),
    ({"offsets": [{"partition": -1, "offset": 0}]}, "partition"),
    ({"offsets": [{"partition": 0, "offset": 2**63}]}, "offset"),
    ({"offsets": [{"partition": 0, "offset": 1.5}]}, "offset"),
    ({"offsets": [{"partition": 0, "offset": 0}] * (groups.MAX_ROWS + 1)}, "offsets"),
])
def test_bad_commit_names_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        decode_request(groups.COMMIT, {**COMMIT, **change})
    assert caught.value.data == {"field": field}


def test_a_bad_response_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="state"):
        decode_response(groups.HEARTBEAT_ANSWER, {"generation": 1, "state": "confused"})
    answer = decode_response(groups.HEARTBEAT_ANSWER, {
        "generation": 1, "state": "stable",
        "assignment": [{"partition": 2, "offset": None}, {"partition": 3, "offset": 9}]})
    assert answer.assignment == (groups.Assigned(2, None), groups.Assigned(3, 9))


def _value_for(f: Field) -> st.SearchStrategy[Any]:
    low = f.low if f.low is not None else -(2**63)
    high = f.high if f.high is not None else 2**63 - 1
    if f.kind is Kind.INT:
        return st.integers(low, high)
    if f.kind is Kind.TEXT:
        if f.choices:
            return st.sampled_from(f.choices)
        return st.text(min_size=f.low or 0, max_size=min(f.high or 20, 20))
    if f.kind is Kind.BOOL:
        return st.booleans()
    if f.kind is Kind.FLOAT:
        return st.floats(allow_nan=False, allow_infinity=False)
    if f.kind is Kind.INTS:
        return st.lists(st.integers(low, high), max_size=4)
    return st.lists(_map_for(f.row_fields), max_size=3)


def _map_for(fields: tuple[Field, ...]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({f.name: _value_for(f) for f in fields if f.required},
                                 optional={f.name: _value_for(f) for f in fields
                                           if not f.required})


@pytest.mark.parametrize("message", every_message(), ids=lambda m: m.cls.__name__)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_valid_messages_round_trip(message: Message[Any], data: st.DataObject) -> None:
    meta = data.draw(_map_for(message.fields))
    value = decode_request(message, meta)
    assert decode_request(message, to_wire(value)) == value


cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                 max_size=4),
    max_leaves=12)
field_names = st.sampled_from(sorted({f.name for m in every_message() for f in m.fields}
                                     | {"partition", "offset", "x"}))


@pytest.mark.parametrize("message", every_message(), ids=lambda m: m.cls.__name__)
@settings(max_examples=80, deadline=None)
@given(meta=st.dictionaries(field_names, cbor_values, max_size=6))
def test_any_map_decodes_or_raises_the_protocol_error(message: Message[Any],
                                                      meta: dict[str, Any]) -> None:
    error: InvalidRequest | None = None
    try:
        decode_request(message, meta)
    except InvalidRequest as exc:
        error = exc
    assert error is None or "field" in error.data

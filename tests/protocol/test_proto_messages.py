"""Request/response metadata: API keys, versions, field access, success and error."""

from __future__ import annotations

from typing import Any

import pytest

from edge.protocol import errors, messages
from edge.protocol.messages import SUPPORTED, Acks, ApiKey, api_of, check_response, get

# Pinned: the numbers are on the wire.
API_KEYS = {
    "API_VERSIONS": 0,
    "PRODUCE": 1,
    "FETCH": 2,
    "STREAM_FETCH": 3,
    "LIST_OFFSETS": 4,
    "OFFSET_COMMIT": 5,
    "OFFSET_FETCH": 6,
    "LIST_CONSUMERS": 7,
    "PARTITION_STATUS": 8,
    "CREATE_TOPIC": 10,
    "DELETE_TOPIC": 11,
    "LIST_TOPICS": 12,
    "DESCRIBE_TOPIC": 13,
    "LIST_SPUS": 14,
    "LIST_PARTITIONS": 15,
    "METADATA": 16,
    "WATCH_METADATA": 17,
    "CLUSTER_STATUS": 18,
    "INIT_PRODUCER_ID": 19,
    "PARTITION_REBALANCE": 20,
    "MIRROR_OFFSETS": 21,
    "MIRROR_APPEND": 22,
    "UPSTREAM_STATUS": 23,
    "SITE_REGISTER": 24,
    "SITE_UNREGISTER": 25,
    "LIST_SITES": 26,
    "DESCRIBE_SITE": 27,
    "MIRROR_RESOLVE": 28,
    "ALTER_TOPIC": 29,
    "REGISTER_SPU": 30,
    "HEARTBEAT": 31,
    "UPDATE_ISR": 32,
    "AUTHENTICATE": 33,
    "MIRROR_GAP": 34,
    "ACL_ADD": 35,
    "ACL_LIST": 36,
    "ACL_REMOVE": 37,
    "LOGIN": 38,
    "TOKEN_CREATE": 39,
    "REPLICA_FETCH": 40,
    "OFFSET_FOR_EPOCH": 41,
    "TOKEN_LIST": 42,
    "TOKEN_REVOKE": 43,
    "GROUP_JOIN": 50,
    "GROUP_HEARTBEAT": 51,
    "GROUP_LEAVE": 52,
    "GROUP_COMMIT": 53,
    "LIST_GROUPS": 54,
    "GROUP_RESET": 55,
    "GROUP_DELETE": 56,
}


def test_api_key_numbers() -> None:
    assert {k.name: int(k) for k in ApiKey} == API_KEYS


def test_every_api_has_a_version_range() -> None:
    assert set(SUPPORTED) == set(ApiKey)
    for low, high in SUPPORTED.values():
        assert 0 <= low <= high


@pytest.mark.parametrize("api", list(ApiKey), ids=lambda k: k.name)
def test_request_names_its_api(api: ApiKey) -> None:
    meta = messages.request(api, 42, topic="t")
    assert meta == {"api": int(api), "v": SUPPORTED[api][1], "id": 42, "topic": "t"}
    assert api_of(meta) is api


API_OF_IDS = [
    "empty",
    "api-null",
    "api-text",
    "api-bool",
    "api-float",
    "api-9",
    "api-negative",
    "api-bignum",
    "v-1",
    "v-negative",
    "v-bignum",
    "v-text",
    "v-bool",
]
CHECK_IDS = [
    "13",
    "99",
    "negative",
    "text",
    "null",
    "false",
    "empty-array",
    "float-zero",
    "bignum",
    "msg-bignum",
    "data-non-text-keys",
    "data-param-names",
    "data-not-a-map",
]


def test_version_defaults_to_zero() -> None:
    assert api_of({"api": 2}) is ApiKey.FETCH


@pytest.mark.parametrize(
    ("meta", "error"),
    [
        ({}, errors.InvalidRequest),
        ({"api": None}, errors.InvalidRequest),
        ({"api": "1"}, errors.InvalidRequest),
        ({"api": True}, errors.InvalidRequest),  # bool is not an int here
        ({"api": 1.0}, errors.InvalidRequest),
        ({"api": 9}, errors.UnknownApi),
        ({"api": -1}, errors.UnknownApi),
        ({"api": 2**20000}, errors.UnknownApi),  # a CBOR bignum; message must not format it
        ({"api": 1, "v": 1}, errors.UnsupportedVersion),
        ({"api": 1, "v": -1}, errors.UnsupportedVersion),
        ({"api": 1, "v": 2**20000}, errors.UnsupportedVersion),
        ({"api": 1, "v": "0"}, errors.InvalidRequest),
        ({"api": 1, "v": False}, errors.InvalidRequest),
    ],
    ids=API_OF_IDS,
)
def test_api_of_rejects(meta: dict[str, Any], error: type[errors.RemoteError]) -> None:
    with pytest.raises(error):
        api_of(meta)


def test_get_checks_presence_and_type() -> None:
    meta = {"n": 5, "s": "x", "b": b"y", "t": True, "z": None}
    assert get(meta, "n", int) == 5
    assert get(meta, "s", str) == "x"
    assert get(meta, "b", bytes) == b"y"
    assert get(meta, "t", bool) is True
    assert get(meta, "missing", int, 7) == 7
    assert get(meta, "z", int, 7) == 7  # null counts as absent
    assert get(meta, "missing", str, None) is None
    with pytest.raises(errors.InvalidRequest) as info:
        get(meta, "missing", int)
    assert info.value.data == {"field": "missing"}
    with pytest.raises(errors.InvalidRequest, match="must be int, not bool"):
        get(meta, "t", int)
    with pytest.raises(errors.InvalidRequest, match="must be str, not int"):
        get(meta, "n", str)
    with pytest.raises(errors.InvalidRequest):
        get(meta, "z", int)


def test_ok_and_success() -> None:
    meta = messages.ok(9, hw=3)
    assert meta == {"id": 9, "err": 0, "hw": 3}
    assert check_response(meta) is meta
    assert check_response({"id": 1}) == {"id": 1}  # no "err" at all is success


@pytest.mark.parametrize(
    ("meta", "error"),
    [
        ({"err": 13}, errors.NotLeader),
        ({"err": 99}, errors.UnknownError),
        ({"err": -3}, errors.UnknownError),
        ({"err": "13"}, errors.UnknownError),
        ({"err": None}, errors.UnknownError),  # malformed, so never success
        ({"err": False}, errors.UnknownError),
        ({"err": []}, errors.UnknownError),
        ({"err": 0.0}, errors.UnknownError),
        ({"err": 2**20000}, errors.UnknownError),
        ({"err": 13, "msg": 2**20000}, errors.NotLeader),
        ({"err": 13, "data": {1: 2, b"k": 3, "leader": 4}}, errors.NotLeader),
        ({"err": 13, "data": {"message": "m", "code": 1}}, errors.NotLeader),
        ({"err": 13, "data": [1, 2]}, errors.NotLeader),
    ],
    ids=CHECK_IDS,
)
def test_check_response_raises_mapped_error(
    meta: dict[Any, Any], error: type[errors.RemoteError]
) -> None:
    with pytest.raises(error) as info:
        check_response(meta)
    assert type(info.value) is error


def test_check_response_keeps_text_keyed_data() -> None:
    with pytest.raises(errors.NotLeader) as info:
        check_response({"err": 13, "msg": "moved", "data": {1: 2, "leader": 4, "code": 1}})
    assert str(info.value) == "moved"
    assert info.value.data == {"leader": 4, "code": 1}


@pytest.mark.parametrize(
    ("text", "acks"), [("none", Acks.NONE), ("LEADER", Acks.LEADER), ("All", Acks.ALL)]
)
def test_acks_parse(text: str, acks: Acks) -> None:
    assert Acks.parse(text) is acks


def test_acks_values_and_bad_text() -> None:
    assert [int(a) for a in Acks] == [0, 1, -1]
    with pytest.raises(ValueError, match="acks must be"):
        Acks.parse("two")

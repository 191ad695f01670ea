"""Request and response metadata: API keys, versions, and field access.

A request's meta is a CBOR map ``{"api": key, "v": version, "id": correlation,
...fields}``; its response is ``{"id": correlation, "err": code, ...fields}``
(``"msg"`` adds a human-readable reason to errors). A long-lived stream (stream
fetch, metadata watch, replica assignments) answers with any number of frames
that carry the request's ``id``; ``"end": true`` closes it.

Field names and types of each API are listed in ``docs/PROTOCOL.md``. Field
access goes through :func:`get`, which turns a missing or mistyped field into
``InvalidRequest`` so a malformed request gets an error response, never a crash.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, Final, TypeVar, overload

from edge.protocol.errors import ErrorCode, HeadwaterError, InvalidRequest, code_of, error_for


class ApiKey(IntEnum):
    API_VERSIONS = 0
    # SPU public
    PRODUCE = 1
    FETCH = 2
    STREAM_FETCH = 3
    LIST_OFFSETS = 4
    OFFSET_COMMIT = 5
    OFFSET_FETCH = 6
    LIST_CONSUMERS = 7
    PARTITION_STATUS = 8
    # SC public
    CREATE_TOPIC = 10
    DELETE_TOPIC = 11
    LIST_TOPICS = 12
    DESCRIBE_TOPIC = 13
    LIST_SPUS = 14
    LIST_PARTITIONS = 15
    METADATA = 16
    WATCH_METADATA = 17
    CLUSTER_STATUS = 18
    INIT_PRODUCER_ID = 19
    PARTITION_REBALANCE = 20
    # SPU public: the upstream mirror (cloud side) and the uplink's state (edge side)
    MIRROR_OFFSETS = 21
    MIRROR_APPEND = 22
    UPSTREAM_STATUS = 23
    # SC public: edge sites (cloud side)
    SITE_REGISTER = 24
    SITE_UNREGISTER = 25
    LIST_SITES = 26
    DESCRIBE_SITE = 27
    MIRROR_RESOLVE = 28
    # SC public: a topic's settings after creation
    ALTER_TOPIC = 29
    # SC private (SPU -> SC)
    REGISTER_SPU = 30
    HEARTBEAT = 31
    UPDATE_ISR = 32
    # SC and SPU private: the first request on a private connection
    AUTHENTICATE = 33
    # SPU public (cloud): what an edge deleted before the cloud had it, marked
    MIRROR_GAP = 34
    # SC public: access control lists
    ACL_ADD = 35
    ACL_LIST = 36
    ACL_REMOVE = 37
    # SC and SPU public: prove a token; the connection is then its principal
    LOGIN = 38
    # SC public: tokens for principals that use no client certificate (with 42, 43)
    TOKEN_CREATE = 39
    # SPU private (follower -> leader)
    REPLICA_FETCH = 40
    OFFSET_FOR_EPOCH = 41
    TOKEN_LIST = 42
    TOKEN_REVOKE = 43
    # SC public: consumer groups (the SC coordinates them and stores their positions)
    GROUP_JOIN = 50
    GROUP_HEARTBEAT = 51
    GROUP_LEAVE = 52
    GROUP_COMMIT = 53
    LIST_GROUPS = 54
    GROUP_RESET = 55
    GROUP_DELETE = 56


# The ``role`` a standby SC gives in its API_VERSIONS answer, with ``active``: the
# active SC's public address (edge/sc/standby.py).
SC_STANDBY_ROLE: Final = "sc-standby"

# (min, max) version each API is served at; ApiVersions reports this table.
SUPPORTED: Final[dict[ApiKey, tuple[int, int]]] = {
    **dict.fromkeys(ApiKey, (0, 0)),
    # v1: the blob may travel zstd-compressed (fields codec, raw_bytes).
    ApiKey.MIRROR_APPEND: (0, 1),
}


class Acks(IntEnum):
    """How much durability a produce waits for before it is acknowledged."""

    NONE = 0
    LEADER = 1
    ALL = -1

    @classmethod
    def parse(cls, text: str) -> Acks:
        try:
            return cls[text.upper()]
        except KeyError:
            raise ValueError(f"acks must be none, leader or all, not {text!r}") from None


T = TypeVar("T")
_MISSING: Final = object()
_I32_MIN: Final = -(2**31)
_I32_MAX: Final = 2**31 - 1


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def shown(value: int) -> str:
    """An integer from a peer, for a message: CBOR bignums can have thousands of
    digits, and str() of those raises ValueError (int max str digits)."""
    return str(value) if _I32_MIN <= value <= _I32_MAX else "(out of range)"


@overload
def get(meta: dict[Any, Any], name: str, kind: type[T]) -> T: ...
@overload
def get(meta: dict[Any, Any], name: str, kind: type[T], default: None) -> T | None: ...
@overload
def get(meta: dict[Any, Any], name: str, kind: type[T], default: T) -> T: ...


def get(meta: dict[Any, Any], name: str, kind: type[T], default: Any = _MISSING) -> Any:
    """Field ``name`` of ``meta`` checked against ``kind`` (bool is not an int here)."""
    value = meta.get(name, _MISSING)
    if value is _MISSING or value is None:
        if default is _MISSING:
            raise InvalidRequest(f"missing field {name!r}", field=name)
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidRequest(
            f"field {name!r} must be {kind.__name__}, not {type(value).__name__}", field=name
        )
    return value


def request(api: ApiKey, correlation_id: int, /, **fields: Any) -> dict[str, Any]:
    """A request at our newest version of ``api``; a field ``v`` (from
    :func:`negotiate`) sends an older one to an older peer."""
    return {"api": int(api), "v": SUPPORTED[api][1], "id": correlation_id, **fields}


def negotiate(api: ApiKey, peer: dict[int, tuple[int, int]]) -> int:
    """The newest version of ``api`` both sides speak, from the peer's API_VERSIONS
    answer; a peer that does not list ``api`` is taken to speak version 0."""
    low, high = peer.get(int(api), (0, 0))
    ours_low, ours_high = SUPPORTED[api]
    version = min(high, ours_high)
    if version < max(low, ours_low):
        raise error_for(ErrorCode.UNSUPPORTED_VERSION,
                        f"{api.name}: peer speaks {low}..{high}, we {ours_low}..{ours_high}")
    return version


def ok(correlation_id: int, /, **fields: Any) -> dict[str, Any]:
    return {"id": correlation_id, "err": 0, **fields}


def error_response(correlation_id: int, exc: BaseException) -> dict[str, Any]:
    code = code_of(exc)
    meta: dict[str, Any] = {"id": correlation_id, "err": int(code), "msg": str(exc)}
    if isinstance(exc, HeadwaterError) and exc.data:
        meta["data"] = {k: v for k, v in exc.data.items() if isinstance(v, int | str | None)}
    return meta


def check_response(meta: dict[Any, Any]) -> dict[Any, Any]:
    """Return ``meta`` if it reports success, else raise the mapped error.

    Success is an absent ``err`` or the integer 0. Any other ``err`` is an error;
    one that is not an integer in the i32 range is reported as UNKNOWN, since a
    malformed error field must never read as success.
    """
    code = meta.get("err", 0)
    if _is_int(code) and code == 0:
        return meta
    if not (_is_int(code) and _I32_MIN <= code <= _I32_MAX):
        code = ErrorCode.UNKNOWN
    message = meta.get("msg")
    data = meta.get("data")
    fields = {k: v for k, v in data.items() if isinstance(k, str)} if isinstance(data, dict) else {}
    raise error_for(code, message if isinstance(message, str) else "", **fields)


def api_of(meta: dict[Any, Any]) -> ApiKey:
    """The API a request names, checked against the version table."""
    key = get(meta, "api", int)
    try:
        api = ApiKey(key)
    except ValueError:
        raise error_for(ErrorCode.UNKNOWN_API, f"unknown api key {shown(key)}") from None
    version = get(meta, "v", int, 0)
    low, high = SUPPORTED[api]
    if not low <= version <= high:
        raise error_for(
            ErrorCode.UNSUPPORTED_VERSION,
            f"{api.name} version {shown(version)} not in {low}..{high}",
        )
    return api

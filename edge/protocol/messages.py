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
    # SC private (SPU -> SC)
    REGISTER_SPU = 30
    HEARTBEAT = 31


# (min, max) version each API is served at; ApiVersions reports this table.
SUPPORTED: Final[dict[ApiKey, tuple[int, int]]] = {key: (0, 0) for key in ApiKey}


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


@overload
def get(meta: dict[Any, Any], name: str, kind: type[T]) -> T: ...
@overload
def get(meta: dict[Any, Any], name: str, kind: type[T], default: T) -> T: ...
@overload
def get(meta: dict[Any, Any], name: str, kind: type[T], default: None) -> T | None: ...


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
    return {"api": int(api), "v": SUPPORTED[api][1], "id": correlation_id, **fields}


def ok(correlation_id: int, /, **fields: Any) -> dict[str, Any]:
    return {"id": correlation_id, "err": 0, **fields}


def error_response(correlation_id: int, exc: BaseException) -> dict[str, Any]:
    code = code_of(exc)
    meta: dict[str, Any] = {"id": correlation_id, "err": int(code), "msg": str(exc)}
    if isinstance(exc, HeadwaterError) and exc.data:
        meta["data"] = {k: v for k, v in exc.data.items() if isinstance(v, int | str | None)}
    return meta


def check_response(meta: dict[Any, Any]) -> dict[Any, Any]:
    """Return ``meta`` if it reports success, else raise the mapped error."""
    code = meta.get("err", 0)
    if code:
        data = meta.get("data")
        raise error_for(
            code if isinstance(code, int) else ErrorCode.UNKNOWN,
            str(meta.get("msg", "")),
            **(data if isinstance(data, dict) else {}),
        )
    return meta


def api_of(meta: dict[Any, Any]) -> ApiKey:
    """The API a request names, checked against the version table."""
    key = get(meta, "api", int)
    try:
        api = ApiKey(key)
    except ValueError:
        raise error_for(ErrorCode.UNKNOWN_API, f"unknown api key {key}") from None
    version = get(meta, "v", int, 0)
    low, high = SUPPORTED[api]
    if not low <= version <= high:
        raise error_for(
            ErrorCode.UNSUPPORTED_VERSION,
            f"{api.name} version {version} not in {low}..{high}",
        )
    return api

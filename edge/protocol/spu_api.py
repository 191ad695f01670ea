"""The SPU public port's messages: produce, fetch, offsets, consumers, status, mirror.

Each API has a request and a response (for a stream: each pushed frame) as a
``NamedTuple`` with its declared fields; ``docs/PROTOCOL.md`` has the same
tables. A handler's first step is ``decode_request`` of its message, so what it
reads is typed and in bounds.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from edge.protocol import fields as f
from edge.protocol.framing import MAX_FRAME_BYTES
from edge.protocol.messages import ApiKey
from edge.protocol.schema import Api, Field, Kind, Message

DEFAULT_FETCH_BYTES: Final = 1024 * 1024
MAX_WAIT_MS: Final = 60_000


class Empty(NamedTuple):
    """A message without fields."""


EMPTY: Final = Message(Empty, ())


class ApiVersionsResponse(NamedTuple):
    versions: dict[int, tuple[int, ...]]
    role: str
    cluster: str | None
    spu: int | None


API_VERSIONS_ANSWER: Final = Message(ApiVersionsResponse, (
    Field("versions", Kind.MAP, items=256, keys=Kind.INT,
          values=Field("versions", Kind.INTS, items=2, low=0, high=f.I32_MAX)),
    Field("role", Kind.TEXT, choices=("sc", "spu", "spu-private")),
    f.optional(Field("cluster", Kind.TEXT, high=f.NAME_CHARS)),
    f.optional(f.SPU),
))


class ProduceRequest(NamedTuple):
    topic: str
    partition: int
    acks: int


class ProduceResponse(NamedTuple):
    base: int
    last: int
    dup: bool


PRODUCE: Final = Message(ProduceRequest, (
    f.TOPIC, f.PARTITION, Field("acks", Kind.INT, required=False, default=1, low=-1, high=1),
))
PRODUCED: Final = Message(ProduceResponse, (
    Field("base", Kind.INT, low=0, high=f.I64_MAX), Field("last", Kind.INT, low=0, high=f.I64_MAX),
    Field("dup", Kind.BOOL),
))

_MAX_BYTES = Field("max_bytes", Kind.INT, required=False, default=DEFAULT_FETCH_BYTES, low=1,
                   high=f.I32_MAX)


class FetchRequest(NamedTuple):
    topic: str
    partition: int
    offset: int
    max_bytes: int
    max_wait_ms: int


class StreamFetchRequest(NamedTuple):
    topic: str
    partition: int
    offset: int
    max_bytes: int


class Position(NamedTuple):
    """Where a fetch answer (or a stream push) leaves the partition and the reader."""

    hw: int
    leo: int
    start: int
    next: int


FETCH: Final = Message(FetchRequest, (
    f.TOPIC, f.PARTITION, f.OFFSET, _MAX_BYTES,
    Field("max_wait_ms", Kind.INT, required=False, default=0, low=0, high=MAX_WAIT_MS),
))
STREAM_FETCH: Final = Message(StreamFetchRequest, (f.TOPIC, f.PARTITION, f.OFFSET, _MAX_BYTES))
POSITION: Final = Message(Position, (
    f.HW, f.LEO, f.START, Field("next", Kind.INT, low=0, high=f.I64_MAX),
))


class ListOffsetsRequest(NamedTuple):
    topic: str
    partition: int
    kind: str
    timestamp: int | None


class Offsets(NamedTuple):
    offset: int
    start: int
    hw: int
    leo: int


LIST_OFFSETS: Final = Message(ListOffsetsRequest, (
    f.TOPIC, f.PARTITION,
    Field("kind", Kind.TEXT, required=False, default="end",
          choices=("beginning", "end", "timestamp")),
    Field("timestamp", Kind.INT, required=False),
))
OFFSETS: Final = Message(Offsets, (f.OFFSET, f.START, f.HW, f.LEO))

_CONSUMER = f.name("consumer")


class OffsetCommitRequest(NamedTuple):
    consumer: str
    topic: str
    partition: int
    offset: int


class OffsetFetchRequest(NamedTuple):
    consumer: str
    topic: str
    partition: int


class OffsetFetchResponse(NamedTuple):
    offset: int | None


OFFSET_COMMIT: Final = Message(OffsetCommitRequest, (_CONSUMER, f.TOPIC, f.PARTITION, f.OFFSET))
OFFSET_FETCH: Final = Message(OffsetFetchRequest, (_CONSUMER, f.TOPIC, f.PARTITION))
OFFSET_FETCHED: Final = Message(OffsetFetchResponse, (f.optional(f.OFFSET),))


class ConsumerRow(NamedTuple):
    consumer: str
    topic: str
    partition: int
    offset: int
    lag: int
    updated_ms: int


class ListConsumersResponse(NamedTuple):
    consumers: tuple[ConsumerRow, ...]


CONSUMERS: Final = Message(ListConsumersResponse, (
    Field("consumers", Kind.ROWS, items=f.MAX_ROWS, row=ConsumerRow, row_fields=(
        _CONSUMER, f.TOPIC, f.PARTITION, f.OFFSET, Field("lag", Kind.INT, low=0),
        Field("updated_ms", Kind.INT),
    )),
))


class PartitionStatusResponse(NamedTuple):
    partitions: tuple[dict[str, object], ...]
    stats: dict[str, int]
    servers: dict[str, object] | None


class UpstreamStatusResponse(NamedTuple):
    spu: int
    partitions: tuple[dict[str, object], ...]


_STATUS_ROWS = Field("partitions", Kind.ROWS, items=f.MAX_ROWS)
PARTITION_STATUS: Final = Message(PartitionStatusResponse, (
    _STATUS_ROWS, f.COUNTERS, f.optional(Field("servers", Kind.MAP, items=64)),
))
UPSTREAM_STATUS: Final = Message(UpstreamStatusResponse, (f.SPU, _STATUS_ROWS))


class MirrorOffsetsRequest(NamedTuple):
    topic: str
    partition: int
    site: str
    token: str
    edge: dict[str, int] | None = None


class MirrorAppendRequest(NamedTuple):
    topic: str
    partition: int
    site: str
    token: str
    codec: str
    raw_bytes: int | None
    edge: dict[str, int] | None = None


class MirrorGapRequest(NamedTuple):
    topic: str
    partition: int
    site: str
    token: str
    start: int
    end: int
    edge: dict[str, int] | None = None


class MirrorPosition(NamedTuple):
    end: int
    hw: int
    start: int
    incarnation: str


_MIRROR = (f.TOPIC, f.PARTITION, f.name("site"), f.TOKEN)
# What the uplink reports of the edge partition with every mirror request (the
# cloud shows it in `site list` / `site describe`): EDGE_REPORT_KEYS, each an
# integer >= 0 (oldest_unsent_ms: -1 when nothing is unsent).
EDGE_REPORT_KEYS: Final = ("edge_end", "spu", "dropped", "lag_bytes", "oldest_unsent_ms")
_EDGE = Field("edge", Kind.MAP, required=False, items=len(EDGE_REPORT_KEYS),
              values=Field("value", Kind.INT, low=-1, high=f.I64_MAX))
MIRROR_OFFSETS: Final = Message(MirrorOffsetsRequest, (*_MIRROR, _EDGE))
MIRROR_APPEND: Final = Message(MirrorAppendRequest, (
    *_MIRROR,
    Field("codec", Kind.TEXT, required=False, default="none", choices=("none", "zstd")),
    Field("raw_bytes", Kind.INT, required=False, low=1, high=MAX_FRAME_BYTES),
    _EDGE,
))
MIRROR_GAP: Final = Message(MirrorGapRequest, (
    *_MIRROR, Field("start", Kind.INT, low=0, high=f.I64_MAX),
    Field("end", Kind.INT, low=1, high=f.I64_MAX), _EDGE,
))
MIRROR_POSITION: Final = Message(MirrorPosition, (
    Field("end", Kind.INT, low=0, high=f.I64_MAX), f.HW, f.START,
    Field("incarnation", Kind.TEXT, high=f.NAME_CHARS),
))

APIS: Final[dict[ApiKey, Api]] = {
    ApiKey.API_VERSIONS: Api(EMPTY, API_VERSIONS_ANSWER),
    ApiKey.PRODUCE: Api(PRODUCE, PRODUCED),
    ApiKey.FETCH: Api(FETCH, POSITION),
    ApiKey.STREAM_FETCH: Api(STREAM_FETCH, POSITION, stream=True),
    ApiKey.LIST_OFFSETS: Api(LIST_OFFSETS, OFFSETS),
    ApiKey.OFFSET_COMMIT: Api(OFFSET_COMMIT, EMPTY),
    ApiKey.OFFSET_FETCH: Api(OFFSET_FETCH, OFFSET_FETCHED),
    ApiKey.LIST_CONSUMERS: Api(EMPTY, CONSUMERS),
    ApiKey.PARTITION_STATUS: Api(EMPTY, PARTITION_STATUS),
    ApiKey.UPSTREAM_STATUS: Api(EMPTY, UPSTREAM_STATUS),
    ApiKey.MIRROR_OFFSETS: Api(MIRROR_OFFSETS, MIRROR_POSITION),
    ApiKey.MIRROR_APPEND: Api(MIRROR_APPEND, MIRROR_POSITION),
    ApiKey.MIRROR_GAP: Api(MIRROR_GAP, MIRROR_POSITION),
}

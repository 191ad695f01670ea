"""The SPU private port's messages: the handshake's AUTHENTICATE and replication.

A follower asks its leader where its epoch ends (OFFSET_FOR_EPOCH) and then
fetches (REPLICA_FETCH). Both name the leader epoch the follower was assigned,
and a fetch names the replica asking, so a leader can refuse what the SC did
not arrange. Field tables are in ``docs/PROTOCOL.md``.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from edge.protocol import fields as f
from edge.protocol.handshake import AUTH_ANSWER, CLAIM
from edge.protocol.messages import ApiKey
from edge.protocol.schema import Api, Field, Kind, Message

# A follower long-polls this long by default; a leader holds a fetch 5 s at most.
DEFAULT_WAIT_MS: Final = 500
MAX_WAIT_MS: Final = 5_000


class OffsetForEpochRequest(NamedTuple):
    topic: str
    partition: int
    leader_epoch: int
    epoch: int


class EpochEnd(NamedTuple):
    """Where ``epoch`` ends in the leader's log; epoch -1 when it knows none as old."""

    epoch: int
    end: int


class ReplicaFetchRequest(NamedTuple):
    topic: str
    partition: int
    epoch: int
    replica: int
    offset: int
    durable: int
    max_wait_ms: int
    cv_epoch: int
    cv: int


class ConsumerPosition(NamedTuple):
    consumer: str
    offset: int


class ReplicaFetchResponse(NamedTuple):
    hw: int
    leo: int
    start: int
    epoch: int
    consumers: tuple[ConsumerPosition, ...] | None
    cv_epoch: int | None
    cv: int | None
    cloud: int | None


# (leader epoch, version) of the consumer positions a follower holds; -1: none.
_CV_EPOCH = Field("cv_epoch", Kind.INT, required=False, default=-1, low=-1, high=f.I32_MAX)
_CV = Field("cv", Kind.INT, required=False, default=-1, low=-1, high=f.I64_MAX)

OFFSET_FOR_EPOCH: Final = Message(OffsetForEpochRequest, (
    f.TOPIC, f.PARTITION, Field("leader_epoch", Kind.INT, low=0, high=f.I32_MAX), f.EPOCH,
))
EPOCH_END: Final = Message(EpochEnd, (
    Field("epoch", Kind.INT, low=-1, high=f.I32_MAX), Field("end", Kind.INT, low=0,
                                                           high=f.I64_MAX),
))
REPLICA_FETCH: Final = Message(ReplicaFetchRequest, (
    f.TOPIC, f.PARTITION, f.EPOCH, Field("replica", Kind.INT, low=0, high=f.I32_MAX), f.OFFSET,
    Field("durable", Kind.INT, required=False, default=0, low=0, high=f.I64_MAX),
    Field("max_wait_ms", Kind.INT, required=False, default=DEFAULT_WAIT_MS, low=0,
          high=MAX_WAIT_MS),
    _CV_EPOCH, _CV,
))
REPLICA_FETCHED: Final = Message(ReplicaFetchResponse, (
    f.HW, f.LEO, f.START, f.EPOCH,
    Field("consumers", Kind.TUPLES, required=False, items=f.MAX_ROWS, row=ConsumerPosition,
          row_fields=(f.name("consumer"), f.OFFSET)),
    f.optional(_CV_EPOCH), f.optional(_CV),
    f.optional(Field("cloud", Kind.INT, low=0, high=f.I64_MAX)),
))

APIS: Final[dict[ApiKey, Api]] = {
    ApiKey.AUTHENTICATE: Api(CLAIM, AUTH_ANSWER),
    ApiKey.REPLICA_FETCH: Api(REPLICA_FETCH, REPLICA_FETCHED),
    ApiKey.OFFSET_FOR_EPOCH: Api(OFFSET_FOR_EPOCH, EPOCH_END),
}

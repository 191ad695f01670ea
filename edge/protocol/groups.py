"""Consumer-group APIs: the messages, their fields and bounds.

Members of a group share one topic's partitions, coordinated by the SC: a
member joins (GROUP_JOIN), then heartbeats (GROUP_HEARTBEAT) with the
generation it follows; a join, a leave (GROUP_LEAVE) or a missed session
starts a new generation, and a member learns it from its next heartbeat
answer, drops its partitions and acknowledges by heartbeating with the new
generation. The SC hands out the new assignment, with the committed positions,
only once every member has acknowledged, so no partition has two readers.
GROUP_COMMIT is fenced: only a member holding the partition at the generation
it names may store a position. Field tables are in ``docs/PROTOCOL.md``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Final, NamedTuple

from edge.protocol.messages import ApiKey
from edge.protocol.schema import Field, Kind, Message

# A member silent for its session timeout is dropped. 6 s: a few lost
# heartbeats on a busy Pi, and a dead member's partitions move within seconds.
DEFAULT_SESSION_TIMEOUT_MS: Final = 6000
MIN_SESSION_TIMEOUT_MS: Final = 1000
MAX_SESSION_TIMEOUT_MS: Final = 300_000
# A heartbeat waits at most this long for a change (and never past a third of the
# member's session timeout, so a waiting member is never taken for dead).
MAX_WAIT_MS: Final = 10_000
NAME_CHARS: Final = 200
MEMBER_CHARS: Final = 64
# Rows of a commit, reset or listing: 10,000 rows of a few numbers stay well
# inside the 256 KiB metadata limit.
MAX_ROWS: Final = 10_000
MAX_GENERATION: Final = 2**53
MAX_PARTITION: Final = 2**31 - 1
MAX_OFFSET: Final = 2**63 - 1


class Assignor(StrEnum):
    """How the SC splits partitions over the members (sorted by member id)."""

    RANGE = "range"  # consecutive blocks: members 0..n-1 get ceil/floor(p/n) each
    ROUNDROBIN = "roundrobin"  # partition i goes to member i mod n


class GroupState(StrEnum):
    EMPTY = "empty"
    REBALANCING = "rebalancing"
    STABLE = "stable"


def _name(name: str) -> Field:
    return Field(name, Kind.TEXT, low=1, high=NAME_CHARS)


_GROUP = _name("group")
_TOPIC = _name("topic")
_MEMBER = Field("member", Kind.TEXT, low=1, high=MEMBER_CHARS)
_GENERATION = Field("generation", Kind.INT, low=0, high=MAX_GENERATION)
_PARTITION = Field("partition", Kind.INT, low=0, high=MAX_PARTITION)


class Empty(NamedTuple):
    """A message without fields."""


EMPTY: Final = Message(Empty, ())


class PartitionOffset(NamedTuple):
    partition: int
    offset: int


_OFFSETS = Field("offsets", Kind.ROWS, items=MAX_ROWS, row=PartitionOffset,
                 row_fields=(_PARTITION, Field("offset", Kind.INT, low=0, high=MAX_OFFSET)))


class JoinRequest(NamedTuple):
    group: str
    topic: str
    session_timeout_ms: int
    assignor: str
    client: str


class JoinResponse(NamedTuple):
    member: str
    generation: int
    session_timeout_ms: int
    heartbeat_ms: int


class HeartbeatRequest(NamedTuple):
    group: str
    member: str
    generation: int
    assigned: bool
    max_wait_ms: int


class Assigned(NamedTuple):
    """A partition handed to a member, with the group's committed position (None: none)."""

    partition: int
    offset: int | None


class HeartbeatResponse(NamedTuple):
    generation: int
    state: str
    assignment: tuple[Assigned, ...] | None


class LeaveRequest(NamedTuple):
    group: str
    member: str


class CommitRequest(NamedTuple):
    group: str
    member: str
    generation: int
    offsets: tuple[PartitionOffset, ...]


class ListGroupsRequest(NamedTuple):
    group: str | None


class MemberRow(NamedTuple):
    member: str
    client: str
    partitions: tuple[int, ...]
    last_seen_s: float


class GroupPartitionRow(NamedTuple):
    partition: int
    offset: int | None
    member: str | None
    hw: int | None
    lag: int | None
    updated_ms: int | None


class GroupRow(NamedTuple):
    group: str
    topic: str | None
    generation: int
    state: str
    assignor: str | None
    members: tuple[MemberRow, ...]
    partitions: tuple[GroupPartitionRow, ...]


class ListGroupsResponse(NamedTuple):
    groups: tuple[GroupRow, ...]


class ResetRequest(NamedTuple):
    group: str
    topic: str
    offsets: tuple[PartitionOffset, ...]


class DeleteRequest(NamedTuple):
    group: str


class DeleteResponse(NamedTuple):
    positions: int


def _optional(field: Field) -> Field:
    return Field(field.name, field.kind, required=False, low=field.low, high=field.high)


JOIN: Final = Message(JoinRequest, (
    _GROUP, _TOPIC,
    Field("session_timeout_ms", Kind.INT, required=False, default=DEFAULT_SESSION_TIMEOUT_MS,
          low=MIN_SESSION_TIMEOUT_MS, high=MAX_SESSION_TIMEOUT_MS),
    Field("assignor", Kind.TEXT, required=False, default=Assignor.RANGE.value,
          choices=tuple(a.value for a in Assignor)),
    Field("client", Kind.TEXT, required=False, default="", high=NAME_CHARS),
))
JOINED: Final = Message(JoinResponse, (
    _MEMBER, _GENERATION,
    Field("session_timeout_ms", Kind.INT, low=MIN_SESSION_TIMEOUT_MS,
          high=MAX_SESSION_TIMEOUT_MS),
    Field("heartbeat_ms", Kind.INT, low=0, high=MAX_WAIT_MS),
))
HEARTBEAT: Final = Message(HeartbeatRequest, (
    _GROUP, _MEMBER, _GENERATION,
    Field("assigned", Kind.BOOL, required=False, default=False),
    Field("max_wait_ms", Kind.INT, required=False, default=0, low=0, high=MAX_WAIT_MS),
))
HEARTBEAT_ANSWER: Final = Message(HeartbeatResponse, (
    _GENERATION,
    Field("state", Kind.TEXT, choices=tuple(s.value for s in GroupState)),
    Field("assignment", Kind.ROWS, required=False, items=MAX_ROWS, row=Assigned,
          row_fields=(_PARTITION, Field("offset", Kind.INT, required=False, low=0,
                                        high=MAX_OFFSET))),
))
LEAVE: Final = Message(LeaveRequest, (_GROUP, _MEMBER))
COMMIT: Final = Message(CommitRequest, (_GROUP, _MEMBER, _GENERATION, _OFFSETS))
LIST: Final = Message(ListGroupsRequest, (_optional(_GROUP),))
_MEMBER_ROW = Field("members", Kind.ROWS, items=MAX_ROWS, row=MemberRow, row_fields=(
    _MEMBER, Field("client", Kind.TEXT, high=NAME_CHARS),
    Field("partitions", Kind.INTS, items=MAX_ROWS, low=0, high=MAX_PARTITION),
    Field("last_seen_s", Kind.FLOAT),
))
_PARTITION_ROW = Field("partitions", Kind.ROWS, items=MAX_ROWS, row=GroupPartitionRow,
                       row_fields=(
    _PARTITION,
    Field("offset", Kind.INT, required=False, low=0, high=MAX_OFFSET),
    _optional(_MEMBER),
    Field("hw", Kind.INT, required=False, low=0, high=MAX_OFFSET),
    Field("lag", Kind.INT, required=False),
    Field("updated_ms", Kind.INT, required=False),
))
LISTED: Final = Message(ListGroupsResponse, (
    Field("groups", Kind.ROWS, items=MAX_ROWS, row=GroupRow, row_fields=(
        _GROUP, _optional(_TOPIC), _GENERATION,
        Field("state", Kind.TEXT, choices=tuple(s.value for s in GroupState)),
        Field("assignor", Kind.TEXT, required=False),
        _MEMBER_ROW, _PARTITION_ROW,
    )),
))
RESET: Final = Message(ResetRequest, (_GROUP, _TOPIC, _OFFSETS))
DELETE: Final = Message(DeleteRequest, (_GROUP,))
DELETED: Final = Message(DeleteResponse, (Field("positions", Kind.INT, low=0),))

# Request and response of every group API (docs/PROTOCOL.md lists the same).
APIS: Final[dict[ApiKey, tuple[Message[Any], Message[Any]]]] = {
    ApiKey.GROUP_JOIN: (JOIN, JOINED),
    ApiKey.GROUP_HEARTBEAT: (HEARTBEAT, HEARTBEAT_ANSWER),
    ApiKey.GROUP_LEAVE: (LEAVE, EMPTY),
    ApiKey.GROUP_COMMIT: (COMMIT, EMPTY),
    ApiKey.LIST_GROUPS: (LIST, LISTED),
    ApiKey.GROUP_RESET: (RESET, EMPTY),
    ApiKey.GROUP_DELETE: (DELETE, DELETED),
}

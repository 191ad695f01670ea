"""The SC's messages: topics, metadata, sites, and the SPUs' private registration.

Each API has a request and a response (for a stream: each pushed frame) as a
``NamedTuple`` with its declared fields; ``docs/PROTOCOL.md`` has the same
tables. A handler's first step is ``decode_request`` of its message, so what it
reads is typed and in bounds; our clients read the answers with
``decode_response``. Listings that people read (topics, SPUs, partitions,
sites) are free rows, bounded in size and depth; rows that code acts on
(routing metadata, replica assignments, the SPUs' replica reports, a site's
mirrors) are declared field by field.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Final, NamedTuple

from edge.protocol import fields as f
from edge.protocol.messages import ApiKey
from edge.protocol.schema import MAP_KEY_CHARS, Api, Field, Kind, Message
from edge.protocol.spu_api import EMPTY

# A partition is a directory with an open segment and index on each of its SPUs:
# far more than a Pi fleet serves, and a topic's metadata stays a few dozen KiB.
MAX_PARTITIONS: Final = 1000
# Well above any cluster this SC runs; a bignum used to be accepted and stored.
MAX_REPLICATION: Final = 64
# Every topic setting there is, several times over; an unknown key is the
# settings check's INVALID_CONFIG, not a reason to read on.
MAX_CONFIG_ENTRIES: Final = 64
# A health report: a dozen figures today, room for sensors to come.
MAX_HEALTH_ENTRIES: Final = 64
COMPRESSION: Final = ("none", "zlib")
# An edge log's identity, ``<cluster id>/<topic>/<created_ms>``: two names and a
# 20-digit number.
SOURCE_CHARS: Final = 2 * f.NAME_CHARS + 22
# Producer epochs travel as an i16 in the batch header (-1: not idempotent).
MAX_PRODUCER_EPOCH: Final = 2**15 - 1


class TopicStatus(StrEnum):
    READY = "ready"
    # Fewer online SPUs than the replication: placed when enough register.
    WAITING = "insufficient-resources"


_NAME = f.name("name")
_SITE = f.name("site")
_TOKEN = f.TOKEN
_SOURCE = Field("source", Kind.TEXT, low=1, high=SOURCE_CHARS)
_STATUS = Field("status", Kind.TEXT, choices=tuple(s.value for s in TopicStatus))
_CONFIG = Field("config", Kind.MAP, items=MAX_CONFIG_ENTRIES)
_SPU_ID = Field("leader", Kind.INT, low=0, high=f.I32_MAX)
_LEADER = f.optional(_SPU_ID)
_REPLICAS = Field("replicas", Kind.INTS, items=MAX_REPLICATION, low=0, high=f.I32_MAX)
_ISR = Field("isr", Kind.INTS, items=MAX_REPLICATION, low=0, high=f.I32_MAX)
_ADDRESS = Field("address", Kind.TEXT, low=1, high=f.ADDRESS_CHARS)
_MS = Field("created_ms", Kind.INT, low=0, high=f.I64_MAX)


def _count(name: str) -> Field:
    return Field(name, Kind.INT, low=0, high=f.I64_MAX)


def _renamed(field: Field, name: str, *, required: bool = True) -> Field:
    return Field(name, field.kind, required=required, low=field.low, high=field.high,
                 items=field.items, choices=field.choices)


def _rows(name: str) -> Field:
    """Rows shown to people: free maps, bounded like every free value."""
    return Field(name, Kind.ROWS, items=f.MAX_ROWS)


class Named(NamedTuple):
    """A request naming one topic or site."""

    name: str


class TopicFilter(NamedTuple):
    """A request about one topic, or every topic when None."""

    topic: str | None


NAMED: Final = Message(Named, (_NAME,))
TOPIC_FILTER: Final = Message(TopicFilter, (f.optional(f.TOPIC),))

# topics -----------------------------------------------------------------------


class CreateTopicRequest(NamedTuple):
    name: str
    partitions: int
    replication: int
    config: dict[str, Any]
    prefer_leader: int | None


class CreateTopicResponse(NamedTuple):
    status: str


class TopicsResponse(NamedTuple):
    topics: tuple[dict[str, Any], ...]


class DescribeTopicResponse(NamedTuple):
    name: str
    partitions: int
    replication: int
    config: dict[str, Any]
    status: str
    created_ms: int
    partition_status: tuple[dict[str, Any], ...]


class AlterTopicRequest(NamedTuple):
    name: str
    # Setting -> new value; the settings in ``unset`` return to their defaults.
    set: dict[str, Any]
    unset: tuple[str, ...]
    validate_only: bool


class AlterTopicResponse(NamedTuple):
    config: dict[str, Any]


# Partitions, replication and config (and ALTER_TOPIC's set and unset) are the
# topic's settings: whatever is wrong with them is INVALID_CONFIG, as the settings
# check answers for the rest.
TOPIC_SETTINGS: Final = frozenset({"partitions", "replication", "config", "set", "unset"})
CREATE_TOPIC: Final = Message(CreateTopicRequest, (
    _NAME,
    Field("partitions", Kind.INT, required=False, default=1, low=1, high=MAX_PARTITIONS),
    Field("replication", Kind.INT, required=False, default=1, low=1, high=MAX_REPLICATION),
    Field("config", Kind.MAP, required=False, default={}, items=MAX_CONFIG_ENTRIES),
    _renamed(_SPU_ID, "prefer_leader", required=False),
))
CREATED: Final = Message(CreateTopicResponse, (_STATUS,))
TOPICS: Final = Message(TopicsResponse, (_rows("topics"),))
ALTER_TOPIC: Final = Message(AlterTopicRequest, (
    _NAME,
    Field("set", Kind.MAP, required=False, default={}, items=MAX_CONFIG_ENTRIES),
    Field("unset", Kind.TEXTS, required=False, default=(), items=MAX_CONFIG_ENTRIES, low=1,
          high=MAP_KEY_CHARS),
    Field("validate_only", Kind.BOOL, required=False, default=False),
))
ALTERED: Final = Message(AlterTopicResponse, (_CONFIG,))
DESCRIBED_TOPIC: Final = Message(DescribeTopicResponse, (
    _NAME,
    # A mirror topic starts with none and grows a partition per site partition.
    Field("partitions", Kind.INT, low=0, high=f.I32_MAX),
    Field("replication", Kind.INT, low=1, high=MAX_REPLICATION),
    _CONFIG, _STATUS, _MS, _rows("partition_status"),
))

# SPUs, partitions, metadata --------------------------------------------------


class SpusResponse(NamedTuple):
    spus: tuple[dict[str, Any], ...]


class PartitionsResponse(NamedTuple):
    partitions: tuple[dict[str, Any], ...]


class PartitionLeader(NamedTuple):
    """Where a client sends a partition's requests."""

    partition: int
    leader: int | None
    epoch: int
    replicas: tuple[int, ...]


class MetadataResponse(NamedTuple):
    version: int
    topics: dict[str, tuple[PartitionLeader, ...]]
    # SPU id as text -> {public, online, rack}.
    spus: dict[str, dict[str, Any]]
    compression: dict[str, str]


SPUS: Final = Message(SpusResponse, (_rows("spus"),))
PARTITIONS: Final = Message(PartitionsResponse, (_rows("partitions"),))
METADATA: Final = Message(MetadataResponse, (
    f.VERSION,
    Field("topics", Kind.MAP, items=f.MAX_ROWS, values=Field(
        "topics", Kind.ROWS, items=f.MAX_ROWS, row=PartitionLeader,
        row_fields=(f.PARTITION, _LEADER, f.EPOCH, _REPLICAS))),
    Field("spus", Kind.MAP, items=f.MAX_ROWS, values=Field("spus", Kind.MAP, items=16)),
    Field("compression", Kind.MAP, items=f.MAX_ROWS,
          values=Field("compression", Kind.TEXT, choices=COMPRESSION)),
))

# cluster, producers, rebalance ----------------------------------------------


class ClusterStatusResponse(NamedTuple):
    cluster: str
    uptime_s: float
    version: int
    public: str
    private: str
    spus_total: int
    spus_online: int
    topics: int
    partitions: int
    partitions_offline: int
    waiting_topics: tuple[str, ...]
    auth_failures: int
    # When the SC's first TLS certificate expires (Unix seconds); None without TLS.
    tls_not_after: int | None = None
    # With metadata in etcd: {"metadata": "etcd", "active": NODE, "members": [...]}
    # (the etcd members and their health); None with SQLite.
    control_plane: dict[str, Any] | None = None


class ProducerIdResponse(NamedTuple):
    producer_id: int
    epoch: int


class RebalanceResponse(NamedTuple):
    moved: int


CLUSTER_STATUS: Final = Message(ClusterStatusResponse, (
    Field("cluster", Kind.TEXT, high=f.NAME_CHARS),
    Field("uptime_s", Kind.FLOAT),
    f.VERSION,
    _renamed(_ADDRESS, "public"), _renamed(_ADDRESS, "private"),
    _count("spus_total"), _count("spus_online"), _count("topics"), _count("partitions"),
    _count("partitions_offline"),
    Field("waiting_topics", Kind.TEXTS, items=f.MAX_ROWS, low=1, high=f.NAME_CHARS),
    _count("auth_failures"),
    Field("tls_not_after", Kind.INT, required=False, low=0, high=f.I64_MAX),
    Field("control_plane", Kind.MAP, required=False, items=16),
))
PRODUCER_ID: Final = Message(ProducerIdResponse, (
    Field("producer_id", Kind.INT, low=1, high=f.I64_MAX),
    Field("epoch", Kind.INT, low=0, high=MAX_PRODUCER_EPOCH),
))
REBALANCED: Final = Message(RebalanceResponse, (_count("moved"),))

# edge sites ------------------------------------------------------------------


class SiteRegisterResponse(NamedTuple):
    name: str
    token: str
    created_ms: int


class SitesResponse(NamedTuple):
    sites: tuple[dict[str, Any], ...]


class SiteMirror(NamedTuple):
    """One of a site's edge partitions and its home in the cloud."""

    topic: str
    edge_partition: int
    cloud_partition: int
    leader: int | None
    hw: int | None
    leo: int | None
    incarnation: str
    source: str
    # Gap batches in the home partition: what the site deleted before the cloud had it.
    gaps: int | None = None
    gap_offsets: int | None = None
    # From the site's uplink, as of its last request (None before it reported).
    uplink_spu: int | None = None
    edge_end: int | None = None
    lag: int | None = None
    lag_bytes: int | None = None
    oldest_unsent_s: float | None = None
    dropped: int | None = None
    reported_s: float | None = None


class DescribeSiteResponse(NamedTuple):
    name: str
    created_ms: int
    mirrors: tuple[SiteMirror, ...]
    last_contact_s: float | None


class MirrorResolveRequest(NamedTuple):
    site: str
    token: str
    topic: str
    partition: int
    source: str


class MirrorResolveResponse(NamedTuple):
    partition: int
    leader: str
    incarnation: str


_INCARNATION = Field("incarnation", Kind.TEXT, high=f.NAME_CHARS)
SITE_REGISTERED: Final = Message(SiteRegisterResponse, (_NAME, _TOKEN, _MS))
SITES: Final = Message(SitesResponse, (_rows("sites"),))
DESCRIBED_SITE: Final = Message(DescribeSiteResponse, (
    _NAME, _MS,
    Field("mirrors", Kind.ROWS, items=f.MAX_ROWS, row=SiteMirror, row_fields=(
        f.TOPIC, _renamed(f.PARTITION, "edge_partition"),
        _renamed(f.PARTITION, "cloud_partition"), _LEADER, f.optional(f.HW),
        f.optional(f.LEO), _INCARNATION, _SOURCE, f.optional(_count("gaps")),
        f.optional(_count("gap_offsets")), f.optional(_count("uplink_spu")),
        f.optional(_count("edge_end")), f.optional(_count("lag")),
        f.optional(_count("lag_bytes")), f.optional(Field("oldest_unsent_s", Kind.FLOAT)),
        f.optional(_count("dropped")), f.optional(Field("reported_s", Kind.FLOAT)),
    )),
    f.optional(Field("last_contact_s", Kind.FLOAT)),
))
MIRROR_RESOLVE: Final = Message(MirrorResolveRequest, (
    _SITE, _TOKEN, f.TOPIC, f.PARTITION, _SOURCE,
))
MIRROR_RESOLVED: Final = Message(MirrorResolveResponse, (
    f.PARTITION, _renamed(_ADDRESS, "leader"), _INCARNATION,
))

# SC private: an SPU's registration, heartbeats and ISR changes ----------------


class ReplicaStatus(NamedTuple):
    """One replica as the SPU hosting it reports it."""

    topic: str
    partition: int
    leader: bool
    epoch: int
    hw: int
    leo: int
    start: int
    size: int
    failed: bool
    isr: tuple[int, ...] | None
    # On a leader, text SPU id -> {leo, lag, last_fetch_s}.
    followers: dict[str, Any] | None
    # What the disk budget deleted before the cloud had it (edge), and the gap
    # batches in the log (cloud mirror): None from SPUs that do not report them.
    dropped: int | None = None
    gaps: int | None = None
    gap_offsets: int | None = None
    # Cloud mirror: the site uplink's last report (EDGE_REPORT_KEYS and age_ms).
    edge: dict[str, int] | None = None


_REPORTED = Field("partitions", Kind.ROWS, required=False, default=(), items=f.MAX_ROWS,
                  row=ReplicaStatus, row_fields=(
    f.TOPIC, f.PARTITION, Field("leader", Kind.BOOL), f.EPOCH, f.HW, f.LEO, f.START,
    _count("size"), Field("failed", Kind.BOOL), f.optional(_ISR),
    f.optional(Field("followers", Kind.MAP, items=MAX_REPLICATION)),
    f.optional(_count("dropped")), f.optional(_count("gaps")), f.optional(_count("gap_offsets")),
    Field("edge", Kind.MAP, required=False, items=8,
          values=Field("value", Kind.INT, low=-1, high=f.I64_MAX)),
))


class RegisterSpuRequest(NamedTuple):
    spu: int
    public: str
    private: str
    rack: str | None
    partitions: tuple[ReplicaStatus, ...]


class AssignedReplica(NamedTuple):
    """A replica the SC tells an SPU to host, with its role and topic settings."""

    topic: str
    partition: int
    leader: int | None
    replicas: tuple[int, ...]
    epoch: int
    isr: tuple[int, ...]
    config: dict[str, Any]
    # A cloud mirror partition's owner: {site, token_sha256, incarnation, edge_partition}.
    mirror: dict[str, Any] | None
    source: str


# A principal is a certificate common name; the SC's superusers travel to every SPU.
MAX_PRINCIPAL_CHARS: Final = 200
MAX_SUPERUSERS: Final = 256


class AclRule(NamedTuple):
    principal: str
    operation: str
    resource: str


class AclRules(NamedTuple):
    acls: tuple[AclRule, ...]
    authorization: bool


# The three parts of a rule (edge.acl checks their syntax where it matters).
_ACL_FIELDS = (Field("principal", Kind.TEXT, high=MAX_PRINCIPAL_CHARS),
               Field("operation", Kind.TEXT,
                     choices=("produce", "consume", "describe", "create", "delete",
                              "alter", "admin", "member")),
               Field("resource", Kind.TEXT, high=f.NAME_CHARS + 8))
ACL_RULE: Final = Message(AclRule, _ACL_FIELDS)
_ACL_ROWS = Field("acls", Kind.ROWS, items=f.MAX_ROWS, row=AclRule, row_fields=_ACL_FIELDS)
ACL_RULES: Final = Message(AclRules, (_ACL_ROWS, Field("authorization", Kind.BOOL)))

# Tokens: for principals without a client certificate (edge/tokens.py). A token
# is 43 URL-safe characters; the SC keeps only its SHA-256 (64 hex digits).
MAX_TOKEN_CHARS: Final = 128
TOKEN_KINDS: Final = ("user", "gateway")


class Login(NamedTuple):
    token: str


class LoggedIn(NamedTuple):
    principal: str


class TokenCreate(NamedTuple):
    name: str
    kind: str


class TokenCreated(NamedTuple):
    name: str
    principal: str
    token_id: str
    token: str


class TokenRow(NamedTuple):
    name: str
    kind: str
    principal: str
    token_id: str
    created_ms: int
    revoked_ms: int | None


class TokenRevoke(NamedTuple):
    """Revoke every live token of ``name``, or only the one with ``token_id``."""

    name: str
    token_id: str | None


class Tokens(NamedTuple):
    tokens: tuple[TokenRow, ...]


class TokenGrant(NamedTuple):
    """What an SPU needs of a live token: its digest and who it stands for."""

    sha256: str
    principal: str


_PRINCIPAL = Field("principal", Kind.TEXT, low=1, high=MAX_PRINCIPAL_CHARS)
_SHA256 = Field("sha256", Kind.TEXT, low=64, high=64)
# A token's id: the first hex digits of its digest, enough to tell a name's tokens apart.
TOKEN_ID_CHARS: Final = 12
_TOKEN_ID = Field("token_id", Kind.TEXT, low=TOKEN_ID_CHARS, high=TOKEN_ID_CHARS)
LOGIN: Final = Message(Login, (Field("token", Kind.TEXT, low=1, high=MAX_TOKEN_CHARS),))
LOGGED_IN: Final = Message(LoggedIn, (_PRINCIPAL,))
TOKEN_CREATE: Final = Message(TokenCreate, (_NAME, Field("kind", Kind.TEXT,
                                                         choices=TOKEN_KINDS)))
TOKEN_CREATED: Final = Message(TokenCreated, (
    _NAME, _PRINCIPAL, _TOKEN_ID, Field("token", Kind.TEXT, low=1, high=MAX_TOKEN_CHARS)))
TOKEN_REVOKE: Final = Message(TokenRevoke, (_NAME, f.optional(_TOKEN_ID)))
TOKENS: Final = Message(Tokens, (Field("tokens", Kind.ROWS, items=f.MAX_ROWS, row=TokenRow,
                                       row_fields=(
    _NAME, Field("kind", Kind.TEXT, choices=TOKEN_KINDS), _PRINCIPAL, _TOKEN_ID,
    Field("created_ms", Kind.INT, low=0, high=f.I64_MAX),
    Field("revoked_ms", Kind.INT, required=False, low=0, high=f.I64_MAX))),))
_TOKEN_GRANTS = Field("tokens", Kind.ROWS, required=False, items=f.MAX_ROWS, row=TokenGrant,
                      row_fields=(_SHA256, _PRINCIPAL))

# One whole, in the millionths uplink shares are counted in.
SHARE_PPM: Final = 1_000_000

class Assignment(NamedTuple):
    replicas: tuple[AssignedReplica, ...]
    version: int
    cluster: str
    peers: dict[str, str]
    # This SPU's part of its site's uplink bandwidth limit, in millionths (its
    # share of the site's led upstream partitions); None: all of it.
    uplink_share_ppm: int | None = None
    # Access control: whether it is on, and the rules (edge.acl); None from an SC
    # that does not send them (authorization off).
    authorization: bool | None = None
    acls: tuple[AclRule, ...] | None = None
    superusers: tuple[str, ...] | None = None
    # The live tokens (digest and principal): SPUs answer LOGIN themselves.
    tokens: tuple[TokenGrant, ...] | None = None
    # How many writes the SC's metadata store has committed: lower than an SPU saw
    # before means the SC runs on an older copy (a restored backup).
    generation: int | None = None


class HeartbeatRequest(NamedTuple):
    spu: int
    health: dict[str, Any]
    partitions: tuple[ReplicaStatus, ...]
    stats: dict[str, int]


class HeartbeatResponse(NamedTuple):
    version: int


class UpdateIsrRequest(NamedTuple):
    spu: int
    topic: str
    partition: int
    epoch: int
    isr: tuple[int, ...]


# SPU ids are i32 (fields.SPU): printable, portable to 32-bit peers, far inside
# the i64 SQLite stores. The address syntax is the SC's check (edge/sc/registration.py).
REGISTER_SPU: Final = Message(RegisterSpuRequest, (
    f.SPU, _renamed(_ADDRESS, "public"), _renamed(_ADDRESS, "private"),
    # A label from the SPU's config file, which does not check it: empty is allowed.
    f.optional(Field("rack", Kind.TEXT, high=f.NAME_CHARS)), _REPORTED,
))
ASSIGNMENT: Final = Message(Assignment, (
    Field("replicas", Kind.ROWS, items=f.MAX_ROWS, row=AssignedReplica, row_fields=(
        f.TOPIC, f.PARTITION, _LEADER, _REPLICAS, f.EPOCH, _ISR, _CONFIG,
        f.optional(Field("mirror", Kind.MAP, items=16)), _SOURCE,
    )),
    f.VERSION,
    Field("cluster", Kind.TEXT, high=f.NAME_CHARS),
    Field("peers", Kind.MAP, items=f.MAX_ROWS, values=_renamed(_ADDRESS, "peers")),
    Field("uplink_share_ppm", Kind.INT, required=False, low=0, high=SHARE_PPM),
    Field("authorization", Kind.BOOL, required=False),
    Field("acls", Kind.ROWS, required=False, items=f.MAX_ROWS, row=AclRule,
          row_fields=_ACL_FIELDS),
    Field("superusers", Kind.TEXTS, required=False, items=MAX_SUPERUSERS,
          high=MAX_PRINCIPAL_CHARS),
    _TOKEN_GRANTS,
    Field("generation", Kind.INT, required=False, low=0, high=f.I64_MAX),
))
HEARTBEAT: Final = Message(HeartbeatRequest, (
    f.SPU,
    Field("health", Kind.MAP, required=False, default={}, items=MAX_HEALTH_ENTRIES),
    _REPORTED,
    Field("stats", Kind.MAP, required=False, default={}, items=f.MAX_ROWS,
          values=Field("stats", Kind.INT)),
))
HEARTBEAT_ANSWER: Final = Message(HeartbeatResponse, (f.VERSION,))
UPDATE_ISR: Final = Message(UpdateIsrRequest, (f.SPU, f.TOPIC, f.PARTITION, f.EPOCH, _ISR))

APIS: Final[dict[ApiKey, Api]] = {
    ApiKey.CREATE_TOPIC: Api(CREATE_TOPIC, CREATED),
    ApiKey.DELETE_TOPIC: Api(NAMED, EMPTY),
    ApiKey.LIST_TOPICS: Api(EMPTY, TOPICS),
    ApiKey.DESCRIBE_TOPIC: Api(NAMED, DESCRIBED_TOPIC),
    ApiKey.LIST_SPUS: Api(EMPTY, SPUS),
    ApiKey.LIST_PARTITIONS: Api(TOPIC_FILTER, PARTITIONS),
    ApiKey.METADATA: Api(EMPTY, METADATA),
    ApiKey.WATCH_METADATA: Api(EMPTY, METADATA, stream=True),
    ApiKey.CLUSTER_STATUS: Api(EMPTY, CLUSTER_STATUS),
    ApiKey.INIT_PRODUCER_ID: Api(EMPTY, PRODUCER_ID),
    ApiKey.PARTITION_REBALANCE: Api(TOPIC_FILTER, REBALANCED),
    ApiKey.SITE_REGISTER: Api(NAMED, SITE_REGISTERED),
    ApiKey.SITE_UNREGISTER: Api(NAMED, EMPTY),
    ApiKey.LIST_SITES: Api(EMPTY, SITES),
    ApiKey.DESCRIBE_SITE: Api(NAMED, DESCRIBED_SITE),
    ApiKey.MIRROR_RESOLVE: Api(MIRROR_RESOLVE, MIRROR_RESOLVED),
    ApiKey.ACL_ADD: Api(ACL_RULE, EMPTY),
    ApiKey.ACL_REMOVE: Api(ACL_RULE, EMPTY),
    ApiKey.ACL_LIST: Api(EMPTY, ACL_RULES),
    ApiKey.LOGIN: Api(LOGIN, LOGGED_IN),
    ApiKey.TOKEN_CREATE: Api(TOKEN_CREATE, TOKEN_CREATED),
    ApiKey.TOKEN_LIST: Api(EMPTY, TOKENS),
    ApiKey.TOKEN_REVOKE: Api(TOKEN_REVOKE, EMPTY),
    ApiKey.ALTER_TOPIC: Api(ALTER_TOPIC, ALTERED),
    ApiKey.REGISTER_SPU: Api(REGISTER_SPU, ASSIGNMENT, stream=True),
    ApiKey.HEARTBEAT: Api(HEARTBEAT, HEARTBEAT_ANSWER),
    ApiKey.UPDATE_ISR: Api(UPDATE_ISR, EMPTY),
}

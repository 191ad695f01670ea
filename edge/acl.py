"""Who may do what: principals, ACL rules and the check every request passes.

A *principal* is who a connection proved to be: the common name of its verified
client certificate (mutual TLS on the public port), or the name its token stands
for (``LOGIN``, edge/tokens.py), else ``anonymous``. Principals come in kinds that
cannot pass for one another: ``spu-N``, ``sc``, ``site-NAME``, ``gateway-NAME``, and
users, whose names may not begin with another kind's prefix (:func:`principal_name`). Once
``authorization`` is on (``sc.toml``), everything is denied that no rule allows,
except to the SC's ``superusers``. A rule allows one principal (or ``*``, any)
one operation on one resource:

* operations: ``produce``, ``consume``, ``describe``, ``create``, ``delete``,
  ``alter``, ``admin``;
* resources: ``topic:NAME``, ``topic:PREFIX*``, ``group:NAME``, ``group:PREFIX*``,
  ``cluster``; ``*`` alone matches any resource.

``produce`` and ``consume`` on a topic imply ``describe`` of it (a client must
find its leaders).

**Roles** group principals: the rule ``(PRINCIPAL, member, role:NAME)`` puts a
principal in role ``NAME``, and a rule whose principal is ``role:NAME`` allows what
it says to every member. Membership is a rule like any other (a relation tuple,
``role:NAME#member@PRINCIPAL``), so it is stored, pushed, saved on the SPUs, backed
up and migrated with the rules. Roles do not nest, and no connection *is* a role:
a certificate whose common name reads ``role:NAME`` gets nothing of its rules.

The SC stores the rules and pushes them to every SPU with its assignment; each
side checks the requests it serves. A denial is answered with
``AUTHORIZATION_FAILED``, counted, and logged once per principal and resource.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any, Final, NamedTuple

from edge.logstate import LogOnce
from edge.protocol.errors import AuthorizationFailed
from edge.protocol.messages import ApiKey
from edge.protocol.sc_api import MAX_PRINCIPAL_CHARS
from edge.storage.config import TOPIC_NAME

log = logging.getLogger(__name__)

# Cached decisions (principal, operation, resource) before the cache starts over.
MAX_DECISIONS: Final = 4096

ANONYMOUS: Final = "anonymous"
ANY: Final = "*"
ROLE: Final = "role:"
# Denials logged, each (principal, resource) once: a client hammering what it may
# not touch is counted, not written to the SD card every time.
MAX_LOGGED_DENIALS: Final = 256


# The kinds of principal and the names they carry (users: the bare name).
PRINCIPAL_KINDS: Final = ("sc", "spu", "gateway", "site", "user")
_RESERVED: Final = ("sc", "spu-", "gateway-", "site-")


def principal_name(kind: str, name: str) -> str:
    """The principal a certificate or token of ``kind`` for ``name`` stands for, or
    ValueError: a user may not be called what an SPU, SC, site or gateway is."""
    if kind not in PRINCIPAL_KINDS:
        raise ValueError(f"kind must be one of {', '.join(PRINCIPAL_KINDS)}, not {kind!r}")
    if kind == "sc":
        return "sc"
    if not TOPIC_NAME.fullmatch(name):
        raise ValueError(f"{name!r}: a name is 1..200 letters, digits, '.', '_' and '-', "
                         "beginning with a letter or digit")
    if kind != "user":
        return f"{kind}-{name}"
    if name == "sc" or name.startswith(_RESERVED[1:]) or name in (ANONYMOUS, ANY):
        raise ValueError(f"{name!r}: user names may not be sc, anonymous or begin with "
                         "spu-, gateway- or site- (those name other kinds of principal)")
    return name


class Operation(StrEnum):
    PRODUCE = "produce"
    CONSUME = "consume"
    DESCRIBE = "describe"
    CREATE = "create"
    DELETE = "delete"
    ALTER = "alter"
    ADMIN = "admin"
    # Not what a request needs: ``(P, member, role:NAME)`` makes P a member of NAME.
    MEMBER = "member"


class Rule(NamedTuple):
    principal: str
    operation: Operation
    resource: str

    def covers(self, principal: str, operation: Operation, resource: str) -> bool:
        if self.principal not in (ANY, principal):
            return False
        implied = operation is Operation.DESCRIBE and self.operation in (
            Operation.PRODUCE, Operation.CONSUME)
        if self.operation is not operation and not implied:
            return False
        return resource_matches(self.resource, resource)


def resource_matches(pattern: str, resource: str) -> bool:
    if pattern == ANY:
        return True
    if pattern.endswith("*"):
        return resource.startswith(pattern[:-1])
    return pattern == resource


def check_rule(principal: str, operation: str, resource: str) -> Rule:
    """A rule from its three parts, or ValueError naming the bad one."""
    if not principal or len(principal) > MAX_PRINCIPAL_CHARS or not principal.isprintable():
        raise ValueError(f"principal must be 1..{MAX_PRINCIPAL_CHARS} printable characters")
    try:
        op = Operation(operation)
    except ValueError:
        raise ValueError(f"operation must be one of {', '.join(Operation)}, "
                         f"not {operation!r}") from None
    if principal.startswith(ROLE) and not TOPIC_NAME.fullmatch(principal[len(ROLE):]):
        raise ValueError(f"principal role:NAME needs a NAME of 1..200 letters, digits, "
                         f"'.', '_' and '-', not {principal!r}")
    if op is Operation.MEMBER:
        if not resource.startswith(ROLE) or not TOPIC_NAME.fullmatch(resource[len(ROLE):]):
            raise ValueError(f"resource of a member rule must be role:NAME, not {resource!r}")
        if principal.startswith(ROLE):
            raise ValueError(f"roles do not nest: {principal} cannot be a member of "
                             f"{resource}")
    elif resource not in (ANY, "cluster"):
        kind, _, name = resource.partition(":")
        base = name[:-1] if name.endswith("*") else name
        if kind not in ("topic", "group") or not (
                (not base and name == "*") or TOPIC_NAME.fullmatch(base)):
            raise ValueError(f"resource must be topic:NAME, topic:PREFIX*, group:NAME, "
                             f"group:PREFIX*, cluster or * (role:NAME with operation "
                             f"member), not {resource!r}")
    return Rule(principal, op, resource)


def required(api: ApiKey, meta: Mapping[Any, Any]) -> list[tuple[Operation, str]]:
    """What a request needs: (operation, resource) pairs, all of them. Empty: anyone
    (API_VERSIONS, LOGIN; the uplink's mirror requests, which sites prove with their
    token)."""
    topic = meta.get("topic")
    t = f"topic:{topic}" if isinstance(topic, str) else "cluster"
    group = meta.get("group")
    g = f"group:{group}" if isinstance(group, str) else "cluster"
    table: dict[ApiKey, list[tuple[Operation, str]]] = {
        ApiKey.PRODUCE: [(Operation.PRODUCE, t)],
        ApiKey.FETCH: [(Operation.CONSUME, t)],
        ApiKey.STREAM_FETCH: [(Operation.CONSUME, t)],
        ApiKey.LIST_OFFSETS: [(Operation.DESCRIBE, t)],
        ApiKey.OFFSET_COMMIT: [(Operation.CONSUME, t)],
        ApiKey.OFFSET_FETCH: [(Operation.CONSUME, t)],
        ApiKey.CREATE_TOPIC: [(Operation.CREATE, _named_topic(meta))],
        ApiKey.DELETE_TOPIC: [(Operation.DELETE, _named_topic(meta))],
        ApiKey.ALTER_TOPIC: [(Operation.ALTER, _named_topic(meta))],
        ApiKey.DESCRIBE_TOPIC: [(Operation.DESCRIBE, _named_topic(meta))],
        ApiKey.GROUP_JOIN: [(Operation.CONSUME, g)],
        ApiKey.GROUP_HEARTBEAT: [(Operation.CONSUME, g)],
        ApiKey.GROUP_LEAVE: [(Operation.CONSUME, g)],
        ApiKey.GROUP_COMMIT: [(Operation.CONSUME, g)],
        ApiKey.GROUP_RESET: [(Operation.ALTER, g)],
        ApiKey.GROUP_DELETE: [(Operation.DELETE, g)],
        ApiKey.SITE_REGISTER: [(Operation.ADMIN, "cluster")],
        ApiKey.SITE_UNREGISTER: [(Operation.ADMIN, "cluster")],
        ApiKey.PARTITION_REBALANCE: [(Operation.ADMIN, "cluster")],
        ApiKey.ACL_ADD: [(Operation.ADMIN, "cluster")],
        ApiKey.ACL_REMOVE: [(Operation.ADMIN, "cluster")],
        ApiKey.ACL_LIST: [(Operation.ADMIN, "cluster")],
        ApiKey.TOKEN_CREATE: [(Operation.ADMIN, "cluster")],
        ApiKey.TOKEN_LIST: [(Operation.ADMIN, "cluster")],
        ApiKey.TOKEN_REVOKE: [(Operation.ADMIN, "cluster")],
    }
    free = {ApiKey.API_VERSIONS, ApiKey.LOGIN, ApiKey.MIRROR_OFFSETS, ApiKey.MIRROR_APPEND,
            ApiKey.MIRROR_GAP, ApiKey.MIRROR_RESOLVE,
            # What a producer or consumer needs to find its leaders and ids; the
            # requests it then sends are checked on their topic.
            ApiKey.METADATA, ApiKey.WATCH_METADATA, ApiKey.INIT_PRODUCER_ID}
    if api in free:
        return []
    return table.get(api, [(Operation.DESCRIBE, "cluster")])


def _named_topic(meta: Mapping[Any, Any]) -> str:
    name = meta.get("name", meta.get("topic"))
    return f"topic:{name}" if isinstance(name, str) else "cluster"


class Authorizer:
    """The rules in force on one server, and the check of each request."""

    def __init__(self, *, enabled: bool = False, rules: Iterable[Rule] = (),
                 superusers: Iterable[str] = ()) -> None:
        self.enabled = enabled
        self.rules: list[Rule] = []
        self.superusers = frozenset(superusers)
        self.denied = 0
        self._log = LogOnce(log, max_keys=MAX_LOGGED_DENIALS)
        self._members: dict[str, frozenset[str]] = {}
        # Decisions already made, until the rules change: a producer's every batch
        # asks the same question, and the answer then costs one dictionary lookup.
        self._decisions: dict[tuple[str, Operation, str], bool] = {}
        self._set_rules(rules)

    def update(self, *, enabled: bool, rules: Iterable[Rule],
               superusers: Iterable[str] | None = None) -> None:
        self.enabled = enabled
        if superusers is not None:
            self.superusers = frozenset(superusers)
        self._set_rules(rules)

    def _set_rules(self, rules: Iterable[Rule]) -> None:
        self._decisions = {}
        self.rules = list(rules)
        members: dict[str, set[str]] = {}
        for r in self.rules:
            if r.operation is Operation.MEMBER:
                members.setdefault(r.principal, set()).add(r.resource)
        self._members = {p: frozenset(roles) for p, roles in members.items()}

    def roles(self, principal: str) -> frozenset[str]:
        """The roles (``role:NAME``) ``principal`` is a member of, by name or as ``*``."""
        return self._members.get(principal, frozenset()) | self._members.get(ANY, frozenset())

    def allows(self, principal: str, operation: Operation, resource: str) -> bool:
        if not self.enabled:
            return True
        question = (principal, operation, resource)
        answer = self._decisions.get(question)
        if answer is None:
            if len(self._decisions) >= MAX_DECISIONS:
                self._decisions = {}
            answer = self._decisions[question] = self._decide(principal, operation, resource)
        return answer

    def _decide(self, principal: str, operation: Operation, resource: str) -> bool:
        if principal in self.superusers:
            return True
        if principal.startswith(ROLE):  # a name, never a role itself
            return any(r.principal == ANY and r.covers(principal, operation, resource)
                       for r in self.rules)
        names = (principal, *self.roles(principal))
        return any(r.covers(name, operation, resource) for r in self.rules for name in names)

    def check(self, principal: str | None, api: ApiKey, meta: Mapping[Any, Any]) -> None:
        """Raise AuthorizationFailed unless ``principal`` may send this request."""
        if not self.enabled:
            return
        who = principal or ANONYMOUS
        for operation, resource in required(api, meta):
            if not self.allows(who, operation, resource):
                self.denied += 1
                self._log.warning((who, resource), "denied %s: %s on %s (%s); further "
                                  "denials of this principal and resource are counted, "
                                  "not logged", who, operation.value, resource, api.name)
                raise AuthorizationFailed(
                    f"{who} may not {operation.value} {resource} (no ACL allows it; "
                    f"headwater acl add --principal {who} --operation {operation.value} "
                    f"--resource {resource})", principal=who, operation=operation.value,
                    resource=resource)


def rules_from_wire(rows: Iterable[Any]) -> list[Rule]:
    """Rules as the SC pushes them (checked by the schema); a bad one is skipped."""
    out = []
    for row in rows:
        try:
            out.append(check_rule(row["principal"], row["operation"], row["resource"]))
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("ignoring an ACL the SC sent: %s", exc)
    return out

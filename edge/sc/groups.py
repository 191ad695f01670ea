"""Consumer groups on the SC: membership, generations, assignment, fenced commits.

A simplified Kafka group coordinator. Members of a group read one topic. Any
change of membership (a join, a leave, a member silent for its session
timeout) or of the topic's partition count starts a new *generation* with a
new assignment, computed here (range or round robin over the member ids, so
the same members always get the same split). The assignment is handed out
only when every member has acknowledged the generation, i.e. heartbeated with
it after dropping the partitions it held: until then the old owners keep their
partitions (and may commit them), after it nobody holds a partition it lost.
A commit is accepted only from a member that holds the partition at the
generation the commit names, so a member that was dropped or has moved on can
never overwrite the new owner's position.

Pure state over a clock value passed in; the durable part (generations,
positions) is the :class:`GroupStore`.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from edge.protocol.errors import (
    ConsumerNotFound,
    GroupNotEmpty,
    InsufficientResources,
    InvalidConfig,
    InvalidRequest,
    StaleGeneration,
    TopicNotFound,
    UnknownMember,
)
from edge.protocol.groups import (
    MAX_WAIT_MS,
    Assigned,
    Assignor,
    CommitRequest,
    GroupPartitionRow,
    GroupRow,
    GroupState,
    HeartbeatRequest,
    HeartbeatResponse,
    JoinRequest,
    JoinResponse,
    LeaveRequest,
    MemberRow,
    ResetRequest,
)
from edge.sc.group_store import RESET_GENERATION, GroupStore
from edge.storage.config import is_topic_name

log = logging.getLogger(__name__)

# Bounds on soft state: far above a Pi cluster's needs, far below what fills its RAM.
MAX_LIVE_GROUPS: Final = 10_000
MAX_MEMBERS: Final = 1000


def assign_partitions(members: Sequence[str], partitions: int, assignor: Assignor
                      ) -> dict[str, tuple[int, ...]]:
    """Each member's partitions: every partition exactly once, deterministic."""
    order = sorted(members)
    if not order:
        return {}
    n = len(order)
    if assignor is Assignor.ROUNDROBIN:
        return {m: tuple(range(i, partitions, n)) for i, m in enumerate(order)}
    per, extra = divmod(partitions, n)
    out: dict[str, tuple[int, ...]] = {}
    start = 0
    for i, m in enumerate(order):
        count = per + (1 if i < extra else 0)
        out[m] = tuple(range(start, start + count))
        start += count
    return out


def heartbeat_ms(session_timeout_ms: int) -> int:
    """How long a member's heartbeat may wait on the SC: a third of its session."""
    return min(session_timeout_ms // 3, MAX_WAIT_MS)


@dataclass
class Member:
    id: str
    client: str
    session_ms: int
    last_seen: float
    acked: int  # the generation this member follows
    owned: tuple[int, ...] | None = None  # what it reads at ``acked``; None: waiting


@dataclass
class Group:
    name: str
    topic: str
    assignor: Assignor
    generation: int
    partitions: int
    members: dict[str, Member] = field(default_factory=dict)
    assignment: dict[str, tuple[int, ...]] = field(default_factory=dict)
    rebalance_since: float | None = None

    @property
    def state(self) -> GroupState:
        if not self.members:
            return GroupState.EMPTY
        return GroupState.STABLE if self.rebalance_since is None else GroupState.REBALANCING

    def owner(self, partition: int) -> str | None:
        return next((m.id for m in self.members.values()
                     if m.owned is not None and partition in m.owned), None)


class Coordinator:
    """Every group with live members, and the durable positions of all groups."""

    def __init__(self, store: GroupStore, *, partitions_of: Callable[[str], int | None],
                 high_watermarks: Callable[[str], dict[int, int]]) -> None:
        self.store = store
        self.partitions_of = partitions_of
        self.high_watermarks = high_watermarks
        self.groups: dict[str, Group] = {}
        # Per group: callbacks run on every change (heartbeats waiting for one).
        self.watchers: dict[str, set[Callable[[], None]]] = defaultdict(set)

    # membership ---------------------------------------------------------------

    def join(self, req: JoinRequest, now: float) -> JoinResponse:
        if not is_topic_name(req.group):
            raise InvalidConfig(f"invalid group name {req.group!r}: use letters, digits, '.', "
                                "'_', '-' (at most 200, starting with a letter or digit)")
        partitions = self.partitions_of(req.topic)
        if partitions is None:
            raise TopicNotFound(f"topic {req.topic!r} does not exist", topic=req.topic)
        group = self._group_for(req, partitions)
        if len(group.members) >= MAX_MEMBERS:
            raise InsufficientResources(f"group {req.group!r} has {MAX_MEMBERS} members",
                                        group=req.group)
        member = Member(uuid.uuid4().hex[:16], req.client, req.session_timeout_ms, now, 0)
        group.members[member.id] = member
        self._rebalance(group, now, f"member {member.id} ({req.client or 'no label'}) joined")
        member.acked = group.generation  # it holds nothing yet, so it has nothing to drop
        self._settle(group)
        return JoinResponse(member.id, group.generation, req.session_timeout_ms,
                            heartbeat_ms(req.session_timeout_ms))

    def _group_for(self, req: JoinRequest, partitions: int) -> Group:
        group = self.groups.get(req.group)
        if group is None:
            if len(self.groups) >= MAX_LIVE_GROUPS:
                raise InsufficientResources(f"{MAX_LIVE_GROUPS} groups have live members")
            group = Group(req.group, req.topic, Assignor(req.assignor),
                          self.store.generation(req.group), partitions)
            self.groups[req.group] = group
        elif group.topic != req.topic:
            raise InvalidConfig(f"group {req.group!r} reads topic {group.topic!r}, not "
                                f"{req.topic!r}", group=req.group)
        elif group.assignor != req.assignor:
            raise InvalidConfig(f"group {req.group!r} uses the {group.assignor} assignor, not "
                                f"{req.assignor}", group=req.group)
        return group

    def heartbeat(self, req: HeartbeatRequest, now: float) -> HeartbeatResponse:
        group, member = self._member(req.group, req.member)
        member.last_seen = now
        if req.generation > group.generation:
            raise InvalidRequest(f"generation {req.generation} is ahead of group "
                                 f"{group.name!r} ({group.generation})", field="generation")
        if req.generation == group.generation and member.acked != group.generation:
            member.acked, member.owned = group.generation, None
            self._settle(group)
        assignment = None
        if (group.state is GroupState.STABLE and req.generation == group.generation
                and member.owned is not None and not req.assigned):
            positions = self._positions(group)
            assignment = tuple(Assigned(p, positions.get(p)) for p in member.owned)
        return HeartbeatResponse(group.generation, group.state.value, assignment)

    @staticmethod
    def nothing_new(req: HeartbeatRequest, answer: HeartbeatResponse) -> bool:
        """True when the answer tells the member nothing it does not know, so the
        heartbeat may wait for a change before answering."""
        if answer.generation != req.generation:
            return False
        return answer.state == GroupState.REBALANCING or req.assigned

    def leave(self, req: LeaveRequest, now: float) -> None:
        group = self.groups.get(req.group)
        if group is None or req.member not in group.members:
            return  # already gone: leaving twice is not an error
        del group.members[req.member]
        self._rebalance(group, now, f"member {req.member} left")
        self._settle(group)

    def expire(self, now: float) -> None:
        """Drop members silent past their session, and members that have not
        acknowledged a generation within the longest session of their group."""
        for group in list(self.groups.values()):
            dead = {m.id: "no heartbeat for %.1fs" % (now - m.last_seen)
                    for m in group.members.values() if now - m.last_seen > m.session_ms / 1000}
            if group.rebalance_since is not None and group.members:
                limit = max(m.session_ms for m in group.members.values()) / 1000
                if now - group.rebalance_since > limit:
                    dead.update({m.id: f"generation {group.generation} not acknowledged"
                                 for m in group.members.values()
                                 if m.acked != group.generation and m.id not in dead})
            if not dead:
                continue
            for member_id, why in dead.items():
                del group.members[member_id]
                log.warning("group %s: member %s dropped: %s", group.name, member_id, why)
            self._rebalance(group, now, f"{len(dead)} member(s) dropped")
            self._settle(group)

    def topics_changed(self, now: float) -> None:
        """Rebalance groups whose topic changed its partition count (or vanished)."""
        for group in list(self.groups.values()):
            count = self.partitions_of(group.topic) or 0
            if count != group.partitions:
                group.partitions = count
                self._rebalance(group, now, f"{group.topic} has {count} partition(s)")
                self._settle(group)

    def _member(self, name: str, member_id: str) -> tuple[Group, Member]:
        group = self.groups.get(name)
        member = group.members.get(member_id) if group is not None else None
        if group is None or member is None:
            raise UnknownMember(f"member {member_id} is not in group {name!r} (its session "
                                "expired or it left); join again", group=name)
        return group, member

    # generations ------------------------------------------------------------

    def _rebalance(self, group: Group, now: float, why: str) -> None:
        group.generation += 1
        self.store.set_generation(group.name, group.generation)
        group.assignment = assign_partitions(list(group.members), group.partitions,
                                             group.assignor)
        group.rebalance_since = now if group.members else None
        log.info("group %s: generation %d, %d member(s): %s", group.name, group.generation,
                 len(group.members), why)
        if not group.members:
            del self.groups[group.name]
        self._notify(group.name)

    def _settle(self, group: Group) -> None:
        """Hand out the assignment once every member acknowledged the generation."""
        if group.rebalance_since is None:
            return
        if any(m.acked != group.generation for m in group.members.values()):
            return
        for m in group.members.values():
            m.owned = group.assignment.get(m.id, ())
        group.rebalance_since = None
        log.info("group %s: generation %d stable: %s", group.name, group.generation,
                 {m: list(p) for m, p in sorted(group.assignment.items())})
        self._notify(group.name)

    def _notify(self, name: str) -> None:
        for notify in list(self.watchers.get(name, ())):
            notify()

    # positions --------------------------------------------------------------

    def commit(self, req: CommitRequest, now: float) -> None:
        group, member = self._member(req.group, req.member)
        member.last_seen = now
        if req.generation != member.acked or member.owned is None:
            raise StaleGeneration(
                f"member {member.id} holds no partitions at generation {req.generation} "
                f"(group {group.name!r} is at {group.generation})", generation=group.generation)
        foreign = sorted({o.partition for o in req.offsets} - set(member.owned))
        if foreign:
            raise StaleGeneration(
                f"partition(s) {', '.join(map(str, foreign))} of {group.topic} are not member "
                f"{member.id}'s at generation {req.generation}", generation=group.generation)
        if req.offsets:
            self.store.commit(group.name, group.topic,
                              {o.partition: o.offset for o in req.offsets}, req.generation)

    def _positions(self, group: Group) -> dict[int, int]:
        return {p.partition: p.offset for p in self.store.positions(group.name, group.topic)}

    def reset(self, req: ResetRequest) -> None:
        """Set stored positions; refused while the group has live members."""
        if not is_topic_name(req.group):
            raise InvalidConfig(f"invalid group name {req.group!r}")
        self._refuse_live(req.group, "reset")
        count = self.partitions_of(req.topic)
        if count is None:
            raise TopicNotFound(f"topic {req.topic!r} does not exist", topic=req.topic)
        bad = sorted({o.partition for o in req.offsets if o.partition >= count})
        if bad:
            raise InvalidConfig(f"{req.topic} has {count} partition(s), no {bad[0]}",
                                topic=req.topic)
        self.store.commit(req.group, req.topic, {o.partition: o.offset for o in req.offsets},
                          RESET_GENERATION)
        log.info("group %s: positions in %s reset to %s", req.group, req.topic,
                 {o.partition: o.offset for o in req.offsets})

    def delete(self, name: str) -> int:
        """Forget a group and its positions; refused while it has live members."""
        self._refuse_live(name, "delete")
        removed = self.store.delete(name)
        if removed is None:
            raise ConsumerNotFound(f"group {name!r} does not exist", group=name)
        log.info("group %s deleted (%d position(s))", name, removed)
        return removed

    def _refuse_live(self, name: str, what: str) -> None:
        group = self.groups.get(name)
        if group is not None and group.members:
            raise GroupNotEmpty(
                f"cannot {what} group {name!r}: it has {len(group.members)} live member(s); "
                "stop them first (a killed member counts until its session times out)",
                group=name, members=len(group.members))

    # listing ----------------------------------------------------------------

    def describe(self, now: float, name: str | None = None) -> list[GroupRow]:
        names = sorted(set(self.groups) | set(self.store.groups()))
        rows: list[GroupRow] = []
        for group_name in names:
            if name is None or group_name == name:
                rows.extend(self._rows(group_name, now))
        return rows

    def _rows(self, name: str, now: float) -> list[GroupRow]:
        live = self.groups.get(name)
        stored: dict[str, dict[int, tuple[int, int]]] = defaultdict(dict)
        for p in self.store.positions(name):
            stored[p.topic][p.partition] = (p.offset, p.updated_ms)
        rows = []
        if live is not None:
            members = tuple(MemberRow(m.id, m.client, m.owned or (),
                                      round(now - m.last_seen, 3))
                            for m in sorted(live.members.values(), key=lambda m: m.id))
            parts = self._partition_rows(live.topic, range(live.partitions),
                                         stored.pop(live.topic, {}), live.owner)
            rows.append(GroupRow(name, live.topic, live.generation, live.state.value,
                                 live.assignor.value, members, parts))
        generation = live.generation if live is not None else self.store.generation(name)
        for topic, positions in sorted(stored.items()):
            rows.append(GroupRow(name, topic, generation, GroupState.EMPTY.value, None, (),
                                 self._partition_rows(topic, sorted(positions), positions,
                                                      lambda p: None)))
        if not rows:
            rows.append(GroupRow(name, None, generation, GroupState.EMPTY.value, None, (), ()))
        return rows

    def _partition_rows(self, topic: str, indexes: Sequence[int] | range,
                        positions: dict[int, tuple[int, int]],
                        owner: Callable[[int], str | None]) -> tuple[GroupPartitionRow, ...]:
        out = []
        marks = self.high_watermarks(topic)
        for p in indexes:
            offset, updated = positions.get(p, (None, None))
            hw = marks.get(p)
            lag = hw - offset if hw is not None and offset is not None else None
            out.append(GroupPartitionRow(p, offset, owner(p), hw, lag, updated))
        return tuple(out)

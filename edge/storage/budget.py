"""The pure rules of the disk budget: which segments go to make room for a write.

A node (and optionally a topic) has a byte budget its partitions never exceed.
Before a write of ``n`` bytes that would pass it, segments are evicted, whole
and oldest first within each partition:

1. segments the cloud already has (wholly below the uplink's cloud-acknowledged
   offset), from any partition on the node (or of the topic), the oldest first;
2. then, only when the writing topic's policy is ``drop-oldest``, that topic's
   own oldest segments the cloud lacks (counted as dropped, marked upstream).

Under ``reject-new`` (and when even step 2 cannot free enough) nothing is
deleted and the write is refused with a retriable error. One topic never
deletes another topic's unsent data. Only closed segments wholly below the
high watermark may go: an active segment or unacknowledged data never does.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import Enum
from typing import Any, Final, NamedTuple

from edge.storage.config import MAX_LOG_BYTES

BUDGET_KEYS: Final = frozenset({"budget_bytes", "budget_policy"})
# Below this a budget cannot hold a few segments, indexes and checkpoints.
MIN_BUDGET_BYTES: Final = 64 * 1024


class Policy(Enum):
    REJECT_NEW = "reject-new"
    DROP_OLDEST = "drop-oldest"


class TopicBudget(NamedTuple):
    """A topic's budget settings: its own byte limit (None: only the node's) and policy."""

    bytes: int | None = None
    policy: Policy = Policy.REJECT_NEW

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TopicBudget:
        """From a topic config; raises ValueError naming the key."""
        size = config.get("budget_bytes")
        if size is not None:
            check_budget("budget_bytes", size)
        raw = config.get("budget_policy", Policy.REJECT_NEW.value)
        try:
            policy = Policy(raw)
        except ValueError:
            choices = ", ".join(p.value for p in Policy)
            raise ValueError(f"budget_policy must be one of {choices}, not {raw!r}") from None
        return cls(size, policy)


def check_budget(name: str, value: object) -> int:
    """A budget in bytes, within bounds; ValueError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer number of bytes, got {value!r}")  # noqa: TRY004
    if not MIN_BUDGET_BYTES <= value <= MAX_LOG_BYTES:
        raise ValueError(f"{name} must be {MIN_BUDGET_BYTES}..{MAX_LOG_BYTES} bytes, "
                         f"got {value}")
    return value


class Candidate(NamedTuple):
    """A closed segment that may be evicted, as the planner sees it."""

    partition: tuple[str, int]
    base_offset: int
    next_offset: int
    size: int
    max_timestamp: int
    sent: bool  # wholly below the cloud-acknowledged offset


def plan(segments: Iterable[Sequence[Candidate]], need: int, *,
         drop_from: tuple[str, int] | None = None, topic: str | None = None
         ) -> list[Candidate] | None:
    """The segments to evict to free ``need`` bytes, or None when that is impossible.

    ``segments`` holds each partition's evictable segments, oldest first.
    ``drop_from`` names the topic (any of its partitions) whose unsent data may
    go under drop-oldest; ``topic`` limits everything to one topic's partitions.
    """
    if need <= 0:
        return []
    lists = [list(s) for s in segments if s and (topic is None or s[0].partition[0] == topic)]
    chosen = _oldest_first([_sent_prefix(s) for s in lists], need)
    freed = sum(c.size for c in chosen)
    if freed >= need:
        return chosen
    if drop_from is None:
        return None
    own = [s for s in lists if s[0].partition[0] == drop_from[0]]
    taken = {(c.partition, c.base_offset) for c in chosen}
    rest = [[c for c in s if (c.partition, c.base_offset) not in taken] for s in own]
    more = _oldest_first(rest, need - freed)
    if freed + sum(c.size for c in more) < need:
        return None
    return chosen + more


def _sent_prefix(segments: list[Candidate]) -> list[Candidate]:
    out = []
    for c in segments:
        if not c.sent:
            break
        out.append(c)
    return out


def _oldest_first(lists: list[list[Candidate]], need: int) -> list[Candidate]:
    """Take segments from the heads of ``lists`` (each oldest first), the one with the
    oldest newest-record first, until ``need`` bytes are covered or none are left."""
    heads = [0] * len(lists)
    chosen: list[Candidate] = []
    freed = 0
    while freed < need:
        live = [i for i, s in enumerate(lists) if heads[i] < len(s)]
        if not live:
            break
        i = min(live, key=lambda j: lists[j][heads[j]].max_timestamp)
        c = lists[i][heads[i]]
        heads[i] += 1
        chosen.append(c)
        freed += c.size
    return chosen

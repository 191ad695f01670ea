"""The SPU's disk budget: make room before a write, or refuse it.

Every append on this SPU (produce as leader, a follower's copy, a mirrored
batch) first asks :meth:`NodeBudget.make_room`. When the write would take the
node past its budget (``disk_budget`` in spu.toml, ``--disk-budget``), or its
topic past the topic's ``budget_bytes``, whole closed segments are evicted by
the rules of :mod:`edge.storage.budget`: first what the cloud already has, from
any partition; then, under the topic's ``drop-oldest`` policy, the writing
topic's own oldest data the cloud lacks, counted in ``dropped.cbor``; under
``reject-new`` the write is refused with the retriable ``BUDGET_EXCEEDED`` and
nothing is deleted.

The budget counts the bytes of the partitions' segment files (the records);
indexes and checkpoints add a few kB per segment on top (docs/UPSTREAM.md).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping

from edge.logstate import StateLog
from edge.protocol.errors import BudgetExceeded
from edge.spu.partition import Partition
from edge.storage.budget import Candidate, Policy, plan

log = logging.getLogger(__name__)


class NodeBudget:
    """The byte budget of one SPU over the partitions it hosts."""

    def __init__(self, limit: int | None, partitions: Mapping[tuple[str, int], Partition]
                 ) -> None:
        self.limit = limit
        self.partitions = partitions
        self.refused = 0
        self.evicted_bytes = 0
        self._full = StateLog(log)

    def make_room(self, p: Partition, need: int) -> None:
        """Evict what the rules allow so that ``need`` more bytes fit, else raise
        BudgetExceeded. Cheap when there is room (one sum over the hosted logs)."""
        topic_limit = p.budget.bytes
        if self.limit is None and topic_limit is None:
            return
        drop_from = (p.topic, p.index) if p.budget.policy == Policy.DROP_OLDEST else None
        if topic_limit is not None:
            over = self._used(p.topic) + need - topic_limit
            if over > 0:
                self._evict(p, over, drop_from, topic=p.topic,
                            what=f"topic {p.topic}'s budget of {topic_limit} bytes")
        if self.limit is not None:
            over = self._used(None) + need - self.limit
            if over > 0:
                self._evict(p, over, drop_from, topic=None,
                            what=f"this SPU's disk budget of {self.limit} bytes")
        if self._full.active:
            self._full.end("disk budget: %s accepts writes again", p.name)

    def _used(self, topic: str | None) -> int:
        return sum(q.log.size_bytes for (t, _), q in list(self.partitions.items())
                   if topic is None or t == topic)

    def _candidates(self) -> list[list[Candidate]]:
        out = []
        for key, q in list(self.partitions.items()):
            if q.closed or q.failed is not None:
                continue
            out.append(q.log.evictable(key, q.high_watermark, q.cloud_acked))
        return out

    def _evict(self, p: Partition, need: int, drop_from: tuple[str, int] | None, *,
               topic: str | None, what: str) -> None:
        chosen = plan(self._candidates(), need, drop_from=drop_from, topic=topic)
        if chosen is None:
            self.refused += 1
            self._full.begin(
                "disk budget: %s full; writes to %s refused with BUDGET_EXCEEDED (policy "
                "%s) until the uplink delivers older data or the budget grows", what,
                p.name, p.budget.policy.value)
            raise BudgetExceeded(
                f"{what} is full and {p.topic} keeps data the cloud lacks "
                f"(budget_policy {p.budget.policy.value}); retry later",
                topic=p.topic, partition=p.index)
        per: dict[tuple[str, int], int] = defaultdict(int)
        for c in chosen:
            per[c.partition] += 1
        for key, count in per.items():
            q = self.partitions[key]
            gone = q.log.evict_oldest(count, covered=q.cloud_acked)
            self.evicted_bytes += gone.bytes
            if gone.lost_records:
                log.warning("disk budget: dropped %d records (%d bytes) of %s that the cloud "
                            "did not have, for %s (policy drop-oldest; counted, marked "
                            "upstream as a gap)", gone.lost_records, gone.lost_bytes, q.name,
                            what)
            else:
                log.info("disk budget: evicted %d segments (%d bytes) of %s the cloud has",
                         gone.segments, gone.bytes, q.name)

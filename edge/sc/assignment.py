"""Replica placement: pure functions, no I/O.

Replicas of a partition go to distinct SPUs; consecutive partitions start on
consecutive SPUs so leaders spread evenly; SPUs are ordered alternating by
rack (site) so the replicas of a partition land on different racks when there
are enough of them (Kafka's rack-aware round robin).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import NamedTuple


class SpuSlot(NamedTuple):
    id: int
    rack: str | None
    leaders: int  # partitions it already leads: new topics start on the least loaded


def rack_alternating(spus: Sequence[SpuSlot]) -> list[SpuSlot]:
    """SPUs ordered so that neighbours sit on different racks where possible."""
    by_rack: dict[str | None, list[SpuSlot]] = defaultdict(list)
    for spu in sorted(spus, key=lambda s: s.id):
        by_rack[spu.rack].append(spu)
    racks = sorted(by_rack, key=lambda r: (r is None, r or ""))
    out: list[SpuSlot] = []
    while any(by_rack[r] for r in racks):
        for r in racks:
            if by_rack[r]:
                out.append(by_rack[r].pop(0))
    return out


def assign(partitions: int, replication: int, spus: Sequence[SpuSlot]) -> list[list[int]] | None:
    """Replica lists (leader first) per partition, or None if there are too few SPUs."""
    if replication < 1 or partitions < 1:
        raise ValueError("partitions and replication must be >= 1")
    if len(spus) < replication:
        return None
    order = rack_alternating(spus)
    n = len(order)
    least = min(range(n), key=lambda i: (order[i].leaders, i))
    result = []
    for p in range(partitions):
        start = (least + p) % n
        # Followers are shifted by a per-partition step so that one SPU's loss
        # spreads its followers' extra load over several others.
        step = 1 + (p // n) % max(n - 1, 1) if n > 1 else 1
        result.append(_replicas(order, start, step, replication))
    return result


def _replicas(order: list[SpuSlot], start: int, step: int, replication: int) -> list[int]:
    """The leader at ``start``, then followers along ``step`` (then along 1, once the
    step cycles), taking SPUs of racks not used yet first."""
    n = len(order)
    walk = [order[(start + k * step) % n] for k in range(1, n)]
    walk += [order[(start + k) % n] for k in range(1, n)]
    chosen = [order[start]]
    for new_racks_only in (True, False):
        for cand in walk:
            if len(chosen) == replication:
                break
            racks = {c.rack for c in chosen}
            if cand in chosen or (new_racks_only and (cand.rack is None or cand.rack in racks)):
                continue
            chosen.append(cand)
    return [c.id for c in chosen]


def led_by(placement: list[list[int]], spu: int) -> list[list[int]]:
    """``placement`` with ``spu`` leading every partition (a gateway asks for the SPU
    on its own host, so device records do not cross the LAN twice).

    Where ``spu`` is not a replica it takes the place of the last one, so a
    partition's replicas stay distinct and their number unchanged.
    """
    out = []
    for replicas in placement:
        rest = [r for r in replicas if r != spu]
        out.append([spu, *rest[:len(replicas) - 1]])
    return out

"""What an SPU shows Prometheus, read from its live state at each scrape."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from edge.metrics import counter, gauge, listener_families

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from edge.spu.partition import Partition
    from edge.spu.replicas import ReplicaSet

_PART = ["topic", "partition"]


def spu_source(replicas: ReplicaSet, listeners: Callable[[], dict[str, dict[str, int]]],
               stats: Callable[[], dict[str, int]],
               uplinks: Callable[[], list[dict[str, Any]]]) -> Callable[[], Iterator[Metric]]:
    def collect() -> Iterator[Metric]:
        parts = sorted(replicas.partitions.values(), key=lambda p: (p.topic, p.index))
        yield from _partitions(parts)
        yield from listener_families(listeners())
        yield counter("headwater_spu_events", "What the SPU counts: records and batches "
                      "produced, refused, corrupt, mirrored (PARTITION_STATUS stats).",
                      ["event"], (([k], v) for k, v in sorted(stats().items())
                                  if isinstance(v, int) and not isinstance(v, bool)))
        yield counter("headwater_authorization_denied", "Requests refused with "
                      "AUTHORIZATION_FAILED (no ACL allowed them).", [],
                      [([], replicas.authorizer.denied)])
        yield from _budget(replicas)
        yield from _uplinks(uplinks())
    return collect


def _partitions(parts: list[Partition]) -> Iterator[Metric]:
    def rows(value: Callable[[Partition], float], *, leaders: bool = False
             ) -> Iterator[tuple[list[str], float]]:
        for p in parts:
            if not leaders or p.is_leader:
                yield [p.topic, str(p.index)], value(p)

    yield gauge("headwater_partition_log_end_offset", "Offset after the last record.",
                _PART, rows(lambda p: p.log.log_end_offset))
    yield gauge("headwater_partition_high_watermark", "What consumers may read: the "
                "offset every in-sync replica has durably.", _PART,
                rows(lambda p: p.high_watermark))
    yield gauge("headwater_partition_log_start_offset", "The oldest offset still stored.",
                _PART, rows(lambda p: p.log.log_start_offset))
    yield gauge("headwater_partition_size_bytes", "Bytes of the partition's segments.",
                _PART, rows(lambda p: p.log.size_bytes))
    yield gauge("headwater_partition_leader", "1 where this SPU leads the partition.",
                _PART, rows(lambda p: 1 if p.is_leader else 0))
    yield gauge("headwater_partition_failed", "1 after a storage failure (the partition "
                "refuses writes until restarted).", _PART,
                rows(lambda p: 1 if p.failed is not None else 0))
    yield gauge("headwater_partition_disk_full", "1 while appends meet a full disk.", _PART,
                rows(lambda p: 1 if p.disk_full.active else 0))
    yield gauge("headwater_partition_isr_size", "In-sync replicas (on the leader).", _PART,
                rows(lambda p: len(p.isr), leaders=True))
    yield gauge("headwater_partition_replicas", "Replicas assigned (on the leader).", _PART,
                rows(lambda p: len(p.replicas), leaders=True))
    yield gauge("headwater_partition_under_replicated", "1 where the ISR is smaller than "
                "the replica set (on the leader).", _PART,
                rows(lambda p: 1 if len(p.isr) < len(p.replicas) else 0, leaders=True))
    yield gauge("headwater_partition_below_min_isr", "1 where the ISR is smaller than "
                "min_insync_replicas: acks=all writes are refused (on the leader).", _PART,
                rows(lambda p: 1 if len(p.isr) < p.min_isr else 0, leaders=True))
    yield counter("headwater_partition_dropped_records", "Records the disk budget deleted "
                  "before the cloud had them.", _PART, rows(lambda p: p.log.dropped.records))
    yield counter("headwater_partition_gap_offsets", "Offsets covered by gap markers "
                  "(cloud mirror: what the site lost before the cloud had it).", _PART,
                  rows(lambda p: p.log.gaps.offsets))


def _budget(replicas: ReplicaSet) -> Iterator[Metric]:
    budget = replicas.budget
    used = sum(p.log.size_bytes for p in replicas.partitions.values())
    yield gauge("headwater_disk_budget_used_bytes", "Record bytes held, as the disk "
                "budget counts them.", [], [([], used)])
    if budget.limit is not None:
        yield gauge("headwater_disk_budget_bytes", "The SPU's disk budget.", [],
                    [([], budget.limit)])
    yield counter("headwater_disk_budget_refused", "Writes refused with BUDGET_EXCEEDED.",
                  [], [([], budget.refused)])
    yield counter("headwater_disk_budget_evicted_bytes", "Bytes the disk budget evicted.",
                  [], [([], budget.evicted_bytes)])


_STATES = ("connecting", "connected", "offline", "stalled", "unconfigured")


def _uplinks(rows: list[dict[str, Any]]) -> Iterator[Metric]:
    def each(key: str) -> Iterator[tuple[list[str], float]]:
        for r in rows:
            if r.get(key) is not None:
                yield [r["topic"], str(r["partition"])], float(r[key])

    yield gauge("headwater_upstream_lag_records", "Records the cloud has not acknowledged.",
                _PART, each("lag"))
    yield gauge("headwater_upstream_lag_bytes", "Stored bytes the cloud has not "
                "acknowledged.", _PART, each("lag_bytes"))
    yield gauge("headwater_upstream_lag_seconds", "Age of the oldest batch the cloud has "
                "not acknowledged.", _PART, each("lag_s"))
    yield gauge("headwater_upstream_state", "1 for the uplink's current state.",
                [*_PART, "state"],
                (([r["topic"], str(r["partition"]), s], 1 if r["state"] == s else 0)
                 for r in rows for s in _STATES))
    yield counter("headwater_upstream_raw_bytes", "Stored bytes sent to the cloud.", _PART,
                  each("raw_bytes"))
    yield counter("headwater_upstream_wire_bytes", "Bytes those took on the wire.", _PART,
                  each("wire_bytes"))
    yield counter("headwater_upstream_gaps_marked", "Gap markers written in the cloud.",
                  _PART, each("gaps_marked"))

"""What an SC shows Prometheus: the cluster as it sees it, read at each scrape."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from edge.metrics import counter, gauge, listener_families

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from edge.protocol.groups import GroupRow
    from edge.sc.controller import Controller
    from edge.sc.sites import SiteRegistry


def sc_source(controller: Controller, sites: SiteRegistry,
              listeners: Callable[[], dict[str, dict[str, int]]],
              denied: Callable[[], int] = lambda: 0,
              groups: Callable[[], list[GroupRow]] = list) -> Callable[[], Iterator[Metric]]:
    def collect() -> Iterator[Metric]:
        spus = list(controller.spus.values())
        yield gauge("headwater_spus", "Registered SPUs by state.", ["state"],
                    [(["online"], sum(1 for s in spus if s.online)),
                     (["offline"], sum(1 for s in spus if not s.online))])
        topics = {t.name: t for t in controller.store.topics()}
        yield gauge("headwater_topics", "Topics.", [], [([], len(topics))])
        parts = controller.store.partitions()
        online = {s.id for s in spus if s.online}
        offline = [p for p in parts if p.leader is None or p.leader not in online]
        under = [p for p in parts if len(p.isr) < len(p.replicas)]
        below = [p for p in parts if p.topic in topics and len(p.isr) < int(
            topics[p.topic].config.get("min_insync_replicas", 1))]
        yield gauge("headwater_partitions", "Partitions of all topics.", [], [([], len(parts))])
        yield gauge("headwater_partitions_offline", "Partitions without a leader that is "
                    "online: nobody can write or read them.", [], [([], len(offline))])
        yield gauge("headwater_partitions_under_replicated", "Partitions whose ISR is "
                    "smaller than their replica set.", [], [([], len(under))])
        yield gauge("headwater_partitions_below_min_isr", "Partitions whose ISR is smaller "
                    "than min_insync_replicas: acks=all writes are refused.", [],
                    [([], len(below))])
        yield from listener_families(listeners())
        yield counter("headwater_authorization_denied", "Requests refused with "
                      "AUTHORIZATION_FAILED (no ACL allowed them).", [], [([], denied())])
        yield from _sites(sites.list())
        yield from _groups(groups())
    return collect


def _groups(rows: list[GroupRow]) -> Iterator[Metric]:
    """Consumer groups: a row per (group, topic) the coordinator lists, a partition
    where the group stored a position (lag also needs the leader's high watermark)."""
    parts = [(r.group, r.topic, p) for r in rows if r.topic is not None for p in r.partitions]
    yield gauge("headwater_consumer_group_lag_records", "Records past a consumer group's "
                "committed position: the partition's high watermark minus the position.",
                ["group", "topic", "partition"],
                [([g, t, str(p.partition)], float(p.lag)) for g, t, p in parts
                 if p.lag is not None])
    yield gauge("headwater_consumer_group_committed_offset", "The position a consumer "
                "group stored: the next offset it will read.", ["group", "topic", "partition"],
                [([g, t, str(p.partition)], float(p.offset)) for g, t, p in parts
                 if p.offset is not None])
    members: dict[str, int] = {}
    for r in rows:
        members[r.group] = members.get(r.group, 0) + len(r.members)
    yield gauge("headwater_consumer_group_members", "Live members of a consumer group.",
                ["group"], [([g], float(n)) for g, n in sorted(members.items())])


def _sites(rows: list[dict[str, Any]]) -> Iterator[Metric]:
    def each(key: str) -> Iterator[tuple[list[str], float]]:
        for r in rows:
            if r.get(key) is not None:
                yield [r["name"]], float(r[key])

    yield gauge("headwater_site_last_contact_seconds", "Seconds since an edge site's "
                "uplink last reached this (cloud) SC.", ["site"], each("last_contact_s"))
    yield gauge("headwater_site_lag_records", "Records the site holds that the cloud has "
                "not acknowledged, as of its last report.", ["site"], each("lag"))
    yield gauge("headwater_site_lag_seconds", "Age of the site's oldest unsent batch, as "
                "of its last report.", ["site"], each("oldest_unsent_s"))
    yield gauge("headwater_site_dropped_records", "Records the site's disk budget deleted "
                "before the cloud had them.", ["site"], each("dropped"))
    yield gauge("headwater_site_gap_offsets", "Offsets marked as gaps in the site's home "
                "partitions.", ["site"], each("gap_offsets"))

"""Edge sites on the cloud SC: registration and the home partitions of their mirrors.

A site is a name and a secret token (only its SHA-256 is stored). Each
(site, topic, edge partition) gets one home partition in the cloud topic of the
same name, created on the uplink's first MIRROR_RESOLVE: a cloud topic
``readings`` fed by sites ``kitchen`` and ``barn`` holds a partition per
(site, edge partition), so one can consume the whole topic or one site's part.
The SC hands each home partition's owner (site, token digest, incarnation) to
its SPUs with the replica assignment; the SPU leader checks every
MIRROR_APPEND against it.
"""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from typing import Any

from edge.protocol.errors import (
    AuthenticationFailed,
    InsufficientResources,
    InvalidConfig,
    LeaderNotAvailable,
    MirrorSourceMismatch,
    SiteExists,
    SiteNotFound,
)
from edge.sc.assignment import assign
from edge.sc.controller import Controller
from edge.sc.store import MirrorRow, PartitionRow, SiteRow, TopicRow
from edge.storage.config import is_topic_name
from edge.storage.mirror import MirrorOwner, token_digest

log = logging.getLogger(__name__)

# Cloud mirror partitions are replicated like any other: three copies where the
# cloud has three SPUs, fewer on a small development cloud.
MIRROR_REPLICATION = 3
TOKEN_BYTES = 32


class SiteRegistry:
    """Sites, their tokens and their mirror partitions, on top of the controller."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller
        self.store = controller.store
        # Soft state, like SPU liveness: when each site's uplink last asked for a home.
        self.last_contact: dict[str, float] = {}

    def register(self, name: str) -> tuple[SiteRow, str]:
        """Create a site; returns it and its token (shown once, stored as a digest)."""
        if not is_topic_name(name):
            raise InvalidConfig(f"invalid site name {name!r}: use letters, digits, '.', '_', "
                                "'-' (at most 200, starting with a letter or digit)")
        token = secrets.token_urlsafe(TOKEN_BYTES)
        row = SiteRow(name, token_digest(token), int(time.time() * 1000))
        if not self.store.add_site(row):
            raise SiteExists(f"site {name!r} is already registered", site=name)
        log.info("registered edge site %s", name)
        return row, token

    def unregister(self, name: str) -> None:
        """Forget a site and its mirror mappings; the mirrored data stays in the cloud."""
        if not self.store.delete_site(name):
            raise SiteNotFound(f"site {name!r} is not registered", site=name)
        self.last_contact.pop(name, None)
        log.info("unregistered edge site %s", name)
        self.controller.changed()

    def site(self, name: str) -> SiteRow:
        row = self.store.site(name)
        if row is None:
            raise SiteNotFound(f"site {name!r} is not registered", site=name)
        return row

    def describe(self, name: str) -> dict[str, Any]:
        row = self.site(name)
        return {**self._summary(row), "mirrors": self._mirrors(name, self._partitions())}

    def _partitions(self) -> dict[tuple[str, int], Any]:
        return {(p.topic, p.idx): p for p in self.store.partitions()}

    def _mirrors(self, name: str, parts: dict[tuple[str, int], Any]) -> list[dict[str, Any]]:
        mirrors = []
        for m in self.store.mirrors(name):
            p = parts.get((m.topic, m.cloud_partition))
            status = self.controller.partition_status(p) if p is not None else {}
            mirrors.append({"topic": m.topic, "edge_partition": m.edge_partition,
                            "cloud_partition": m.cloud_partition, "leader": status.get("leader"),
                            "hw": status.get("hw"), "leo": status.get("leo"),
                            "gaps": status.get("gaps"), "gap_offsets": status.get("gap_offsets"),
                            **_edge_view(status),
                            "incarnation": m.incarnation, "source": m.source})
        return mirrors

    def list(self) -> list[dict[str, Any]]:
        """Each site with its totals over its mirrors: lag, oldest unsent data, drops."""
        out = []
        parts = self._partitions()
        for s in self.store.sites():
            mirrors = self._mirrors(s.name, parts)
            reported = [m for m in mirrors if m.get("reported_s") is not None]
            ages = [m["oldest_unsent_s"] for m in reported if m["oldest_unsent_s"] is not None]
            out.append({**self._summary(s),
                        "lag": sum(m["lag"] or 0 for m in reported) if reported else None,
                        "lag_bytes": (sum(m["lag_bytes"] or 0 for m in reported)
                                      if reported else None),
                        "oldest_unsent_s": max(ages) if ages else None,
                        "dropped": sum(m["dropped"] or 0 for m in reported) if reported else None,
                        "gap_offsets": sum(m["gap_offsets"] or 0 for m in mirrors),
                        "uplink_spus": sorted({m["uplink_spu"] for m in reported})})
        return out

    def _summary(self, row: SiteRow) -> dict[str, Any]:
        seen = self.last_contact.get(row.name)
        return {"name": row.name, "created_ms": row.created_ms,
                "mirrors": len(self.store.mirrors(row.name)),
                "last_contact_s": round(time.monotonic() - seen, 1) if seen else None}

    # the uplink's way in ----------------------------------------------------

    def resolve(self, site: str, token: str, topic: str, edge_partition: int, source: str
                ) -> tuple[MirrorRow, str]:
        """The home partition of (site, topic, edge partition), created on first use,
        and its leader's public address."""
        row = self.store.site(site)
        if row is None or not MirrorOwner(site, row.token_sha256, "", 0).admits(site, token):
            raise AuthenticationFailed(f"unknown site {site!r} or wrong token", site=site)
        self.last_contact[site] = time.monotonic()
        mirror = self._find(site, topic, edge_partition)
        if mirror is None:
            mirror = self._create(site, topic, edge_partition, source)
        elif mirror.source != source:
            raise MirrorSourceMismatch(
                f"{topic}/{edge_partition} of site {site!r} is a different edge log "
                f"({source}) than the one mirrored so far ({mirror.source}); the edge topic "
                "was re-created or its data wiped", site=site, topic=topic)
        return mirror, self._leader_addr(topic, mirror.cloud_partition)

    def _find(self, site: str, topic: str, edge_partition: int) -> MirrorRow | None:
        return next((m for m in self.store.mirrors(site)
                     if m.topic == topic and m.edge_partition == edge_partition), None)

    def _create(self, site: str, topic: str, edge_partition: int, source: str) -> MirrorRow:
        if not is_topic_name(topic):
            raise InvalidConfig(f"invalid mirror {topic!r}/{edge_partition}")
        existing = self.store.topic(topic)
        if existing is not None and not existing.config.get("mirror"):
            raise InvalidConfig(f"cloud topic {topic!r} exists and is not a mirror topic",
                                topic=topic)
        slots = self.controller.slots()
        replication = (existing.replication if existing is not None
                       else min(MIRROR_REPLICATION, len(slots)))
        placement = assign(1, replication, slots) if replication else None
        if placement is None:
            raise InsufficientResources(f"no {replication or 1} online SPUs for a mirror of "
                                        f"{topic}", topic=topic)
        index = existing.partitions if existing is not None else 0
        replicas = placement[0]
        partition = PartitionRow(topic, index, replicas, replicas[0], 0, list(replicas))
        now = int(time.time() * 1000)
        mirror = MirrorRow(site, topic, edge_partition, index, source, uuid.uuid4().hex, now)
        new_topic = None if existing is not None else TopicRow(
            topic, 0, replication, {"mirror": True,
                                    "min_insync_replicas": min(2, replication)}, "ready", now)
        self.store.add_mirror_partition(mirror, partition, new_topic)
        log.info("site %s: %s/%d mirrors into cloud partition %s/%d (replicas %s)", site,
                 topic, edge_partition, topic, index, replicas)
        self.controller.changed()
        return mirror

    def _leader_addr(self, topic: str, index: int) -> str:
        p = next((p for p in self.store.partitions(topic) if p.idx == index), None)
        leader = self.controller.spus.get(p.leader) if p and p.leader is not None else None
        if leader is None or not leader.online:
            raise LeaderNotAvailable(f"{topic}/{index} has no live leader", topic=topic,
                                     partition=index)
        return leader.public


def _edge_view(status: dict[str, Any]) -> dict[str, Any]:
    """What the site's uplink last reported of a home partition, as a site row shows
    it: lag against the cloud's high watermark, ages in seconds."""
    edge = status.get("edge")
    if not isinstance(edge, dict) or "edge_end" not in edge:
        return {}
    hw = status.get("hw")
    oldest = edge.get("oldest_unsent_ms", -1)
    lag = None if hw is None else max(edge["edge_end"] - hw, 0)
    return {"uplink_spu": edge.get("spu"), "edge_end": edge["edge_end"], "lag": lag,
            "lag_bytes": 0 if lag == 0 else edge.get("lag_bytes"),
            "oldest_unsent_s": (0.0 if lag == 0 or oldest < 0 else
                                round(max(time.time() - oldest / 1000, 0.0), 1)),
            "dropped": edge.get("dropped"), "reported_s": round(edge.get("age_ms", 0) / 1000, 1)}

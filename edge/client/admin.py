"""Admin API: topics, partitions, SPUs, consumers, cluster status."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from typing import Any

from edge.client.cluster import ClusterClient
from edge.client.consumer import Offset
from edge.protocol import groups as msg
from edge.protocol import sc_api
from edge.protocol.errors import HeadwaterError, PartitionNotFound
from edge.protocol.messages import ApiKey
from edge.protocol.schema import decode_response, to_wire


class Admin:
    """Manage a Headwater cluster through its SC.

    ``async with Admin("127.0.0.1:9003") as admin: await admin.create_topic("t")``
    """

    def __init__(self, sc: str, *, ssl: ssl.SSLContext | None = None,
                 server_hostname: str | None = None, token: str | None = None) -> None:
        self.cluster = ClusterClient(sc, ssl_context=ssl, server_hostname=server_hostname,
                                     token=token)

    async def __aenter__(self) -> Admin:
        await self.cluster.sc()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.cluster.close()

    async def create_topic(self, name: str, *, partitions: int = 1, replication: int = 1,
                           config: dict[str, Any] | None = None,
                           prefer_leader: int | None = None) -> str:
        """Create a topic; returns its status (``ready`` or ``insufficient-resources``).

        ``prefer_leader``: an SPU id to lead every partition, if it is online.
        """
        extra = {} if prefer_leader is None else {"prefer_leader": prefer_leader}
        meta = await self.cluster.sc_request(
            ApiKey.CREATE_TOPIC, name=name, partitions=partitions, replication=replication,
            config=config or {}, **extra)
        return decode_response(sc_api.CREATED, meta).status

    async def alter_topic(self, name: str, *, set: dict[str, Any] | None = None,
                          unset: Sequence[str] = (), validate_only: bool = False
                          ) -> dict[str, Any]:
        """Change a topic's settings: ``set`` maps settings to new values, ``unset``
        names settings that return to their defaults. Returns the resulting settings
        (with ``validate_only``, what they would be; nothing is changed). Refused
        with InvalidConfig naming the setting."""
        meta = await self.cluster.sc_request(
            ApiKey.ALTER_TOPIC, name=name, set=dict(set or {}), unset=list(unset),
            validate_only=validate_only)
        return dict(decode_response(sc_api.ALTERED, meta).config)

    async def delete_topic(self, name: str) -> None:
        await self.cluster.sc_request(ApiKey.DELETE_TOPIC, name=name)

    async def list_topics(self) -> list[dict[str, Any]]:
        meta = await self.cluster.sc_request(ApiKey.LIST_TOPICS)
        return list(decode_response(sc_api.TOPICS, meta).topics)

    async def describe_topic(self, name: str) -> dict[str, Any]:
        meta = await self.cluster.sc_request(ApiKey.DESCRIBE_TOPIC, name=name)
        return _fields(decode_response(sc_api.DESCRIBED_TOPIC, meta))

    async def list_partitions(self, topic: str | None = None) -> list[dict[str, Any]]:
        meta = await self.cluster.sc_request(ApiKey.LIST_PARTITIONS, topic=topic)
        return list(decode_response(sc_api.PARTITIONS, meta).partitions)

    async def rebalance(self, topic: str | None = None) -> int:
        """Preferred-replica election; returns how many partitions changed leader."""
        meta = await self.cluster.sc_request(ApiKey.PARTITION_REBALANCE, topic=topic)
        return decode_response(sc_api.REBALANCED, meta).moved

    async def list_spus(self) -> list[dict[str, Any]]:
        meta = await self.cluster.sc_request(ApiKey.LIST_SPUS)
        return list(decode_response(sc_api.SPUS, meta).spus)

    async def cluster_status(self) -> dict[str, Any]:
        meta = await self.cluster.sc_request(ApiKey.CLUSTER_STATUS)
        return _fields(decode_response(sc_api.CLUSTER_STATUS, meta))

    async def list_consumers(self) -> list[dict[str, Any]]:
        """Stored consumer positions, collected from every online SPU."""
        rows: list[dict[str, Any]] = []
        for conn in await self.cluster.spu_connections():
            meta, _ = await conn.request(ApiKey.LIST_CONSUMERS)
            rows.extend(meta["consumers"])
        return sorted(rows, key=lambda r: (r["consumer"], r["topic"], r["partition"]))

    # consumer groups ------------------------------------------------------------

    async def list_groups(self, group: str | None = None) -> list[msg.GroupRow]:
        """Consumer groups: members, assigned partitions, positions and lag."""
        meta = await self.cluster.sc_request(ApiKey.LIST_GROUPS, group=group)
        return list(decode_response(msg.LISTED, meta).groups)

    async def reset_group(self, group: str, topic: str, to: Offset, *,
                          partitions: Sequence[int] | None = None) -> dict[int, int]:
        """Move a group's positions in ``topic`` (every partition, or ``partitions``)
        to ``to``, resolved on each partition's leader and kept inside its log;
        refused while the group has live members. Returns the new positions."""
        parts = await self.cluster.partitions(topic)
        indexes = list(range(len(parts))) if partitions is None else sorted(set(partitions))
        for i in indexes:
            if not 0 <= i < len(parts):
                raise PartitionNotFound(f"{topic} has {len(parts)} partition(s), no {i}",
                                        topic=topic, partition=i)
        offsets = {i: await self._resolve(topic, i, to) for i in indexes}
        await self.cluster.sc_request(
            ApiKey.GROUP_RESET, group=group, topic=topic,
            offsets=[{"partition": p, "offset": o} for p, o in offsets.items()])
        return offsets

    async def _resolve(self, topic: str, partition: int, to: Offset) -> int:
        conn = await self.cluster.leader(topic, partition)
        kind = {"beginning": "beginning", "timestamp": "timestamp"}.get(to.kind, "end")
        extra = {"timestamp": to.value} if to.kind == "timestamp" else {}
        meta, _ = await conn.request(ApiKey.LIST_OFFSETS, topic=topic, partition=partition,
                                     kind=kind, **extra)
        if to.kind == "absolute":
            return min(max(to.value, int(meta["start"])), int(meta["leo"]))
        if to.kind == "from_end":
            return max(int(meta["offset"]) - to.value, int(meta["start"]))
        return int(meta["offset"])

    async def delete_group(self, group: str) -> int:
        """Forget a group and its positions (refused while it has live members);
        returns how many positions were removed."""
        meta = await self.cluster.sc_request(ApiKey.GROUP_DELETE, group=group)
        return decode_response(msg.DELETED, meta).positions

    # access control ------------------------------------------------------------

    async def add_acl(self, principal: str, operation: str, resource: str) -> None:
        """Allow ``principal`` ``operation`` on ``resource`` (edge.acl)."""
        await self.cluster.sc_request(ApiKey.ACL_ADD, principal=principal,
                                      operation=operation, resource=resource)

    async def remove_acl(self, principal: str, operation: str, resource: str) -> None:
        await self.cluster.sc_request(ApiKey.ACL_REMOVE, principal=principal,
                                      operation=operation, resource=resource)

    async def create_token(self, name: str, kind: str = "user") -> sc_api.TokenCreated:
        """A new token for ``name`` (a user's, or a gateway's): its only copy is in
        the answer; the SC keeps its digest."""
        meta = await self.cluster.sc_request(ApiKey.TOKEN_CREATE, name=name, kind=kind)
        return decode_response(sc_api.TOKEN_CREATED, meta)

    async def list_tokens(self) -> list[sc_api.TokenRow]:
        meta = await self.cluster.sc_request(ApiKey.TOKEN_LIST)
        return list(decode_response(sc_api.TOKENS, meta).tokens)

    async def revoke_token(self, name: str, token_id: str | None = None) -> None:
        """Revoke every live token of ``name``, or the one whose id is ``token_id``."""
        await self.cluster.sc_request(ApiKey.TOKEN_REVOKE, name=name,
                                      **({} if token_id is None else {"token_id": token_id}))

    async def list_acls(self) -> tuple[bool, list[dict[str, str]]]:
        """Whether authorization is on, and the rules."""
        meta = await self.cluster.sc_request(ApiKey.ACL_LIST)
        answer = decode_response(sc_api.ACL_RULES, meta)
        return answer.authorization, [r._asdict() for r in answer.acls]

    # edge sites (on a cloud SC) and the uplink (on an edge cluster) --------------

    async def register_site(self, name: str) -> dict[str, Any]:
        """Register an edge site; the answer holds its token, shown this once."""
        meta = await self.cluster.sc_request(ApiKey.SITE_REGISTER, name=name)
        return _fields(decode_response(sc_api.SITE_REGISTERED, meta))

    async def unregister_site(self, name: str) -> None:
        await self.cluster.sc_request(ApiKey.SITE_UNREGISTER, name=name)

    async def list_sites(self) -> list[dict[str, Any]]:
        meta = await self.cluster.sc_request(ApiKey.LIST_SITES)
        return list(decode_response(sc_api.SITES, meta).sites)

    async def describe_site(self, name: str) -> dict[str, Any]:
        meta = await self.cluster.sc_request(ApiKey.DESCRIBE_SITE, name=name)
        return _fields(decode_response(sc_api.DESCRIBED_SITE, meta))

    async def site_partitions(self, site: str, topic: str) -> list[int]:
        """The cloud partitions of ``topic`` that hold ``site``'s mirror."""
        meta = await self.cluster.sc_request(ApiKey.DESCRIBE_SITE, name=site)
        mirrors = decode_response(sc_api.DESCRIBED_SITE, meta).mirrors
        return sorted(m.cloud_partition for m in mirrors if m.topic == topic)

    async def upstream_status(self) -> list[dict[str, Any]]:
        """Every uplink of an edge cluster, collected from its online SPUs."""
        rows: list[dict[str, Any]] = []
        for conn in await self.cluster.spu_connections():
            meta, _ = await conn.request(ApiKey.UPSTREAM_STATUS)
            rows.extend({**r, "spu": meta.get("spu")} for r in meta["partitions"])
        return sorted(rows, key=lambda r: (r["topic"], r["partition"]))

    async def wait_ready(self, topic: str, *, timeout: float = 10.0) -> None:
        """Wait until every partition of ``topic`` answers on its leader."""
        async with asyncio.timeout(timeout):
            while True:
                try:
                    parts = await self.cluster.partitions(topic)
                    for p in parts:
                        conn = await self.cluster.leader(topic, p.partition)
                        await conn.request(ApiKey.LIST_OFFSETS, topic=topic,
                                           partition=p.partition, kind="end")
                    if parts:
                        return
                except HeadwaterError as exc:
                    if not exc.retriable:
                        raise
                await asyncio.sleep(0.05)
                await self.cluster.refresh()


def _fields(answer: object) -> dict[str, Any]:
    """A decoded answer as the plain map the CLI prints (JSON-ready)."""
    out: dict[str, Any] = to_wire(answer)
    return out
